#!/usr/bin/env bash
# Start the supervisor (exit manager first, then the day trader) in .venv-daytrader.
# Creates the virtual environment the first time and installs requirements.txt whenever it
# changed since the last successful install (after a git pull, a failed first install).
# Arguments are passed through:  ./start_supervisor.sh --allocation 0.2   |   ./start_supervisor.sh --sim
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-daytrader
STAMP="$VENV/requirements.installed"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (first start only)"
    python3 -m venv "$VENV" || { echo "error: could not create $VENV: install Python 3.11 with its venv module" >&2; exit 1; }
fi
if ! cmp -s requirements.txt "$STAMP"; then
    echo "installing requirements.txt into $VENV"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -r requirements.txt; then
        echo "error: installing requirements.txt failed; see the messages above, then start again" >&2
        exit 1
    fi
    cp requirements.txt "$STAMP"
fi
exec "$VENV/bin/python" supervisor.py "$@"
