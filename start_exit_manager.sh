#!/usr/bin/env bash
# Start the exit manager alone (protects positions; no new entries) in .venv-daytrader.
# Use it when the supervisor is not running, e.g. to keep protecting after an emergency.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-daytrader
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV and installing requirements.txt (first start only)"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -r requirements.txt
fi
exec "$VENV/bin/python" exit_manager.py "$@"
