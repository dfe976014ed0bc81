#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries are installed, for the shared job store's tests
# (tests/support/postgres.py starts a throwaway server in a temporary folder, as a non-root
# user). Installs Debian's package when initdb is missing (non-interactive, as root or through
# sudo). PG_BINDIR names another folder holding initdb and pg_ctl instead.
set -euo pipefail

found() {
  if [ -n "${PG_BINDIR:-}" ]; then
    [ -x "$PG_BINDIR/initdb" ]
    return
  fi
  command -v pg_ctl >/dev/null 2>&1 && [ -x "$(dirname "$(readlink -f "$(command -v pg_ctl)")")/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if found; then
  exit 0
fi
if [ -n "${PG_BINDIR:-}" ]; then
  echo "[ensure-postgresql] PG_BINDIR=$PG_BINDIR has no initdb" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[ensure-postgresql] PostgreSQL is missing and this is not a Debian/Ubuntu system:" \
    "install its server and set PG_BINDIR to the folder holding initdb and pg_ctl" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "[ensure-postgresql] run as root or install sudo" >&2; exit 1; }
  sudo=(sudo)
fi
echo "[ensure-postgresql] installing Debian's postgresql (once)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# The package's own cluster is not needed (the tests make their own): do not start one.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
found
