# Two commands for a newcomer: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run stack stack-cluster postgresql test stores unit deploy integration lint format comfyui comfyui-env nginx chromium bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

## run: the sidecar under gunicorn, against the ComfyUI at COMFYUI_HOST:COMFYUI_PORT; with neither
## set and none answering on localhost:8188, beside the project's CPU ComfyUI (`make comfyui`).
## State goes to WORKSPACE_PATH, or /workspace, or ./.workspace when /workspace is not writable.
run: $(STAMP)
	$(BIN)/python -m stack.run

## stack: the compose stack without Docker: nginx + the sidecar under gunicorn, in front
## of the ComfyUI at COMFYUI_HOST:COMFYUI_PORT; STACK_HTTP_PORT (8080), STACK_COMFYUI_UI_PORT (8288)
stack: $(STAMP) nginx
	$(BIN)/python -m stack

## stack-cluster: two nodes of a cluster on this machine: a throwaway PostgreSQL (or JOB_STORE_URL),
## two CPU ComfyUIs (or COMFYUI_PORTS), a sidecar per ComfyUI, nginx balancing the API over them
stack-cluster: $(STAMP) nginx postgresql comfyui-env
	$(BIN)/python -m stack.cluster

## postgresql: Debian's postgresql package when it is missing, for the shared job store's tests
postgresql:
	@bash scripts/ensure-postgresql.sh

## test: the whole suite: lint, unit tests, integration tests against a real ComfyUI on CPU and
## through a real nginx, and the page in Debian's chromium (installed when missing)
test: $(STAMP) comfyui-env nginx chromium postgresql
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

## comfyui-env: the cached CPU ComfyUI the integration tests run (first time: ~4 min, ~6 GB)
comfyui-env:
	@bash scripts/comfyui-test-env.sh >/dev/null

## nginx: checks the nginx binary of `make stack` and the tests (requirements-dev.txt installs it)
nginx: $(STAMP)
	@$(BIN)/python -c 'from stack.nginx import nginx_binary; nginx_binary()'

## chromium: Debian's chromium package when it is missing, for the page's browser test
chromium:
	@bash scripts/ensure-chromium.sh

unit: $(STAMP)
	$(BIN)/pytest tests/unit

## stores: what every job store promises, on SQLite and on a real PostgreSQL (tests/stores)
stores: $(STAMP) postgresql
	$(BIN)/pytest tests/stores

## deploy: the compose files rendered and their stack run as the containers would (tests/deploy)
deploy: $(STAMP) comfyui-env nginx
	$(BIN)/pytest tests/deploy

integration: $(STAMP) comfyui-env nginx chromium postgresql
	$(BIN)/pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## comfyui: a CPU-only ComfyUI (no models) on COMFYUI_PORT, to try the sidecar without a GPU
comfyui: $(STAMP) comfyui-env
	$(BIN)/python -m tests.support.run_comfyui

## bench: benchmarks that print numbers (recorded in docs/benchmarks.md); not part of `make test`.
## The real stack (CPU ComfyUI, gunicorn, nginx) against ComfyUI direct, then the outputs listing,
## the cluster, what one read of ComfyUI's /queue costs it by the prompts waiting, what a full
## output folder costs it per job (OUTPUT_SUBFOLDER), and a long-lived sidecar's memory and idle
## CPU over a month's store; first, where one job's time goes (bench.timeline), on one sidecar
## and on a cluster node
bench: $(STAMP) comfyui-env nginx postgresql
	@bash scripts/ensure-wrk.sh
	$(BIN)/python -m bench.timeline
	$(BIN)/python -m bench.timeline --cluster
	$(BIN)/python -m bench.stack
	$(BIN)/python -m bench.outputs_listing --files 100000
	$(BIN)/python -m bench.cluster
	$(BIN)/python -m bench.comfyui_queue
	$(BIN)/python -m bench.comfyui_saves
	$(BIN)/python -m bench.longrun

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
