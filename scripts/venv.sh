#!/usr/bin/env bash
# Usage: scripts/venv.sh VENV_DIR REQUIREMENTS_FILE
# Makes (or reuses) a Python virtual environment at VENV_DIR and installs
# REQUIREMENTS_FILE into it. The tests' Python clients live there, not in the
# system Python: Debian's refuses pip installs (externally managed, PEP 668),
# and a venv leaves the system untouched. Debian ships the venv module's pip
# bootstrap separately, in python3-venv, which is installed when missing.
set -euo pipefail
venv=$1
requirements=$2

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A venv counts only with a working pip: a failed `python3 -m venv` leaves one without.
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    echo "== creating the Python virtual environment $venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        echo "== installing python3-venv"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
fi

echo "== installing $requirements into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
