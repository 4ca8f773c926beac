"""The improvement cycle after the close: today replayed, the live day beside the model's, the
parameters studied walk-forward, a report and a proposed .env change.

    python improve.py                       # the last session (the supervisor runs this)
    python improve.py --date 2026-12-01 --days 30 --trials 200 --time-budget 600 --jobs 2
    python improve.py --data exports/ --storage postgresql://user@host/studies
    python improve.py --apply               # apply the latest report's proposal (asks first)

The day's recorded bars (BARS_DIR, bars/<date>/ beside the database) run through the backtest
with the settings in force; the live trades, intents and logs of the day are put beside the
model's trades. The study tunes target, stop, RSI ceiling, ATR floor, gap threshold, entry
cutoff and max open positions on the recorded days (and --data), scored only on days after
each tuning window; its Optuna studies persist in --storage (default improve_study.db beside
the database), so each evening continues the last. Writes report.md, equity.png,
importance.png, heatmap.png and proposed.env under --out (default reports/improve/<date>/
beside the database). Nothing changes in .env without --apply and a confirmation.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

from core import cli

PROG = "improve.py"


def _date(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date like 2026-12-01") from None


def _storage(raw: str) -> str:
    if "://" not in raw:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a database URL: use sqlite:///path/study.db or "
            "postgresql://user:password@host/database"
        )
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog=PROG, description="Compare the live day with the model and study the parameters."
    )
    parser.add_argument("--date", type=_date, help="the trading day (default: the last session)")
    parser.add_argument(
        "--days",
        type=cli.ranged(int, 1, 2520),
        default=30,
        help="recorded days up to --date to study, 1..2520 (default 30)",
    )
    parser.add_argument("--data", type=Path, help="more recorded bars (CSV/Parquet file or folder)")
    parser.add_argument(
        "--trials",
        type=cli.ranged(int, 1, 100_000),
        default=100,
        help="trials per study (a fold or the latest window), with earlier evenings' (100)",
    )
    parser.add_argument(
        "--time-budget",
        type=cli.ranged(float, 0.0, 86_400.0, lo_open=True),
        default=900.0,
        help="wall seconds the study may take (default 900)",
    )
    parser.add_argument(
        "--jobs", type=cli.ranged(int, 1, 256), default=1, help="trial processes (default 1)"
    )
    parser.add_argument(
        "--storage", type=_storage, help="Optuna storage URL (default sqlite beside the database)"
    )
    parser.add_argument(
        "--train-days", type=cli.ranged(int, 1, 2520), default=10, help="days tuned on (10)"
    )
    parser.add_argument(
        "--test-days", type=cli.ranged(int, 1, 2520), default=5, help="days scored after (5)"
    )
    parser.add_argument(
        "--min-trades",
        type=cli.ranged(int, 1, 1_000_000),
        default=30,
        help="trades a figure needs to mean anything (default 30)",
    )
    parser.add_argument(
        "--capital",
        type=cli.ranged(float, 0.0, 1e12, lo_open=True),
        default=100_000.0,
        help="starting equity of the model in USD (default 100000)",
    )
    parser.add_argument(
        "--seed", type=cli.ranged(int, 0, 2**31 - 1), default=0, help="sampler seed"
    )
    parser.add_argument("--db", type=Path, help="database file (default DATABASE_PATH)")
    parser.add_argument("--out", type=Path, help="report folder (default reports/improve/<date>)")
    parser.add_argument("--apply", action="store_true", help="apply the report's proposed .env")
    parser.add_argument("--yes", action="store_true", help="with --apply: do not ask")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


class CycleError(Exception):
    """The cycle cannot run as asked; one line naming what and the fix."""


def reports_root(settings: Any) -> Path:
    return Path(settings.database_path).parent / "reports" / "improve"


def default_storage(settings: Any) -> str:
    return f"sqlite:///{Path(settings.database_path).parent / 'improve_study.db'}"


def recorded_days(root: Path, last: date, count: int) -> tuple[list[Any], list[str]]:
    """The last `count` recorded days up to `last` under `root` (one folder a day) and a note
    for each that could not be read."""
    from sim.days import BacktestDataError, days_from_data

    folders = []
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            try:
                day = date.fromisoformat(folder.name)
            except ValueError:
                continue
            if folder.is_dir() and day <= last and any(folder.glob("*.parquet")):
                folders.append(folder)
    days, notes = [], []
    for folder in folders[-count:]:
        try:
            days += days_from_data(folder)
        except BacktestDataError as exc:
            notes.append(f"recorded bars {folder} skipped: {exc}")
    return days, notes


def _day_records(log_dir: Path, day: date) -> list[dict[str, Any]]:
    from core.clock import NEW_YORK
    from view_logs import LogFilter, log_files, read_records

    if not log_dir.is_dir():
        return []
    start = datetime.combine(day, datetime.min.time(), NEW_YORK)
    end = datetime.combine(day, datetime.max.time(), NEW_YORK)
    return read_records(log_files(log_dir), LogFilter(since=start, until=end))


def run_cycle(args: argparse.Namespace, settings: Any, progress: Any) -> tuple[Path, list[str]]:
    """The whole cycle; returns the report's path and the notes (what was missing)."""
    from core.clock import MarketClock
    from journal import journal_for_dates
    from observability import get_database
    from sim import improve as im
    from sim import improve_report as rep
    from sim.backtest import BacktestConfig, run_backtest
    from sim.days import BacktestDataError, days_from_data
    from sim.live_vs_model import compare_day

    clock = MarketClock()
    day = args.date or _last_session(clock)
    base = BacktestConfig.from_settings(settings, capital=args.capital)
    root = settings.recorded_bars_dir
    days, notes = recorded_days(root, day, args.days)
    if args.data is not None:
        try:
            extra = days_from_data(args.data, end=day)
        except BacktestDataError as exc:
            raise CycleError(f"--data: {exc}") from None
        have = {d.trading_date for d in days}
        days += [d for d in extra if d.trading_date not in have]
    today = next((d for d in days if d.trading_date == day), None)
    comparison = None
    if today is None:
        notes.append(
            f"no recorded bars for {day} in {root / day.isoformat()} (the day trader records "
            f"them there): no live-vs-model comparison; the report still has the study over "
            f"{len(days)} recorded day(s)"
        )
    else:
        model = run_backtest([today], base).days[0]
        live_rows, intents, records = [], [], []
        db_path = args.db or settings.database_path
        if Path(db_path).exists():
            db = get_database(db_path, if_missing="refuse")
            live_rows = journal_for_dates(db, [day.isoformat()], settings.log_dir)
            intents = db.get_intents_by_date(day.isoformat())
            records = _day_records(settings.log_dir, day)
        if not live_rows:
            notes.append(
                f"no live trades on {day} in {db_path}: the comparison lists the model's "
                f"{len(model.journal)} trade(s) only, with why the live bots did not take them"
            )
        comparison = compare_day(day.isoformat(), live_rows, model.journal, records, intents,
                                 today, base.stop_loss_pct)  # fmt: skip
    options = im.StudyOptions(
        storage=args.storage or default_storage(settings),
        trials=args.trials,
        jobs=args.jobs,
        time_budget_s=args.time_budget,
        seed=args.seed,
        min_trades=args.min_trades,
    )
    plan = im.WalkForwardPlan(args.train_days, args.test_days)
    task = progress.add_task("study: trials", total=0)
    planned = [0]

    def plan_more(n: int) -> None:
        planned[0] += n
        progress.update(task, total=planned[0])

    study = im.study_parameters(
        days,
        base,
        plan,
        options,
        on_trials=lambda n: progress.update(task, advance=n),
        on_planned=plan_more,
    )
    notes += study.missing
    out = args.out or reports_root(settings) / day.isoformat()
    out.mkdir(parents=True, exist_ok=True)
    images = []
    if study.folds:
        rep.equity_figure(study).savefig(out / "equity.png", dpi=90)
        images.append("equity.png")
        assert study.proposal_study is not None
        importances = im.parameter_importance(options.storage, study.proposal_study)
        if importances:
            rep.importance_figure(importances).savefig(out / "importance.png", dpi=90)
            images.append("importance.png")
        trials = im.study_trials(options.storage, study.proposal_study)
        rep.heatmap_figure(trials).savefig(out / "heatmap.png", dpi=90)
        images.append("heatmap.png")
    rep.write_proposal(out, study.proposal)
    report = out / rep.REPORT_FILE
    report.write_text(
        rep.render_report(day.isoformat(), study, comparison, notes, images, args.min_trades),
        encoding="utf-8",
    )
    return report, notes


def _last_session(clock: Any) -> date:
    """Today's session once it closed, else the one before."""
    now = clock.now()
    session = clock.session(now.date())
    if session is not None and now >= session.close:
        return session.trading_date
    return clock.previous_session(now.date()).trading_date


def apply_proposal(args: argparse.Namespace, settings: Any) -> int:
    """--apply: the report's proposed keys into .env after a confirmation; the old .env is
    backed up. Returns the exit code."""
    from core import settings as settings_module
    from sim.improve_report import PROPOSAL_FILE, read_proposal

    folder = args.out
    if folder is None:
        root = reports_root(settings)
        found = sorted(p.parent for p in root.glob(f"*/{PROPOSAL_FILE}")) if root.is_dir() else []
        if args.date is not None:
            found = [p for p in found if p.name == args.date.isoformat()]
        if not found:
            raise CycleError(f"no proposal under {root}: run python improve.py first")
        folder = found[-1]
    proposal_file = folder / PROPOSAL_FILE
    try:
        changes = read_proposal(proposal_file)
    except OSError as exc:
        raise CycleError(
            f"cannot read {proposal_file} ({exc}): run python improve.py first"
        ) from None
    env_file = settings_module.DOTENV_PATH
    if not changes:
        print(f"{PROG}: {proposal_file} proposes no change: .env left as it is")
        return 0
    print(f"proposed by {proposal_file}:")
    for key, value in changes.items():
        print(f"  {key}={value}")
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"{PROG}: error: not confirmed: run --apply in a terminal to answer the "
                "question, or add --yes; .env left as it is",
                file=sys.stderr,
            )
            return 2
        answer = input(f"write these {len(changes)} setting(s) to {env_file}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print(f"{PROG}: not applied: .env left as it is")
            return 1
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    backup = settings.backup_dir / f"env_{stamp}.bak"
    settings_module.update_dotenv(env_file, changes, backup)
    print(f"{env_file} updated ({', '.join(changes)}); the previous one is {backup}")
    print("the bots read .env at start: restart the supervisor for the change to take effect")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data is not None and not args.data.exists():
        print(f"{PROG}: error: --data {args.data} does not exist (see --help)", file=sys.stderr)
        return 2
    from sqlalchemy.exc import SQLAlchemyError as StorageError

    from core.settings import SettingsError, get_settings
    from observability import DatabaseError

    try:
        settings = get_settings()
        if args.apply:
            return apply_proposal(args, settings)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=args.no_progress,
        ) as progress:
            report, notes = run_cycle(args, settings, progress)
    except (CycleError, SettingsError, DatabaseError, OSError, StorageError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a backtest config out of range
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # the storage URL's database driver
        print(
            f"{PROG}: error: --storage needs a driver that is not installed ({exc.name}): "
            "pip install it (psycopg2-binary for postgresql://)",
            file=sys.stderr,
        )
        return 2
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
