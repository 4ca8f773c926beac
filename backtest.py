"""The fast backtest: the day trader's rules over recorded bars or seeded synthetic days.

    python backtest.py --data bars/ [--start 2026-03-02 --end 2026-03-27] [--out DIR]
    python backtest.py --synthetic --seed 7 --days 5 --symbols 20
    python backtest.py --fetch AAPL,MSFT --start 2026-03-02 --end 2026-03-27 [--cache DIR]
                       [--allocation 0.25] [--capital 100000] [--slippage-ticks 1] ...

The same strategy code as the live bots (trading.entries' EntryCore, the exit rules) in one
process, with the simulated gateway's fill and commission rules (sim/backtest.py says how a
day is run). Risk numbers (allocation, max open positions, daily loss limit, target and stop)
default to the user's settings (.env). Writes the day reports, summary.txt, equity.png and
journal.csv/.parquet under --out, and prints the summary. Bad input is one line naming the
file, row and fix (exit 2).

--fetch downloads Massive's minute bars of the symbols for --start..--end with the scanner's
key (MASSIVE_API_KEY; 5 requests a minute unless MASSIVE_REQUESTS_PER_MINUTE says otherwise)
into --cache (default massive_bars/ beside the database), one Parquet file per symbol and day;
a cached day is never fetched again (sim/fetch.py). A download that fails is one line with the
fix (exit 1); what came before it stays cached.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from core import cli
from trading.entries import ENTRY_TIMEOUT_S


def _date(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date like 2026-03-16") from None


def _clock_time(raw: str) -> time:
    try:
        return time.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a time like 14:30") from None


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="backtest.py",
        description="Backtest the day trader's rules on recorded bars or seeded synthetic days.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        type=Path,
        help="recorded bars: a CSV/Parquet file or folder (symbol,time,open,high,low,close,"
        "volume[,prev_close], or date,open,high,low,close,volume per symbol file)",
    )
    source.add_argument(
        "--synthetic", action="store_true", help="seeded days from the simulated market"
    )
    source.add_argument(
        "--fetch",
        type=cli.tickers,
        metavar="SYMBOLS",
        help="download Massive minute bars of these symbols (AAPL,MSFT) for --start..--end, "
        "then backtest them",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="with --fetch: the download cache (default massive_bars/ beside the database)",
    )
    parser.add_argument(
        "--massive-url", default=None, help="with --fetch: Massive API base URL (proxies, tests)"
    )
    parser.add_argument(
        "--seed", type=cli.ranged(int, 0, 2**31 - 1), default=7, help="synthetic seed (7)"
    )
    parser.add_argument(
        "--days",
        type=cli.ranged(int, 1, 2520),
        default=1,
        help="synthetic days, 1..2520 (1; with --end: every session from --start to --end)",
    )
    parser.add_argument(
        "--symbols", type=cli.ranged(int, 1, 5000), default=20, help="synthetic symbols (20)"
    )
    parser.add_argument("--start", type=_date, help="first date (synthetic: default today)")
    parser.add_argument("--end", type=_date, help="last date (default: the data's last)")
    parser.add_argument(
        "--allocation",
        type=cli.ranged(float, 0.0, 1.0, lo_open=True),
        help="fraction of equity to deploy, in (0, 1] (default: ALLOCATION or 0.25)",
    )
    parser.add_argument(
        "--capital",
        type=cli.ranged(float, 0.0, 1e12, lo_open=True),
        default=100_000.0,
        help="starting equity in USD (default 100000)",
    )
    parser.add_argument(
        "--entry-timeout",
        type=cli.ranged(float, 1.0, 3600.0),
        default=ENTRY_TIMEOUT_S,
        help="market seconds an unfilled entry works before it is cancelled "
        f"(default {ENTRY_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--slippage-ticks",
        type=cli.ranged(int, 0, 100),
        default=0,
        help="ticks market-like fills pay beyond the far side (default 0)",
    )
    parser.add_argument(
        "--participation",
        type=cli.ranged(float, 0.0, 1.0, lo_open=True),
        default=0.25,
        help="largest share of a bar's volume one fill takes, in (0, 1] (default 0.25)",
    )
    parser.add_argument(
        "--kill-switch-at",
        type=_clock_time,
        help="halt new entries from this New York time each day, e.g. 11:00",
    )
    parser.add_argument(
        "--max-gap-minutes",
        type=cli.ranged(float, 0.0, 1440.0, lo_open=True),
        default=30.0,
        help="longest regular-hours hole a symbol's bars may have, minutes (default 30)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default backtests/<run>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.start and args.end and args.end < args.start:
        parser.error(f"argument --end: {args.end} is before --start {args.start}")
    if args.fetch is not None and args.start is None:
        parser.error("argument --fetch: needs --start (and --end, default --start)")
    if args.data is not None and not args.data.exists():
        parser.error(f"argument --data: {args.data} does not exist; pass a bars file or folder")


def _fetch(args: argparse.Namespace, settings: Any) -> Path | None:
    """Download (or find cached) the --fetch bars; returns the cache folder, or None when the
    download failed (said in one line). Raises ValueError when no symbol-day has bars."""
    from sim.fetch import FetchError, dates_between, fetch_bars

    cache = args.cache or settings.database_path.parent / "massive_bars"
    urls = {"base_url": args.massive_url} if args.massive_url else {}
    try:
        paths = fetch_bars(
            args.fetch,
            dates_between(args.start, args.end or args.start),
            cache,
            settings,
            on_missing=lambda line: print(f"backtest.py: skipped: {line}", file=sys.stderr),
            **urls,
        )
    except FetchError as exc:
        print(f"backtest.py: error: {exc}", file=sys.stderr)
        return None
    if not paths:
        raise ValueError(
            f"--fetch: no bars for {','.join(args.fetch)} from {args.start} to "
            f"{args.end or args.start}; pick trading days that are over"
        )
    print(f"{len(paths)} symbol-day file(s) in {cache}", file=sys.stderr)
    return cache


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    # Heavy imports after parsing: --help and a bad flag answer at once.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from core.settings import SettingsError, get_settings
    from journal import JournalError
    from reports import render_report
    from sim.backtest import BacktestConfig, run_backtest
    from sim.days import (
        BacktestDataError,
        days_from_data,
        synthetic_days,
        synthetic_sessions_between,
    )
    from sim.outputs import render_summary, write_outputs

    err = Console(stderr=True)
    try:
        settings = get_settings()
        overrides = {
            "capital": args.capital,
            "entry_timeout_s": args.entry_timeout,
            "slippage_ticks": args.slippage_ticks,
            "participation": args.participation,
            "kill_switch_at": args.kill_switch_at,
        }
        if args.allocation is not None:
            overrides["allocation"] = args.allocation
        config = BacktestConfig.from_settings(settings, **overrides)
        if args.fetch is not None:
            cache = _fetch(args, settings)
            if cache is None:
                return 1
            days = days_from_data(
                cache,
                args.start,
                args.end or args.start,
                symbols=args.fetch,
                max_gap_seconds=args.max_gap_minutes * 60,
            )
            count = len(days)
        elif args.data is not None:
            days = days_from_data(
                args.data, args.start, args.end, max_gap_seconds=args.max_gap_minutes * 60
            )
            count = len(days)
        else:
            days = synthetic_days(args.seed, args.days, args.symbols, args.start, args.end)
            count = (
                args.days
                if args.end is None
                else len(synthetic_sessions_between(args.start or date.today(), args.end))
            )
    except (SettingsError, BacktestDataError, ValueError) as exc:
        print(f"backtest.py: error: {exc}", file=sys.stderr)
        return 2
    with Progress(
        TextColumn("backtest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=err,
        disable=args.no_progress,
    ) as progress:
        task = progress.add_task("", total=count)

        def advance(day) -> None:  # type: ignore[no-untyped-def]
            progress.update(task, advance=1, description=f"{day.trading_date} ${day.net_pnl:+,.2f}")

        try:
            result = run_backtest(days, config, on_day=advance)
        except (BacktestDataError, ValueError) as exc:
            print(f"backtest.py: error: {exc}", file=sys.stderr)
            return 2
    if not result.days:
        print("backtest.py: error: no trading day to run; check --start/--end", file=sys.stderr)
        return 2
    out = args.out or Path("backtests") / (
        f"{result.days[0].trading_date}_{result.days[-1].trading_date}_{datetime.now():%H%M%S}"
    )
    try:
        written = write_outputs(result, out)
    except (OSError, JournalError) as exc:
        print(
            f"backtest.py: error: cannot write {out} ({exc}); pick another --out", file=sys.stderr
        )
        return 2
    if len(result.days) == 1:
        print(render_report(result.days[0].report))
    print(render_summary(result))
    print(f"written to {out}/: " + ", ".join(p.name for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
