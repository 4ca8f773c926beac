"""The day trader: finds long entries on the watchlist and sends them through the intent protocol.

    python day_trader.py --allocation 0.25 [--client-id 2] [--host H] [--port P] [--db FILE]
                         [--live] [--symbols A,B,C] [--workers 6] [--no-llm]

The entry point: parses the command line and starts the bot (bots.day_bot.DayTrader). The
decisions are the pure core's (trading.entries, trading.feed); the I/O around them lives in
bots/: market data (bots.day_feeds over ib.market_data), the watchlist (bots.day_watchlist),
the book (bots.day_book), entries (bots.entry_orders) and fills (bots.entry_fills).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import signal
import sys
from pathlib import Path
from typing import Any

from bots.day_bot import AGENT, DayTrader, DayTraderOptions
from core import cli
from core.clock import FileTimeSource, MarketClock, preload_calendar, set_clock
from core.logs import get_logger
from core.settings import (
    Settings,
    check_trading_mode,
    load_settings,
)
from core.shutdown import install_stop_handlers
from trading.entries import ENTRY_TIMEOUT_S

log = get_logger(AGENT)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="day_trader.py",
        description="Finds long entries on the watchlist and enters them (paper by default).",
    )
    parser.add_argument(
        "--allocation",
        type=cli.ranged(float, 0.0, 1.0, lo_open=True),
        default=None,
        help="fraction of NetLiquidation to deploy, in (0, 1] (default: ALLOCATION or 0.25)",
    )
    cli.add_gateway_args(parser, None, "IB client id (default 2)")
    parser.add_argument("--db", help="database file (default DATABASE_PATH)")
    parser.add_argument(
        "--live", action="store_true", help="trade real money (also needs TRADING_MODE=live)"
    )
    parser.add_argument("--symbols", type=cli.tickers, help="watchlist override, e.g. AAPL,MSFT")
    parser.add_argument(
        "--workers",
        type=cli.ranged(int, 1, 64),
        default=6,
        help="analysis workers, 1..64 (default 6)",
    )
    parser.add_argument("--no-llm", action="store_true", help="no LLM second opinion")
    parser.add_argument(
        "--entry-timeout",
        type=cli.ranged(float, 1.0, 3600.0),
        default=ENTRY_TIMEOUT_S,
        help="market seconds an unfilled entry works before it is cancelled "
        f"(default {ENTRY_TIMEOUT_S:g})",
    )
    cli.add_seconds_arg(parser, "--retry-seconds", 30.0, "real time between reconnect attempts")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the command line on top. Raises SettingsError."""
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["ib_host"] = args.host
    if args.port is not None:
        overrides["ib_port"] = args.port
    if args.client_id is not None:
        overrides["day_trader_client_id"] = args.client_id
    if args.db:
        overrides["database_path"] = Path(args.db).expanduser().resolve()
    if args.allocation is not None:
        overrides["allocation"] = args.allocation
    settings = load_settings(**overrides)
    check_trading_mode(settings, args.live)
    return settings


def options_from_args(args: argparse.Namespace, settings: Settings) -> DayTraderOptions:
    """The bot's options from parsed arguments (allocation from the settings)."""
    return DayTraderOptions(
        allocation=settings.allocation,
        workers=args.workers,
        use_llm=not args.no_llm,
        symbols=args.symbols,
        entry_timeout_s=args.entry_timeout,
        retry_real_s=args.retry_seconds,
    )


async def _run(settings: Settings, options: DayTraderOptions) -> int:
    reviewer = None
    preparing: asyncio.Task[None] | None = None
    if options.use_llm and (settings.deepseek_api_key or settings.google_api_key):
        from llm_review import LLMReviewer

        reviewer = LLMReviewer.from_settings(settings, budget_s=options.llm_budget_real_s)
        # The client imports take seconds: a thread does them while the bot connects and
        # reconciles, so a restart is not held up by them (a review before then waits).
        preparing = asyncio.create_task(_prepare_reviewer(reviewer))
    trader = DayTrader(settings, options, reviewer=reviewer)
    install_stop_handlers(asyncio.get_running_loop(), trader.stop_event.set)
    try:
        return await trader.run()
    finally:
        if preparing is not None and not preparing.done():
            preparing.cancel()


async def _prepare_reviewer(reviewer: Any) -> None:
    """`reviewer.prepare()` in a worker thread; a missing client is logged (its reviews then
    fall back to the heuristic), never raised into the bot."""
    try:
        await asyncio.to_thread(reviewer.prepare)
    except ImportError as exc:
        log.warning("llm_client_missing", error=str(exc), action="pip install -r requirements.txt")


def trade(args: argparse.Namespace, settings: Settings) -> int:
    """Enter positions until stopped."""
    if settings.clock_file is not None:
        set_clock(MarketClock(FileTimeSource(settings.clock_file)))
    return asyncio.run(_run(settings, options_from_args(args, settings)))


def _settings_and_calendar(args: argparse.Namespace) -> Settings:
    preload_calendar()  # built while it connects and reconciles, not after (back sooner)
    # `kill -USR1 <pid>` prints every thread's stack: the way to see a hang in production.
    with contextlib.suppress(ValueError, OSError, AttributeError):  # stderr without a file
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    return settings_from_args(args)


def main(argv: list[str] | None = None) -> int:
    # A settings or database error (a paper/live account mismatch at connect too) is exit
    # code 2.
    return cli.run_program(
        "day_trader.py", build_parser(), trade, argv, load=_settings_and_calendar,
        log_as=AGENT, console=True, setup_exit=2,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
