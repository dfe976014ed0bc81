#!/usr/bin/env bash
# Makes sure an nginx binary is installed, for `make stack` and the tests that run the repo's
# nginx configuration for real. Installs Debian's package when it is missing (non-interactive,
# as root or through sudo); only the binary is used, never the system service.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[ensure-nginx] nginx is missing and this is not a Debian/Ubuntu system: install nginx" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "[ensure-nginx] run as root or install sudo" >&2; exit 1; }
  sudo=(sudo)
fi
echo "[ensure-nginx] installing Debian's nginx" >&2
export DEBIAN_FRONTEND=noninteractive
# The package must not start the system nginx: policy-rc.d answers 101 ("not allowed").
policy=/usr/sbin/policy-rc.d
restore_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod +x "$policy"
  restore_policy=true
fi
trap '$restore_policy && "${sudo[@]}" rm -f "$policy"' EXIT
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends nginx >/dev/null
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]
