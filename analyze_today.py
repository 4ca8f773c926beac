"""The day's trades from the database: per-symbol and total P&L, win rate, exit reasons,
average hold, max drawdown, and a P&L chart (PNG).

    python analyze_today.py                       # today (New York trading date)
    python analyze_today.py --date 2026-11-24 --chart reports/nov24.png
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from core import cli
from core.settings import PROJECT_ROOT, get_settings
from ib_tools import ToolError, add_db_arg, open_database, run_tool
from reports import build_day_report, render_report, write_pnl_chart

TOOL = "analyze_today"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(description="Analyse one trading day from the database.")
    add_db_arg(parser)
    parser.add_argument("--date", help="trading date YYYY-MM-DD (default today, New York)")
    parser.add_argument("--chart", type=Path, help="PNG to write (default reports/<date>_pnl.png)")
    parser.add_argument("--no-chart", action="store_true", help="do not write the chart")
    return parser


def analyze(args: argparse.Namespace) -> int:
    db = open_database(args, get_settings(), read_only=True)
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
    args = build_parser().parse_args(argv)
    return run_tool(TOOL, lambda: analyze(args))


if __name__ == "__main__":
    sys.exit(main())
