"""The day trader's book: what the database and the account say, read once per analysis.

IB-side numbers are taken on the event loop's thread (ib_async's state is not thread-safe),
database reads in the worker pool so the loop never waits on SQLite; the arithmetic is the
core's (trading.entries.book_from_records, size_entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from core.clock import MarketClock
from core.heartbeats import EXIT_MANAGER, exit_manager_problem
from core.logs import get_logger
from core.settings import Settings
from ib.convert import ib_price
from ib.session import BrokerSession
from observability import KILL_SWITCH_FLAG, TradingDatabase
from trading.entries import (
    EXIT_MANAGER_NOT_READY,
    AccountFunds,
    BookState,
    ClosedPosition,
    HeldPosition,
    book_from_records,
)
from trading.model import DAY_TRADER

AGENT = DAY_TRADER
log = get_logger(AGENT)


class DayBook:
    """Reads the book (positions, entries, P&L, kill switch, exit manager) and the account."""

    def __init__(
        self,
        settings: Settings,
        db: TradingDatabase,
        session: BrokerSession,
        clock: MarketClock,
        pool: ThreadPoolExecutor,
        stream_prices: Callable[[], dict[str, float]],
    ) -> None:
        self.settings = settings
        self.db = db
        self.session = session
        self.ib = session.ib
        self.clock = clock
        self.pool = pool
        self.stream_prices = stream_prices  # our quotes' last trades, fresher than IB's
        self._net_liq_start: float | None = None
        self._net_liq_day: str | None = None
        self._exit_manager_problem: str | None = None  # why entries wait, as last read

    async def read_book(self, working: frozenset[str]) -> BookState:
        """The book; `working`: symbols whose entry is working, being decided or placed
        (each counts as a working entry)."""
        prices = {p.contract.symbol: ib_price(p.marketPrice) for p in self.ib.portfolio()}
        # Our stream is fresher than updatePortfolio (3 min).
        prices.update(self.stream_prices())
        net_liquidation = self._start_net_liquidation()
        loop = asyncio.get_running_loop()
        book = await loop.run_in_executor(
            self.pool, self.book_from_database, prices, working, net_liquidation
        )
        self._note_exit_manager(book.exit_manager_problem)
        return book

    def _note_exit_manager(self, problem: str | None) -> None:
        """Log when entries start and stop waiting for the exit manager (once per change)."""
        if problem and not self._exit_manager_problem:
            log.warning("entries_paused", reason=EXIT_MANAGER_NOT_READY, detail=problem)
        elif not problem and self._exit_manager_problem:
            log.info("entries_resumed", waited_for=self._exit_manager_problem)
        self._exit_manager_problem = problem

    def book_from_database(
        self, prices: dict[str, float], working: frozenset[str], net_liquidation: float
    ) -> BookState:
        """BookState from the database plus the given prices; runs in a worker thread."""
        active = [
            HeldPosition(p["symbol"], p["quantity"], p["entry_price"], p.get("agent"))
            for p in self.db.get_active_positions()
        ]
        closed = [
            ClosedPosition(c["symbol"], c["pnl"], c.get("agent"))
            for c in self.db.get_closed_today()
        ]
        entries = {i["symbol"] for i in self.db.get_open_intents() if i["side"] == "BUY"}
        return book_from_records(
            active,
            closed,
            entries | working,
            prices,
            agent=AGENT,
            net_liquidation=net_liquidation,
            kill_switch=self.kill_switch(),
            exit_manager_problem=self.exit_manager_problem(),
        )

    def exit_manager_problem(self) -> str | None:
        """Why the exit manager cannot protect a fill now (its heartbeat row and process), or
        None; a database read: call it from a worker thread."""
        return exit_manager_problem(self.db.get_heartbeats().get(EXIT_MANAGER), time.time())

    def kill_switch(self) -> str | None:
        """Why entries are halted by the operator (file or database flag), or None."""
        if self.settings.kill_switch_file.exists():
            return f"file {self.settings.kill_switch_file}"
        flag = self.db.entries_halted()
        if flag:
            return f"database flag {KILL_SWITCH_FLAG}={flag}"
        return None

    def account_value(self, tag: str) -> float | None:
        """A USD account value by tag, None while unknown (unknown is not zero)."""
        for value in self.ib.accountValues(self.session.account):
            if value.tag == tag and value.currency in ("USD", "BASE", ""):
                with contextlib.suppress(ValueError):
                    return float(value.value)
        return None

    def account_funds(self) -> AccountFunds:
        """The account values entry sizing reads, as IB reports them now."""
        return AccountFunds(
            self.account_value("NetLiquidation"),
            self.account_value("AvailableFunds"),
            self.account_value("BuyingPower"),
        )

    def _start_net_liquidation(self) -> float:
        # The daily loss limit is measured against the day's first net liquidation.
        today = self.clock.today_str()
        if self._net_liq_day != today or self._net_liq_start is None:
            net = self.account_value("NetLiquidation")
            if net is None:
                return math.nan
            self._net_liq_start, self._net_liq_day = net, today
        return self._net_liq_start
