# Two commands for a newcomer: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit integration lint format comfyui clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

## run: the sidecar under gunicorn, against the ComfyUI at COMFYUI_HOST:COMFYUI_PORT
run: $(STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py 'api:create_app()'

## test: the whole suite: unit tests, then integration tests against a real ComfyUI on CPU
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## comfyui: a CPU-only ComfyUI (no models) on COMFYUI_PORT, to try the sidecar without a GPU
comfyui: $(STAMP)
	$(BIN)/python -m tests.support.run_comfyui

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
