#!/usr/bin/env bash
# Makes sure a Chromium binary is installed, for the browser test of the page
# (tests/integration/test_ui_page.py drives it with Playwright). Installs Debian's package when
# it is missing (non-interactive, as root or through sudo). Never `playwright install`: that
# downloads a browser build of its own, which machines without internet access cannot fetch.
# CHROMIUM names another binary to use instead (it must exist).
set -euo pipefail

binary=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$binary" ]; then
  exit 0
fi
if [ -n "${CHROMIUM:-}" ]; then
  echo "[ensure-chromium] CHROMIUM=$CHROMIUM is not an executable file" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[ensure-chromium] chromium is missing and this is not a Debian/Ubuntu system:" \
    "install Chromium and set CHROMIUM to its binary" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "[ensure-chromium] run as root or install sudo" >&2; exit 1; }
  sudo=(sudo)
fi
echo "[ensure-chromium] installing Debian's chromium (about 300 MB, once)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
[ -x "$binary" ]
