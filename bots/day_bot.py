"""The day trader's wiring: the loop around the entry core and its I/O parts.

Each pass of the loop: heartbeat, the watchlist and the pre-market phases (07:00
aggregation, 07:30 analysis, 08:15 ticker validation), bars flushed on the clock, quotes
watched, every symbol with a new bar decided by the core (trading.entries.EntryCore) in
the worker pool, enters sent (bots.entry_orders), working entries watched; fills are
recorded as they arrive (bots.entry_fills).

Safety: no order before startup reconciliation; no entry while the exit manager is not
alive and reconciled (its heartbeat, core.heartbeats); kill switch (file or database flag)
and risk limits halt entries only (failure mode 15); SIGINT/SIGTERM cancel working entry
BUYs, wait for IB's confirmation, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bots.day_book import DayBook
from bots.day_feeds import DayFeeds
from bots.day_watchlist import DayWatchlist
from bots.entry_fills import EntryFills
from bots.entry_orders import EntryOptions, EntryOrders
from core.clock import MarketClock, Session, get_clock
from core.logs import get_logger
from core.settings import Settings
from ib.fills import executions
from ib.market_data import LIVE_ELSE_DELAYED
from ib.session import BrokerSession
from observability import DatabaseLocked, TradingDatabase, get_database
from store.bars import BarRecorder
from trading import phases
from trading.entries import ENTRY_TIMEOUT_S, EntryConfig, EntryCore, evaluate_all
from trading.indicators import BAR_SECONDS
from trading.model import DAY_TRADER

AGENT = DAY_TRADER
# A locked database (another program holding a long write) is retried this often, real seconds.
DB_LOCKED_RETRY_REAL_S = 1.0

log = get_logger(AGENT)


@dataclass(frozen=True)
class DayTraderOptions:
    """What the command line decides; times are market seconds unless they say real."""

    allocation: float = 0.25
    workers: int = 6
    use_llm: bool = True
    symbols: tuple[str, ...] | None = None
    entry_timeout_s: float = ENTRY_TIMEOUT_S  # market seconds
    limit_ticks: int = 2  # marketable limit = ask + this many ticks
    ack_timeout_real_s: float = 10.0  # no answer from IB for this long: look the order up
    cancel_wait_real_s: float = 15.0  # how long shutdown waits for cancel confirmations
    health_every_real_s: float = 60.0
    heartbeat_every_real_s: float = 10.0
    watchlist_refresh_s: float = 15 * 60.0
    max_symbols: int = 50  # IB market-data lines are limited; keep the best-ranked
    llm_budget_real_s: float = 8.0
    retry_real_s: float = 30.0  # reconnect interval (short in accelerated simulations)

    def entry_options(self) -> EntryOptions:
        return EntryOptions(
            entry_timeout_s=self.entry_timeout_s,
            ack_timeout_real_s=self.ack_timeout_real_s,
            llm_budget_real_s=self.llm_budget_real_s,
        )


class DayTrader:
    """Wires broker session, market data, the entry core, orders and the database; `run()`
    until `stop_event`."""

    def __init__(
        self,
        settings: Settings,
        options: DayTraderOptions,
        *,
        db: TradingDatabase | None = None,
        clock: MarketClock | None = None,
        reviewer: Any = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.clock = clock or get_clock()
        self.db = db or get_database(settings.database_path)
        self.config = EntryConfig.from_settings(
            settings, allocation=options.allocation, limit_ticks=options.limit_ticks
        )
        self.core = EntryCore(self.config, self.clock)
        self.session = BrokerSession(
            settings, settings.day_trader_client_id, AGENT, retry_seconds=options.retry_real_s
        )
        self.ib = self.session.ib
        self.reviewer = reviewer
        self.pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="analysis")
        self.stop_event = asyncio.Event()
        self.bar_event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.bar_recorder = BarRecorder(settings.recorded_bars_dir)
        self.feeds = DayFeeds(
            self.ib,
            self.clock,
            self.config,
            self.core,
            self._spawn,
            self.stop_event,
            self.bar_event,
            connects=lambda: self.session.health.connects,
            recorder=self.bar_recorder,
        )
        self.watchlist = DayWatchlist(
            settings,
            self.ib,
            self.clock,
            self.feeds,
            self._spawn,
            self.stop_event,
            symbols=options.symbols,
            max_symbols=options.max_symbols,
            refresh_s=options.watchlist_refresh_s,
        )
        self.book = DayBook(
            settings, self.db, self.session, self.clock, self.pool, self.feeds.last_prices
        )
        self.fills = EntryFills(settings, self.session, self.db, self.clock, self._spawn)
        self.entries = EntryOrders(
            settings,
            options.entry_options(),
            self.session,
            self.db,
            self.clock,
            self.core,
            self.book,
            self.feeds,
            self.fills.apply_fill,
            reviewer,
        )
        self.session.connected_handlers.append(self._on_connected)
        self.session.resubscribe_handlers.append(self.feeds.resubscribe)
        self.session.error_listeners.append(self.feeds.on_ib_error)

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> int:
        """Connect, reconcile, then trade until `stop_event`; returns the exit code."""
        self.db.beat(AGENT, "starting")
        log.info(
            "starting",
            mode=self.settings.trading_mode,
            allocation=self.options.allocation,
            max_open_positions=self.config.max_open_positions,
            workers=self.options.workers,
            llm=self.reviewer is not None,
            symbols=list(self.options.symbols or ()),
        )
        self.bar_recorder.start()
        connect = asyncio.ensure_future(self.session.connect())
        stopping = asyncio.ensure_future(self.stop_event.wait())
        await asyncio.wait({connect, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not connect.done():
            connect.cancel()
            await self._shutdown()
            return 0
        stopping.cancel()
        connect.result()  # re-raise SettingsError (paper/live mismatch)
        try:
            await self._main_loop()
        finally:
            await self._shutdown()
        return 0

    async def _main_loop(self) -> None:
        timers = {"beat": 0.0, "health": 0.0, "watchlist": 0.0}
        locked_since: float | None = None
        loop = asyncio.get_running_loop()
        while not self.stop_event.is_set():
            real = loop.time()
            try:
                await self._loop_once(real, timers)
            except DatabaseLocked as exc:
                # Ridden out, never fatal mid-session: nothing is sent on an unwritten intent.
                if locked_since is None:
                    locked_since = real
                    log.error(
                        "database_locked",
                        error=str(exc),
                        action="entries paused until the database answers again",
                    )
                await asyncio.sleep(DB_LOCKED_RETRY_REAL_S)
                continue
            if locked_since is not None:
                log.warning("database_unlocked", locked_for_s=round(real - locked_since, 1))
                locked_since = None
            self.bar_event.clear()
            # Wake on a new bar, or at least a few times per market bar for housekeeping.
            pause = min(0.5, self.clock.real_seconds(BAR_SECONDS / 6))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.bar_event.wait(), timeout=pause)

    async def _loop_once(self, real: float, timers: dict[str, float]) -> None:
        """One pass: heartbeat, watchlist, bars, quotes, analysis, entries, health."""
        now = self.clock.now()
        session = self.clock.session(now.date())
        phase = phases.day_phase(now, session).value
        if real >= timers["beat"]:
            state = phase if self.session.ready.is_set() else "reconnecting"
            self.db.beat(AGENT, state, self.feeds.data_notice)
            timers["beat"] = real + self.options.heartbeat_every_real_s
        if self.session.ready.is_set():
            if phase in {"aggregation", "analysis", "regular"}:
                if real >= timers["watchlist"]:
                    timers["watchlist"] = real + self.clock.real_seconds(
                        self.options.watchlist_refresh_s
                    )
                    await self.watchlist.refresh()
                await self.watchlist.validate_tickers_if_due(now)
                self.feeds.flush_bars(now.timestamp())
                if phase == "regular":
                    self.feeds.watch_quotes(now.timestamp())
                if phase in {"analysis", "regular"}:
                    await self._analyze(now, session)
            await self.entries.watch()
        if real >= timers["health"]:
            timers["health"] = real + self.options.health_every_real_s
            self._log_health(phase)

    async def _shutdown(self) -> None:
        """Cancel our working entry BUYs, wait for IB to confirm, then disconnect."""
        log.info("stopping", working_entries=len(self.entries.working))
        for task in list(self._tasks):
            task.cancel()
        await self.entries.cancel_all(self.options.cancel_wait_real_s)
        await self.session.close()
        await asyncio.to_thread(self.bar_recorder.close)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.db.beat(AGENT, "stopped")
        log.info("stopped")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", error=repr(task.exception()))

    # -- reconciliation -------------------------------------------------------------------
    async def _on_connected(self) -> None:
        """After every (re)connect, before any order: intents and fills brought in line."""
        # Per connection, before any reqMktData: quotes say whether they are delayed.
        self.ib.reqMarketDataType(LIVE_ELSE_DELAYED)
        results = await self.entries.orders.recover()
        fills = await executions(self.ib, self.clock.now, 15.0)
        applied = sum(self.fills.apply_fill(f) for f in fills)
        await self.entries.reconcile(results)
        log.info(
            "reconciled",
            intents=len(results),
            open_entries=len(self.entries.working),
            fills_applied=applied,
        )
        self.feeds.resubscribe_if_lost()

    # -- analysis ---------------------------------------------------------------------------
    async def _analyze(self, now: datetime, session: Session | None) -> None:
        """Evaluate every symbol with a new bar, in the worker pool; enter on a yes."""
        due = self.core.take_due()
        if not due:
            return
        loop = asyncio.get_running_loop()
        # Entries still being decided or placed take a slot too.
        book = self.core.with_entering(await self.book.read_book(self.entries.working_symbols()))
        snaps = [f.snapshot() for f in due]
        workers = self.options.workers
        chunks = [snaps[i::workers] for i in range(workers)]
        results = await asyncio.gather(
            *(
                loop.run_in_executor(self.pool, evaluate_all, c, book, now, session, self.config)
                for c in chunks
                if c
            )
        )
        decisions = self.core.allot([d for chunk in results for d in chunk], book)
        for decision in decisions:
            self.feeds.record_decision(decision)
            if decision.enter:
                self._spawn(self.entries.enter(decision))

    # -- health -----------------------------------------------------------------------------
    def _log_health(self, phase: str) -> None:
        log.info(
            "health",
            phase=phase,
            connected=self.ib.isConnected(),
            ready=self.session.ready.is_set(),
            subscriptions=self.feeds.subscriptions(),
            fresh_symbols=self.feeds.fresh_symbols(self.clock.epoch()),
            symbols=len(self.feeds),
            open_positions=len(self.db.get_active_positions()),
            working_entries=len(self.entries.working),
            kill_switch=self.book.kill_switch(),
        )
