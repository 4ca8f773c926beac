"""The live dashboard (and the alerts): a page in the browser instead of a console of JSON.

    python dashboard.py                         # http://127.0.0.1:8765 on DATABASE_PATH
    python dashboard.py --db sim_runs/2026-11-24_7/trading_history.db --port 8800
    python dashboard.py --host 0.0.0.0          # needs DASHBOARD_TOKEN (refuses without)
    python dashboard.py --no-web --alerts       # the alerts alone

The supervisor starts it as a child process of its own (`supervisor.py --no-dashboard` to
not, `--dashboard-port N` to move it), so the web stack never loads into the supervisor.
It reads the database, the supervisor's lock file and the bots' logs; its actions (halt or
resume entries, flatten one, flatten all) are confirmed, need the token, and are recorded
in the database with who and when. Without DASHBOARD_TOKEN a random token is made for the
run and printed once, inside the address to open.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

from core import cli
from core.logs import get_logger, remember_secrets, setup_logging
from core.settings import Settings, get_settings
from observability import TradingDatabase, get_database

TOOL = "dashboard"
DEFAULT_PORT = 8765
log = get_logger(TOOL)


class DashboardError(cli.SetupError):
    """The dashboard cannot start as asked; the message says what to change."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog="dashboard.py", description="Serve the live dashboard.")
    parser.add_argument("--db", type=Path, help="database file (default DATABASE_PATH)")
    parser.add_argument(
        "--host", type=cli.host, default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=cli.port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--lock-file", type=Path, help="the supervisor's lock file (default beside --db)"
    )
    parser.add_argument("--log-dir", type=Path, help="the bots' log folder (default LOG_DIR)")
    parser.add_argument(
        "--refresh", type=cli.seconds, default=1.0, help="real seconds between updates (default 1)"
    )
    parser.add_argument("--no-web", action="store_true", help="no page: run the alerts alone")
    parser.add_argument(
        "--parent-pid", type=int, help="stop when this process (the supervisor) is gone"
    )
    alerts = parser.add_mutually_exclusive_group()
    alerts.add_argument(
        "--alerts",
        action="store_true",
        default=None,
        help="send alerts (default: when ALERT_URLS is set)",
    )
    alerts.add_argument("--no-alerts", dest="alerts", action="store_false", help="send no alerts")
    return parser


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_token(settings: Settings, host: str) -> tuple[str, bool]:
    """(the token the actions need, whether it was made for this run).

    Raises DashboardError when binding beyond loopback without DASHBOARD_TOKEN.
    """
    if settings.dashboard_token:
        return settings.dashboard_token.reveal(), False
    if not is_loopback(host):
        raise DashboardError(
            f"--host {host} reaches beyond this machine: set DASHBOARD_TOKEN (long and random) "
            "in .env first, or bind 127.0.0.1"
        )
    return secrets.token_urlsafe(24), True


def watch_parent(pid: int | None) -> threading.Event:
    """An event set once `pid` has ended (never, for None): a supervisor killed with -9 must
    not leave its dashboard holding the port and acting on the database."""
    from core.heartbeats import process_alive

    gone = threading.Event()

    def watch() -> None:
        while process_alive(int(pid or 0)):
            time.sleep(1.0)
        log.warning("dashboard_parent_gone", parent_pid=pid)
        gone.set()

    if pid:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return gone


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Refused before anything else: no page on a public address without a token.
    token, made = ("", False) if args.no_web else dashboard_token(settings, args.host)
    db = get_database(args.db or settings.database_path, if_missing="refuse")
    log_dir = args.log_dir or settings.log_dir
    setup_logging(TOOL, log_dir=log_dir, level=settings.log_level)
    parent_gone = watch_parent(args.parent_pid)
    want_alerts = args.alerts if args.alerts is not None else bool(settings.alert_urls)
    if args.no_web and not want_alerts:
        raise DashboardError("--no-web leaves nothing to do: add --alerts (and set ALERT_URLS)")
    watcher = None
    if want_alerts:
        from alerts import start_alert_watcher

        watcher = start_alert_watcher(db, settings, log_dir)
    try:
        if args.no_web:
            signal.signal(signal.SIGTERM, lambda *_: parent_gone.set())
            parent_gone.wait()
            return 0
        return serve(args, settings, db, log_dir, token, made, parent_gone)
    finally:
        if watcher is not None:
            watcher.stop()


def serve(
    args: argparse.Namespace,
    settings: Settings,
    db: TradingDatabase,
    log_dir: Path,
    token: str,
    made: bool,
    parent_gone: threading.Event,
) -> int:
    """Serve the page until SIGTERM / Ctrl+C (uvicorn's own handlers) or the parent is gone."""
    import uvicorn

    from supervision import lock_path_for
    from webui.actions import Actions
    from webui.app import create_app
    from webui.state import LogWatch, Sources

    remember_secrets(token)
    lock_file = args.lock_file or lock_path_for(db.path)
    sources = Sources(db, settings, lock_file, LogWatch(log_dir))
    app = create_app(sources, Actions(db, settings), token, refresh_s=args.refresh)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)

    def stop_when_orphaned() -> None:
        parent_gone.wait()
        server.should_exit = True

    threading.Thread(target=stop_when_orphaned, name="orphan-stop", daemon=True).start()
    address = f"http://{args.host}:{args.port}/"
    log.info("dashboard_serving", address=address, mode=settings.trading_mode, token_made=made)
    # The one place the token is shown: the console of whoever started it.
    shown = f"{address}#token={token}" if made else f"{address} (token: DASHBOARD_TOKEN)"
    print(f"dashboard: {settings.trading_mode.upper()} {shown}", flush=True)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        server.started = False
    if not server.started:
        raise DashboardError(
            f"cannot listen on {args.host}:{args.port}: is the port in use? pick another with --port"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    # Its --host/--port are the page's address, not the gateway's: the settings as they are;
    # its run log goes to --log-dir, set up by run().
    return cli.run_program(
        TOOL, build_parser(), run, argv, logs=False, load=lambda _args: get_settings(),
        setup_exit=2,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
