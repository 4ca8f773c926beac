#!/usr/bin/env bash
# Start the supervisor (exit manager first, then the day trader) in .venv-daytrader.
# Creates the virtual environment the first time and installs requirements.txt whenever it
# changed since the last successful install (after a git pull, a failed first install).
# Arguments are passed through:  ./start_supervisor.sh --allocation 0.2   |   ./start_supervisor.sh --sim
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-daytrader
STAMP="$VENV/requirements.installed"
# --help answers at once: never build the environment (hundreds of MB) just to print usage.
for arg in "$@"; do
    if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then
        if [ -x "$VENV/bin/python" ] && cmp -s requirements.txt "$STAMP"; then
            exec "$VENV/bin/python" supervisor.py "$@"  # installed: supervisor.py's own list
        fi
        cat <<'USAGE'
usage: ./start_supervisor.sh [supervisor.py options]

Runs supervisor.py (the exit manager first, then the day trader) in .venv-daytrader.
The first start creates .venv-daytrader and installs requirements.txt into it (several
hundred MB); later starts reinstall only when requirements.txt changed. Once installed,
./start_supervisor.sh --help lists every supervisor.py option.

  ./start_supervisor.sh --sim       one whole simulated trading day (no IB account needed)
  ./start_supervisor.sh --status    one status block from the database
  ./start_supervisor.sh             paper trading with the settings in .env
USAGE
        exit 0
    fi
done
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
