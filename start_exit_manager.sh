#!/usr/bin/env bash
# Start the exit manager alone (protects positions; no new entries) in .venv-daytrader.
# Use it when the supervisor is not running, e.g. to keep protecting after an emergency.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-daytrader
# --help answers at once: never build the environment (hundreds of MB) just to print usage.
for arg in "$@"; do
    if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then
        if [ -x "$VENV/bin/python" ]; then
            exec "$VENV/bin/python" exit_manager.py "$@"  # installed: exit_manager.py's own list
        fi
        cat <<'USAGE'
usage: ./start_exit_manager.sh [exit_manager.py options]

Runs exit_manager.py alone (protects open positions, no new entries) in .venv-daytrader.
The first start creates .venv-daytrader and installs requirements.txt into it (several
hundred MB). Once installed, ./start_exit_manager.sh --help lists every exit_manager.py
option.

  ./start_exit_manager.sh           protect positions with the settings in .env
  ./start_exit_manager.sh --once    one reconciliation pass, then exit
USAGE
        exit 0
    fi
done
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV and installing requirements.txt (first start only)"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -r requirements.txt
fi
exec "$VENV/bin/python" exit_manager.py "$@"
