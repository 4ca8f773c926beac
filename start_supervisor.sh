#!/usr/bin/env bash
# Start the supervisor (exit manager first, then the day trader) in .venv-daytrader.
# Creates the virtual environment and installs requirements.txt the first time.
# Arguments are passed through:  ./start_supervisor.sh --allocation 0.2   |   ./start_supervisor.sh --sim
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-daytrader
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV and installing requirements.txt (first start only)"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -r requirements.txt
fi
exec "$VENV/bin/python" supervisor.py "$@"
