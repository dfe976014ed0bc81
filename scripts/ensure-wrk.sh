#!/usr/bin/env bash
# Makes sure wrk (the HTTP load generator) is installed, for `make bench`. Installs Debian's
# package when it is missing (non-interactive, as root or through sudo). Never fails: without
# wrk the benchmarks fall back to a Python load generator (and say so).
set -uo pipefail

if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[ensure-wrk] wrk is missing and this is not a Debian/Ubuntu system" >&2
  exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "[ensure-wrk] run as root or install sudo" >&2; exit 0; }
  sudo=(sudo -n)
fi
echo "[ensure-wrk] installing Debian's wrk" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 \
  || { "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 \
       && "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1; } \
  || echo "[ensure-wrk] could not install wrk" >&2
exit 0
