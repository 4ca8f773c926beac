"""Keeps the exit manager and the day trader running; `--sim` runs a whole simulated day.

    python supervisor.py                  # live/paper: exit manager, then day trader
    python supervisor.py --allocation 0.2
    python supervisor.py --status         # one status block from the database and lock file
    python supervisor.py --sim            # simulated gateway + both bots, report at the close

Order of start: the exit manager first (it owns every exit), the day trader only once the
exit manager's heartbeat says it has reconciled with IB, and a hot standby exit manager
beside it (`exit_manager.py --standby`). A dead exit manager is replaced by its standby (it
took over the moment the kernel freed the exit manager's lock), else restarted at once; a
dead day trader with exponential backoff; a live bot whose heartbeat went stale is hung and
is killed and replaced. A bot that keeps crashing is given up on and reported. On Ctrl+C /
SIGTERM the standby stops first, then the day trader, then the exit manager; positions stay
at IB under their server-side stops. One supervisor per database (a lock file with its pid).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from companion import add_dashboard_args, start_dashboard
from core import cli
from core.logs import setup_logging
from core.settings import (
    Settings,
    SettingsError,
    check_trading_mode,
    get_settings,
)
from observability import get_database
from supervision import (
    Supervisor,
    SupervisorError,
    SupervisorLock,
    WatchdogPolicy,
    bot_specs,
    improve_spec,
    install_signal_handlers,
    lock_path_for,
    policy_from_args,
    status_from_files,
    stop_orphans,
)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="supervisor.py",
        description="Run and watch the exit manager and the day trader (or a simulated day).",
    )
    parser.add_argument(
        "--allocation",
        type=cli.ranged(float, 0.0, 1.0, lo_open=True),
        default=None,
        help="fraction of net liquidation the day trader may deploy (default ALLOCATION or 0.25)",
    )
    parser.add_argument("--status", action="store_true", help="print one status block and exit")
    parser.add_argument("--db", type=Path, help="database file (default DATABASE_PATH)")
    parser.add_argument(
        "--status-every",
        type=cli.seconds,
        default=None,
        help="real seconds between status blocks, in (0, 3600] (default 300)",
    )
    parser.add_argument(
        "--stale-after",
        type=cli.seconds,
        default=None,
        help="real seconds without a heartbeat before a bot counts as hung (default 90; --sim 60)",
    )
    parser.add_argument(
        "--crash-loop-max",
        type=cli.ranged(int, 1, 1_000_000),
        default=None,
        help="failures of one bot within --crash-loop-window before it is given up (default 5)",
    )
    parser.add_argument(
        "--crash-loop-window",
        type=cli.seconds,
        default=None,
        help="real seconds in which --crash-loop-max failures mean a crash loop (default 600)",
    )
    parser.add_argument(
        "--healthy-after",
        type=cli.seconds,
        default=None,
        help="real seconds ready after which a bot's restart backoff starts again (default 60)",
    )
    parser.add_argument(
        "--no-improve",
        action="store_true",
        help="no improvement cycle after the close (also IMPROVE_AFTER_CLOSE=false)",
    )
    parser.add_argument(
        "--live", action="store_true", help="trade real money (also needs TRADING_MODE=live)"
    )
    add_dashboard_args(parser)
    sim = parser.add_argument_group("simulation (--sim)")
    sim.add_argument("--sim", action="store_true", help="run one simulated day and report")
    sim.add_argument("--seed", type=int, default=None, help="simulated market seed (default 7)")
    sim.add_argument(
        "--speed",
        type=cli.ranged(float, 0.0, 100_000.0, lo_open=True),
        default=None,
        help="simulated seconds per real second (default 110)",
    )
    sim.add_argument("--date", help="simulated trading date YYYY-MM-DD (default the last one)")
    sim.add_argument("--start", default=None, help="simulated start time HH:MM (default 09:00)")
    sim.add_argument(
        "--symbols",
        type=cli.ranged(int, 1, 500),
        default=None,
        help="symbols in the simulated market, 1..500 (default 20)",
    )
    sim.add_argument(
        "--run-dir", type=Path, help="folder for the run (default sim_runs/<date>_<seed>)"
    )
    sim.add_argument(
        "--replay",
        type=Path,
        default=None,
        metavar="FILE|DIR",
        help="simulate recorded bars (a CSV/Parquet file or a directory of them) instead of a "
        "synthetic market; the symbols are the data's, the date its first day unless --date",
    )
    sim.add_argument(
        "--bar-seconds",
        type=cli.ranged(int, 1, 86_400),
        default=None,
        help="the --replay bar size in seconds (default: the data's typical spacing)",
    )
    sim.add_argument(
        "--spread",
        type=cli.ranged(float, 0.01, 100.0),
        default=None,
        help="a fixed bid-ask spread in dollars (default: from price and liquidity, about "
        "0.01 on a liquid large cap)",
    )
    sim.add_argument(
        "--allow-shorting",
        action="store_true",
        help="a margin account: the simulator accepts a sell below zero, so a short shows",
    )
    return parser


def run_supervisor(args: argparse.Namespace, settings: Settings) -> int:
    """Live/paper mode: lock, daily reset, supervise the real bots until stopped."""
    # --status only reads: it must not create a database where none is.
    db = get_database(
        args.db or settings.database_path, if_missing="refuse" if args.status else "warn"
    )
    if args.status:
        print(status_from_files(db, lock_path_for(db.path)))
        return 0
    allocation = args.allocation if args.allocation is not None else settings.allocation
    if not 0 < allocation <= 1:
        raise SupervisorError(f"--allocation {allocation} is invalid: expected 0 < x <= 1")
    lock = SupervisorLock(lock_path_for(db.path))
    orphans = lock.acquire()
    try:
        stop_orphans(orphans)
        mode_env, mode_args = bot_mode(settings)
        env = {"DATABASE_PATH": str(db.path), **mode_env}
        policy = policy_from_args(args, WatchdogPolicy())
        supervisor = Supervisor(
            db,
            bot_specs(allocation, env, day_trader_args=mode_args, exit_manager_args=mode_args),
            policy,
            lock=lock,
            backup_dir=settings.backup_dir,
            backup_keep_days=settings.backup_keep_days,
            improve=(
                improve_spec(env, settings.log_dir)
                if settings.improve_after_close and not args.no_improve
                else None
            ),
        )
        install_signal_handlers(supervisor)
        dashboard = start_dashboard(
            args, db.path, lock.path, settings.log_dir, env, alerts=bool(settings.alert_urls)
        )
        try:
            return supervisor.run()
        finally:
            if dashboard is not None:
                dashboard.stop()
    finally:
        lock.release()


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings, checked against --live (the simulator is always paper). Raises SettingsError."""
    settings = get_settings()
    if args.sim:
        if args.live:
            raise SettingsError("--sim always trades paper on the simulated gateway: drop --live")
        return settings
    check_trading_mode(settings, args.live)
    return settings


def bot_mode(settings: Settings) -> tuple[dict[str, str], tuple[str, ...]]:
    """The environment and flags that make each bot decide the supervisor's own mode."""
    return {"TRADING_MODE": settings.trading_mode}, ("--live",) if settings.is_live else ()


def supervise(args: argparse.Namespace, settings: Settings) -> int:
    """A simulated day (--sim, its log in the run folder) or the real bots supervised."""
    if args.sim:
        import sim_day

        return sim_day.run(args)
    setup_logging("supervisor", level=settings.log_level)
    return run_supervisor(args, settings)


def main(argv: list[str] | None = None) -> int:
    # Its error lines are `error: ...` (no program name), as the start scripts show them.
    return cli.run_program(
        "supervisor", build_parser(), supervise, argv, logs=False, load=settings_from_args,
        setup_exit=2, prefix="",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
