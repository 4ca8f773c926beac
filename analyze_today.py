"""The day's trades from the database: per-symbol and total P&L, win rate, exit reasons,
average hold, max drawdown, and a P&L chart (PNG).

    python analyze_today.py                       # today (New York trading date)
    python analyze_today.py --date 2026-11-24 --chart reports/nov24.png
    python analyze_today.py --export journal.csv            # one row per round trip, today
    python analyze_today.py --export journal.parquet --from 2026-11-02 --to 2026-11-27
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from core import cli
from core.cli import ProgramError as ToolError
from core.settings import PROJECT_ROOT, Settings
from ib_tools import add_db_arg, open_database
from journal import JournalError, dates_between, journal_for_dates, write_journal
from observability import TradingDatabase
from reports import build_day_report, render_report, write_pnl_chart

TOOL = "analyze_today"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(description="Analyse one trading day from the database.")
    add_db_arg(parser)
    parser.add_argument("--date", help="trading date YYYY-MM-DD (default today, New York)")
    parser.add_argument("--chart", type=Path, help="PNG to write (default reports/<date>_pnl.png)")
    parser.add_argument("--no-chart", action="store_true", help="do not write the chart")
    journal = parser.add_argument_group("trade journal (--export)")
    journal.add_argument(
        "--export", type=Path, help="write the trade journal to FILE.csv or FILE.parquet"
    )
    journal.add_argument("--from", dest="first", help="first trading date YYYY-MM-DD")
    journal.add_argument("--to", dest="last", help="last trading date YYYY-MM-DD (default today)")
    journal.add_argument(
        "--logs", type=Path, help="the bots' log folder, for the indicator values (default LOG_DIR)"
    )
    return parser


def _date_arg(flag: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ToolError(f"{flag} {text!r} is not a date; use YYYY-MM-DD") from None


def export_journal(args: argparse.Namespace, db: TradingDatabase, settings: Settings) -> int:
    """--export: the journal of --date, or of --from .. --to, to a CSV or Parquet file."""
    today = db.clock.today()
    if args.first or args.last:
        if args.date:
            raise ToolError("--date and --from/--to both given: use one")
        first = _date_arg("--from", args.first) if args.first else None
        last = _date_arg("--to", args.last) if args.last else today
    else:
        first = last = _date_arg("--date", args.date) if args.date else today
    try:
        days = dates_between(first or last, last)
        rows = journal_for_dates(db, days, args.logs or settings.log_dir)
        path = write_journal(rows, args.export)
    except JournalError as exc:
        raise ToolError(str(exc)) from None
    span = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    print(f"journal: {len(rows)} round trips ({span}) written to {path}")
    return 0


def analyze(args: argparse.Namespace, settings: Settings) -> int:
    db = open_database(args, settings, read_only=True)
    if args.export is not None:
        return export_journal(args, db, settings)
    if args.first or args.last:
        raise ToolError("--from/--to go with --export FILE; for one day's report use --date")
    trading_date = args.date or db.clock.today_str()
    try:
        date.fromisoformat(trading_date)
    except ValueError:
        raise ToolError(f"--date {trading_date!r} is not a date; use YYYY-MM-DD") from None
    report = build_day_report(db, trading_date)
    print(render_report(report), end="")
    if not args.no_chart:
        chart = args.chart or PROJECT_ROOT / "reports" / f"{trading_date}_pnl.png"
        print(f"chart: {write_pnl_chart(report, chart)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_program(TOOL, build_parser(), analyze, argv, logs=False)


if __name__ == "__main__":
    sys.exit(main())
