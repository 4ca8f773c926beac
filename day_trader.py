"""The day trader: finds long entries on the watchlist and sends them through the intent protocol.

    python day_trader.py --allocation 0.25 [--client-id 2] [--host H] [--port P] [--db FILE]
                         [--live] [--symbols A,B,C] [--workers 6] [--no-llm]

Decisions are pure (`trading.entries.evaluate_entry`); this module does the I/O around them:
  - market data: quotes (reqMktData) stamped with the market clock on arrival, 30-s bars from
    IB's 5-s real-time bars (or keepUpToDate history when those are refused), indicators seeded
    from today's 30-s history so there is no 7-minute warm-up; a pacer keeps history requests
    inside IB's limits and backs off on 162 (failure mode 8);
  - entries: size from NetLiquidation x allocation / max positions (core.money.entry_shares),
    an order intent with a unique orderRef written first (guard_entry: no symbol twice, even
    across processes), then a marketable DAY limit BUY; an entry not filled within
    `entry_timeout` market seconds is cancelled (confirmed) and not chased; after a timeout
    or reconnect an order is looked up by orderRef, never re-sent (failure modes 1, 11, 13);
  - fills: execDetails is the truth, keyed by execId: a trade row and an active position with
    its target and stop (core.money); the exit manager (another process) protects it;
  - safety: no order before startup reconciliation; no entry while the exit manager is not
    alive and reconciled (its heartbeat, core.heartbeats); kill switch (file or database flag)
    and risk limits halt entries only (failure mode 15); SIGINT/SIGTERM cancel working entry
    BUYs, wait for IB's confirmation, then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import math
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ib_async import CommissionReport, Contract, Fill, LimitOrder, OrderStatus, Stock, Trade

from core import cli
from core.broker import BrokerSession
from core.clock import (
    NEW_YORK,
    FileTimeSource,
    MarketClock,
    Session,
    get_clock,
    preload_calendar,
    set_clock,
)
from core.heartbeats import EXIT_MANAGER, exit_manager_problem
from core.logs import get_logger, setup_logging
from core.money import (
    average_price,
    entry_shares,
    marketable_limit_price,
    profit_target_price,
    stop_loss_price,
)
from core.orders import IntentOrders, LookupStatus, cancel_came_too_late
from core.settings import (
    Settings,
    SettingsError,
    check_trading_mode,
    load_settings,
    set_settings,
)
from core.shutdown import install_stop_handlers
from core.tickers import is_ticker
from observability import (
    CANCELLED,
    FILLED,
    KILL_SWITCH_FLAG,
    DatabaseLocked,
    IntentTransitionError,
    ReentryBlocked,
    TradingDatabase,
    get_database,
)
from store.bars import BarRecorder
from trading import phases
from trading.entries import (
    BAR_SECONDS,
    DELAYED_DATA,
    DELAYED_DATA_TYPES,
    EXIT_MANAGER_NOT_READY,
    STALE_QUOTE,
    WARMING_UP,
    BookState,
    EntryConfig,
    EntryDecision,
    SymbolSnapshot,
    allot_free_slots,
    evaluate_entry,
    quote_is_stale,
)
from trading.feed import gap_percent
from trading.indicators import Bar, BarAggregator, StreamingIndicators

AGENT = "day_trader"
# A locked database (another program holding a long write) is retried this often, real seconds.
DB_LOCKED_RETRY_REAL_S = 1.0
# IB refuses real-time bars for these (no subscription / permissions): use history instead.
_REALTIME_REFUSED = frozenset({162, 354, 420, 10089, 10168})
# reqMarketDataType 3: live where subscribed, else delayed (stamped type 3) instead of no data.
_LIVE_ELSE_DELAYED = 3

log = get_logger(AGENT)

_DELAYED_FIX = (
    "set ALLOW_DELAYED_DATA=true in .env to enter on delayed quotes, "
    "or subscribe to live market data in IB"
)


def delayed_data_notice(data_types: Iterable[int], allow_delayed: bool) -> str | None:
    """What delayed quotes do to entries, in one line for the console and the heartbeat (the
    supervisor's status block shows it); None while no symbol's quotes are delayed.
    `data_types`: each symbol's IB marketDataType (0 = no quote yet)."""
    seen = [t for t in data_types if t]
    delayed = [t for t in seen if t in DELAYED_DATA_TYPES]
    if not delayed:
        return None
    if allow_delayed:
        return "entries on delayed market data (ALLOW_DELAYED_DATA=true): quotes lag 15-20 min"
    if len(delayed) == len(seen):
        return f"entries off: delayed market data only ({_DELAYED_FIX})"
    return f"entries off for the symbols with delayed market data ({_DELAYED_FIX})"


# ---------------------------------------------------------------------------------------------
# Options and phases


@dataclass(frozen=True)
class DayTraderOptions:
    """What the command line decides; times are market seconds unless they say real."""

    allocation: float = 0.25
    workers: int = 6
    use_llm: bool = True
    symbols: tuple[str, ...] | None = None
    entry_timeout_s: float = 60.0  # market seconds an entry may work before it is cancelled
    limit_ticks: int = 2  # marketable limit = ask + this many ticks
    ack_timeout_real_s: float = 10.0  # no answer from IB for this long: look the order up
    cancel_wait_real_s: float = 15.0  # how long shutdown waits for cancel confirmations
    health_every_real_s: float = 60.0
    heartbeat_every_real_s: float = 10.0
    watchlist_refresh_s: float = 15 * 60.0
    max_symbols: int = 50  # IB market-data lines are limited; keep the best-ranked
    llm_budget_real_s: float = 8.0
    retry_real_s: float = 30.0  # reconnect interval (short in accelerated simulations)


TICKER_VALIDATION = (8, 15)


def day_phase(now: datetime, session: Session | None) -> str:
    """Returns the phase of the trading day at `now`: closed, idle, aggregation, analysis,
    regular, or after_close (entries are further limited by the rules' cutoff)."""
    return phases.day_phase(now, session).value


# ---------------------------------------------------------------------------------------------
# IB historical-data pacing (real time: IB counts its limits in wall seconds)


class HistoricalPacer:
    """IB's small-bar history limits: no identical request within 15 s, fewer than 6 per
    contract in 2 s, at most 60 in 10 minutes; after a 162 pacing error, a growing pause.

    A sliding log of request times (not a refilling bucket, which would allow bursts over
    the 10-minute cap). `monotonic` is injectable for tests.
    """

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        max_per_window: int = 60,
        window_s: float = 600.0,
        per_contract: int = 5,
        contract_window_s: float = 2.0,
        identical_s: float = 15.0,
    ) -> None:
        self._now = monotonic
        self.max_per_window = max_per_window
        self.window_s = window_s
        self.per_contract = per_contract
        self.contract_window_s = contract_window_s
        self.identical_s = identical_s
        self._log: deque[tuple[float, tuple[Any, ...], str]] = deque()
        self._paused_until = 0.0
        self._violations = 0

    def wait_seconds(self, key: tuple[Any, ...], contract: str) -> float:
        """Returns how long to wait before this request may go (0 = now)."""
        now = self._now()
        while self._log and now - self._log[0][0] >= self.window_s:
            self._log.popleft()
        waits = [self._paused_until - now]
        if len(self._log) >= self.max_per_window:
            waits.append(self._log[-self.max_per_window][0] + self.window_s - now)
        same = [t for t, _, c in self._log if c == contract and now - t < self.contract_window_s]
        if len(same) >= self.per_contract:
            waits.append(same[-self.per_contract] + self.contract_window_s - now)
        identical = [t for t, k, _ in self._log if k == key and now - t < self.identical_s]
        if identical:
            waits.append(identical[-1] + self.identical_s - now)
        return max(0.0, *waits)

    def record(self, key: tuple[Any, ...], contract: str) -> None:
        self._log.append((self._now(), key, contract))

    async def acquire(self, key: tuple[Any, ...], contract: str) -> None:
        """Wait (real seconds) until the request is allowed, then count it."""
        while (wait := self.wait_seconds(key, contract)) > 0:
            await asyncio.sleep(wait)
        self.record(key, contract)

    def on_pacing_violation(self) -> float:
        """IB said 162 (pacing): pause all history requests 15 s, doubling up to 10 min."""
        self._violations += 1
        pause = min(15.0 * 2 ** (self._violations - 1), 600.0)
        self._paused_until = max(self._paused_until, self._now() + pause)
        return pause

    def on_success(self) -> None:
        self._violations = 0


# ---------------------------------------------------------------------------------------------
# One symbol's market data


@dataclass
class SymbolFeed:
    """Quotes, 30-s bars and indicators of one symbol; `snapshot` is what the rules see.

    The one place that decides what feeds the rules; the stream (5-s bars into 30-s ones) and
    the history seed (30-s bars) go through `on_bar` alike, so they give the same values:
      - indicators (VWAP, RSI, ATR) take regular-hours bars with volume only. A bar without
        trades (IB streams one flat at the previous close) or a pre-market bar would pin RSI
        at 0 or 100 and make ATR the overnight gap at the open; history has no such bars.
        They warm up on today's regular-hours bars (from the history seed after a restart):
        RSI and ATR need 15 bars, so no rule fires in the first 7.5 minutes.
      - the gap reference is the last pre-market trade (the close of the last pre-market
        bar with volume), else the previous close (no pre-market trade: no gap).
      - the price the rules read is the completed bar's close (`SymbolSnapshot.close`), the
        price VWAP and RSI were computed on, not the ticker's last, which arrives with the
        bar and is a later trade (seconds later at speed). The entry limit is priced from
        the ask when the order is sent.
    """

    symbol: str
    contract: Contract
    clock: MarketClock
    indicators: StreamingIndicators = field(default_factory=StreamingIndicators)
    aggregator: BarAggregator = field(default_factory=BarAggregator)
    ticker: Any = None
    realtime: Any = None  # RealTimeBarList
    history: Any = None  # BarDataList with keepUpToDate
    bar_source: str = "none"  # "realtime", "history" or "none"
    quote_time: float = math.nan
    last_bar_time: float = -math.inf
    premarket_close: float = math.nan  # the last pre-market trade: the gap reference
    new_bar: bool = False
    seeded: bool = False
    held_back: list[Bar] = field(default_factory=list)
    warmup_logged: bool = False
    no_data: str | None = None
    data_type: int = 0  # IB marketDataType of the quotes last seen (0 = none yet)
    stale: bool = False  # no tick for the stale limit during regular hours (logged once)
    last_decision: tuple[bool, str | None, str] | None = None  # (enter, rule, reason) logged
    recorder: BarRecorder | None = None  # keeps every bar taken, for replay and the backtest

    def on_live_bar(self, bar: Bar) -> None:
        """A bar from the stream; held back until the history seed is in, which is older."""
        if self.seeded:
            self.on_bar(bar)
        else:
            self.held_back.append(bar)

    def seed(self, bars: Sequence[Bar]) -> None:
        """Today's history first, then the stream bars that arrived meanwhile."""
        for bar in [*bars, *self.held_back]:
            self.on_bar(bar)
        self.held_back.clear()
        self.seeded = True

    def on_bar(self, bar: Bar) -> bool:
        """Take one completed 30-s bar (see the class docstring for which bars count);
        False when it is not newer than the last one."""
        if bar.time <= self.last_bar_time:
            return False
        self.last_bar_time = bar.time  # the feed is alive, traded or not
        if self.recorder is not None:
            self.recorder.add(self.symbol, bar, _num(getattr(self.ticker, "close", math.nan)))
        if not bar.volume > 0:
            return True
        session = self.clock.session(datetime.fromtimestamp(bar.time, NEW_YORK).date())
        if session is None:
            return True
        if bar.time < session.open.timestamp():
            self.premarket_close = bar.close
        elif bar.time < session.close.timestamp():
            self.indicators.update(bar)
            self.new_bar = True
        return True

    def on_tick(self) -> None:
        # IB's tick times are wall time; a simulated day needs the market clock's.
        self.quote_time = self.clock.epoch()

    def gap_pct(self) -> float:
        """Pre-market gap: the last pre-market trade vs the previous close (0 without a
        pre-market trade; nan until the previous close is known)."""
        prev_close = _num(getattr(self.ticker, "close", math.nan))
        reference = prev_close if math.isnan(self.premarket_close) else self.premarket_close
        return gap_percent(reference, prev_close)

    def snapshot(self) -> SymbolSnapshot:
        t = self.ticker
        ind = self.indicators.last
        warm = self.indicators.warmup()
        return SymbolSnapshot(
            symbol=self.symbol,
            last=_num(getattr(t, "last", math.nan)),
            close=ind.close if ind else math.nan,
            bid=_num(getattr(t, "bid", math.nan)),
            ask=_num(getattr(t, "ask", math.nan)),
            vwap=ind.vwap if ind else math.nan,
            rsi=ind.rsi if ind else math.nan,
            atr_pct=ind.atr_pct if ind else math.nan,
            prev_close=_num(getattr(t, "close", math.nan)),
            gap_pct=self.gap_pct(),
            market_data_type=int(getattr(t, "marketDataType", 0) or 0),
            quote_time=self.quote_time,
            bar_time=self.last_bar_time if self.last_bar_time > 0 else math.nan,
            rsi_bars=int(warm.rsi_bars),
            atr_bars=int(warm.atr_bars),
            vwap_has_volume=bool(warm.vwap_has_volume),
        )


def _num(value: Any) -> float:
    """A finite positive-or-zero float from an IB field, nan when unset (IB uses nan / -1)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) and number >= 0 else math.nan


def _bar_from_ib(b: Any) -> Bar:
    """An indicators.Bar from ib_async's BarData (formatDate=2) or RealTimeBar."""
    when = b.time if hasattr(b, "open_") else b.date
    opened = b.open_ if hasattr(b, "open_") else b.open
    stamp = when.timestamp() if isinstance(when, datetime) else float(when)
    return Bar(stamp, float(opened), float(b.high), float(b.low), float(b.close), float(b.volume))


# ---------------------------------------------------------------------------------------------
# Working entries


@dataclass
class WorkingEntry:
    """An entry BUY this process sent and is watching until it is done."""

    order_ref: str
    symbol: str
    quantity: int
    limit: float
    placed_at: float  # market epoch
    placed_real: float  # monotonic, for the ack timeout
    trade: Trade | None
    cancel_sent_real: float | None = None
    lookups: int = 0


# ---------------------------------------------------------------------------------------------
# The bot


class DayTrader:
    """Wires broker session, market data, rules, orders and the database; `run()` until stop."""

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
        self.config = EntryConfig.from_settings(settings)
        self.session = BrokerSession(
            settings, settings.day_trader_client_id, AGENT, retry_seconds=options.retry_real_s
        )
        self.ib = self.session.ib
        self.orders = IntentOrders(self.ib, self.db, AGENT)
        self.reviewer = reviewer
        self.pacer = HistoricalPacer()
        self.bar_recorder = BarRecorder(settings.recorded_bars_dir)
        self.pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="analysis")
        self.feeds: dict[str, SymbolFeed] = {}
        self.working: dict[str, WorkingEntry] = {}  # orderRef -> entry
        self.rejected_symbols: set[str] = set()
        self.stop_event = asyncio.Event()
        self.bar_event = asyncio.Event()
        self._entering: set[str] = set()
        self._positions_lock = asyncio.Lock()
        self._unrecorded_commissions: dict[str, float] = {}  # execId -> commission
        self._req_errors: dict[int, tuple[int, str]] = {}
        self._feeds_generation = -1
        self._net_liq_start: float | None = None
        self._exit_manager_problem: str | None = None  # why entries wait, as last read
        self._net_liq_day: str | None = None
        self._validated_day: str | None = None
        self._data_notice: str | None = None  # delayed quotes: shown in every heartbeat
        self._watchlist_store: Any = None
        self._watchlist_source = "none"
        self._watchlist_basis = "none"  # what the scanner scored on (previous_day on free plans)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.session.connected_handlers.append(self._on_connected)
        self.session.resubscribe_handlers.append(self._resubscribe)
        self.session.error_listeners.append(self._on_ib_error)
        self.ib.execDetailsEvent += self._on_exec_details
        self.ib.commissionReportEvent += self._on_commission_report
        self.ib.pendingTickersEvent += self._on_tickers

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
        phase = day_phase(now, session)
        if real >= timers["beat"]:
            state = phase if self.session.ready.is_set() else "reconnecting"
            self.db.beat(AGENT, state, self._data_notice)
            timers["beat"] = real + self.options.heartbeat_every_real_s
        if self.session.ready.is_set():
            if phase in {"aggregation", "analysis", "regular"}:
                if real >= timers["watchlist"]:
                    timers["watchlist"] = real + self.clock.real_seconds(
                        self.options.watchlist_refresh_s
                    )
                    await self._refresh_watchlist()
                await self._validate_tickers_if_due(now)
                self._flush_bars(now.timestamp())
                if phase == "regular":
                    self._watch_quotes(now.timestamp())
                if phase in {"analysis", "regular"}:
                    await self._analyze(now, session)
            await self._watch_entries()
        if real >= timers["health"]:
            timers["health"] = real + self.options.health_every_real_s
            self._log_health(phase)

    async def _shutdown(self) -> None:
        """Cancel our working entry BUYs, wait for IB to confirm, then disconnect."""
        log.info("stopping", working_entries=len(self.working))
        for task in list(self._tasks):
            task.cancel()
        if self.ib.isConnected() and self.working:
            for entry in list(self.working.values()):
                self._send_cancel(entry, "shutdown")
            deadline = time.monotonic() + self.options.cancel_wait_real_s
            while self.working and time.monotonic() < deadline and self.ib.isConnected():
                await asyncio.sleep(0.1)
                await self._watch_entries(shutting_down=True)
        for entry in self.working.values():
            log.error(
                "entry_cancel_unconfirmed",
                symbol=entry.symbol,
                order_ref=entry.order_ref,
                action="check the order at IB; the next start looks it up by orderRef",
            )
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
        self.ib.reqMarketDataType(_LIVE_ELSE_DELAYED)
        results = await self.orders.recover()
        fills = await asyncio.wait_for(self.ib.reqExecutionsAsync(), 15.0)
        applied = sum(self._apply_fill(f) for f in fills)
        still_open = {ref for ref, status in results.items() if status is LookupStatus.OPEN}
        for ref in list(self.working):
            if ref not in still_open:
                self.working.pop(ref, None)
        for intent in self.db.get_open_intents(agent=AGENT):
            if intent["side"] != "BUY":
                continue
            found = await self.orders.lookup(intent["order_ref"])
            if found.status is LookupStatus.OPEN and found.trade is not None:
                self._track(intent, found.trade)
        log.info(
            "reconciled",
            intents=len(results),
            open_entries=len(self.working),
            fills_applied=applied,
        )
        if self._feeds_generation != self.session.health.connects and self.feeds:
            self._feeds_generation = self.session.health.connects
            self._spawn(self._resubscribe())

    def _track(self, intent: dict[str, Any], trade: Trade) -> None:
        ref = intent["order_ref"]
        entry = self.working.get(ref)
        if entry is None:
            created = datetime.fromisoformat(intent["created_at"]).timestamp()
            entry = WorkingEntry(
                ref,
                intent["symbol"],
                int(intent["quantity"]),
                float(intent["limit_price"] or 0.0),
                created,
                time.monotonic(),
                trade,
            )
            self.working[ref] = entry
        entry.trade = trade

    # -- watchlist ---------------------------------------------------------------------------
    async def _refresh_watchlist(self) -> None:
        symbols, source = self._watchlist_symbols()
        if symbols is None:
            if self._watchlist_source != "none":
                return  # keep what we have
            self._watchlist_source = "missing"
            log.error(
                "no_watchlist",
                path=str(self.settings.watchlist_path),
                action="pass --symbols A,B,C, set MASSIVE_API_KEY, or write the watchlist file",
            )
            return
        symbols = [s for s in symbols if s not in self.rejected_symbols][: self.options.max_symbols]
        if source != self._watchlist_source or set(symbols) != set(self.feeds):
            log.info("watchlist", source=source, basis=self._watchlist_basis, symbols=symbols)
        self._watchlist_source = source
        for symbol in [s for s in self.feeds if s not in symbols]:
            self._drop_feed(symbol, "left the watchlist")
        new = [s for s in symbols if s not in self.feeds]
        if new:
            await self._add_feeds(new)

    def _watchlist_symbols(self) -> tuple[list[str] | None, str]:
        if self.options.symbols:
            return list(self.options.symbols), "cli"
        from scanner_polygon import WatchlistStore

        if self._watchlist_store is None:
            self._watchlist_store = WatchlistStore(self.settings.watchlist_path)
            if self.settings.massive_api_key:
                self._spawn(self._run_scanner())
        watchlist = self._watchlist_store.load()
        if watchlist is None:
            return None, "none"
        self._watchlist_basis = watchlist.basis
        return watchlist.symbols, watchlist.source

    async def _run_scanner(self) -> None:
        from scanner_polygon import MassiveScanner, run_forever

        scanner = MassiveScanner.from_settings(self.settings, clock=self.clock)
        await run_forever(
            scanner,
            self.settings.watchlist_path,
            interval_s=self.options.watchlist_refresh_s,
            clock=self.clock,
            stop=self.stop_event,
        )

    async def _qualify(self, symbols: Sequence[str]) -> list[Contract]:
        """Contracts the gateway knows; unknown symbols are dropped with a log line."""
        contracts = [Stock(s, "SMART", "USD") for s in symbols]
        qualified = await asyncio.wait_for(self.ib.qualifyContractsAsync(*contracts), 30.0)
        known: list[Contract] = []
        for symbol, contract in zip(symbols, qualified, strict=True):
            if contract is None or not getattr(contract, "conId", 0):
                self.rejected_symbols.add(symbol)
                log.warning("ticker_unknown", symbol=symbol, action="dropped from the watchlist")
            else:
                known.append(contract)
        return known

    async def _validate_tickers_if_due(self, now: datetime) -> None:
        """At 08:15 re-check every watchlist ticker against the gateway (once a day)."""
        today = now.date().isoformat()
        if self._validated_day == today or (now.hour, now.minute) < TICKER_VALIDATION:
            return
        self._validated_day = today
        known = {c.symbol for c in await self._qualify(list(self.feeds))}
        for symbol in [s for s in self.feeds if s not in known]:
            self._drop_feed(symbol, "unknown to the gateway")
        log.info("tickers_validated", symbols=len(known))

    # -- market data ------------------------------------------------------------------------
    async def _add_feeds(self, symbols: Sequence[str]) -> None:
        for contract in await self._qualify(symbols):
            feed = SymbolFeed(contract.symbol, contract, self.clock, recorder=self.bar_recorder)
            self.feeds[contract.symbol] = feed
            self._subscribe(feed)
        self._feeds_generation = self.session.health.connects
        for feed in list(self.feeds.values()):
            if not feed.seeded and feed.bar_source != "history":
                self._spawn(self._seed(feed))

    def _subscribe(self, feed: SymbolFeed) -> None:
        feed.ticker = self.ib.reqMktData(feed.contract, "", False, False)
        feed.realtime = self.ib.reqRealTimeBars(feed.contract, 5, "TRADES", False)
        feed.bar_source = "realtime"
        feed.realtime.updateEvent += lambda bars, has_new, f=feed: self._on_realtime(f, bars)

    def _drop_feed(self, symbol: str, why: str) -> None:
        feed = self.feeds.pop(symbol, None)
        if feed is None:
            return
        with contextlib.suppress(Exception):
            if feed.ticker is not None:
                self.ib.cancelMktData(feed.contract)
            if feed.realtime is not None:
                self.ib.cancelRealTimeBars(feed.realtime)
            if feed.history is not None:
                self.ib.cancelHistoricalData(feed.history)
        log.info("feed_dropped", symbol=symbol, reason=why)

    async def _resubscribe(self) -> None:
        """Market data was lost (reconnect or 1101): subscribe again and re-seed the gap."""
        log.info("resubscribing", symbols=len(self.feeds))
        for feed in self.feeds.values():
            with contextlib.suppress(Exception):
                self.ib.cancelMktData(feed.contract)
                if feed.realtime is not None:
                    self.ib.cancelRealTimeBars(feed.realtime)
            feed.aggregator = BarAggregator()
            feed.history = None
            feed.seeded = False
            self._subscribe(feed)
        for feed in list(self.feeds.values()):
            self._spawn(self._seed(feed))

    def _history_request(self) -> tuple[str, str]:
        """Duration and end for today's 30-s bars: from 04:00 (IB caps small bars at 8 h)."""
        now = self.clock.now()
        start = now.replace(hour=4, minute=0, second=0, microsecond=0)
        seconds = int(min(max((now - start).total_seconds(), 60.0), 28_800.0))
        return f"{seconds} S", ""

    async def _seed(self, feed: SymbolFeed, keep_up_to_date: bool = False) -> None:
        """Today's 30-s bars so indicators are warm at once; with keep_up_to_date, the stream."""
        attempts = 0
        while not self.stop_event.is_set() and feed.symbol in self.feeds:
            attempts += 1
            duration, end = self._history_request()
            key = (feed.symbol, "TRADES", end, duration, "30 secs", keep_up_to_date)
            await self.pacer.acquire(key, feed.symbol)
            bars = await self.ib.reqHistoricalDataAsync(
                feed.contract,
                end,
                duration,
                "30 secs",
                "TRADES",
                False,
                formatDate=2,
                keepUpToDate=keep_up_to_date,
                timeout=30.0,
            )
            error = self._req_errors.pop(getattr(bars, "reqId", -1), None)
            if error is not None and error[0] == 162 and "pacing" in error[1].lower():
                pause = self.pacer.on_pacing_violation()
                log.warning("history_pacing", symbol=feed.symbol, pause_s=pause, attempt=attempts)
                continue
            if error is not None or (not bars and attempts < 3):
                if error is not None:
                    feed.no_data = f"{error[0]}: {error[1]}"
                    log.warning("history_refused", symbol=feed.symbol, code=error[0], text=error[1])
                    return
                await asyncio.sleep(1.0)
                continue
            self.pacer.on_success()
            now = self.clock.epoch()
            history = [_bar_from_ib(b) for b in bars]
            # The last one may still be in progress.
            feed.seed([b for b in history if b.time + BAR_SECONDS <= now])
            if keep_up_to_date:
                feed.history = bars
                feed.bar_source = "history"
                bars.updateEvent += lambda items, has_new, f=feed: self._on_history(f, items)
            log.info(
                "seeded",
                symbol=feed.symbol,
                bars=len(bars),
                source=feed.bar_source,
                warm=feed.indicators.warmup().ready,
            )
            self.bar_event.set()
            return

    def _on_realtime(self, feed: SymbolFeed, bars: Any) -> None:
        if not bars:
            return
        for bar in feed.aggregator.add(_bar_from_ib(bars[-1])):
            feed.on_live_bar(bar)
            self.bar_event.set()
        if len(bars) > 200:  # the library keeps every 5-s bar; we only need the newest
            del bars[:-20]

    def _on_history(self, feed: SymbolFeed, bars: Any) -> None:
        # The last bar is in progress; completed ones are those before it, newest last.
        fresh: list[Bar] = []
        for b in reversed(bars[:-1]):
            bar = _bar_from_ib(b)
            if bar.time <= feed.last_bar_time:
                break
            fresh.append(bar)
        for bar in reversed(fresh):
            feed.on_bar(bar)
            self.bar_event.set()

    def _flush_bars(self, now: float) -> None:
        # A 30-s window whose last 5-s bar never came is closed on the clock.
        for feed in self.feeds.values():
            if feed.bar_source == "realtime":
                bar = feed.aggregator.flush_if_due(now - 5)
                if bar is not None:
                    feed.on_live_bar(bar)

    def _on_tickers(self, tickers: Any) -> None:
        for ticker in tickers:
            feed = self.feeds.get(getattr(ticker.contract, "symbol", ""))
            if feed is not None and feed.ticker is ticker:
                feed.on_tick()
                self._note_data_type(feed)

    def _watch_quotes(self, now: float) -> None:
        """Log a symbol whose ticks stopped for the stale limit (and again when they resume):
        its entries are refused, and with its bars stopped too no decision would say why."""
        for feed in self.feeds.values():
            stale = quote_is_stale(feed.quote_time, now, self.config)
            if stale == feed.stale:
                continue
            feed.stale = stale
            if stale:
                age = now - feed.quote_time  # nan: never ticked
                log.warning(
                    "market_data_stale",
                    symbol=feed.symbol,
                    last_tick_age_s=round(age, 1) if math.isfinite(age) else None,
                    reason=STALE_QUOTE,
                    action="no entries on this symbol until its ticks resume",
                )
            else:
                log.info("market_data_fresh", symbol=feed.symbol)

    def _note_data_type(self, feed: SymbolFeed) -> None:
        """Log when a symbol's quotes turn delayed (and live again). Entries refuse delayed
        data unless ALLOW_DELAYED_DATA; without a subscription IB sends no bars either, so
        no entry decision is ever logged to say so."""
        data_type = int(getattr(feed.ticker, "marketDataType", 0) or 0)
        previous, feed.data_type = feed.data_type, data_type
        if data_type == previous:
            return
        notice = delayed_data_notice(
            (f.data_type for f in self.feeds.values()), self.config.allow_delayed_data
        )
        if notice != self._data_notice:
            self._data_notice = notice
            if notice is not None:  # one line saying why and what turns entries on
                log.warning("delayed_market_data", detail=notice, reason=DELAYED_DATA)
            else:
                log.info("market_data_live_again")
        if data_type in DELAYED_DATA_TYPES:
            allowed = self.config.allow_delayed_data
            log.info(  # per symbol; the WARNING above says it once for all
                "market_data_delayed",
                symbol=feed.symbol,
                data_type=data_type,
                reason=DELAYED_DATA,
                action="entries allowed (ALLOW_DELAYED_DATA)"
                if allowed
                else "no entries on this symbol until its data is live",
            )
        elif previous in DELAYED_DATA_TYPES:
            log.info("market_data_live", symbol=feed.symbol, data_type=data_type)

    def _on_ib_error(self, req_id: int, code: int, message: str) -> None:
        if req_id < 0:
            return
        self._req_errors[req_id] = (code, message)
        if len(self._req_errors) > 1000:
            self._req_errors.pop(next(iter(self._req_errors)))
        if code in _REALTIME_REFUSED:
            for feed in self.feeds.values():
                if feed.realtime is not None and feed.realtime.reqId == req_id:
                    log.warning(
                        "realtime_bars_refused",
                        symbol=feed.symbol,
                        code=code,
                        action="using historical bars with keepUpToDate",
                    )
                    with contextlib.suppress(Exception):
                        self.ib.cancelRealTimeBars(feed.realtime)
                    feed.realtime = None
                    feed.bar_source = "none"
                    self._spawn(self._seed(feed, keep_up_to_date=True))

    # -- analysis ---------------------------------------------------------------------------
    async def _analyze(self, now: datetime, session: Session | None) -> None:
        """Evaluate every symbol with a new bar, in the worker pool; enter on a yes."""
        due = [f for f in self.feeds.values() if f.new_bar]
        if not due:
            return
        for feed in due:
            feed.new_bar = False
        loop = asyncio.get_running_loop()
        # Entries still being decided or placed take a slot too.
        book = await self.read_book(pending=frozenset(self._entering))
        snaps = [f.snapshot() for f in due]
        chunks = [snaps[i :: self.options.workers] for i in range(self.options.workers)]
        results = await asyncio.gather(
            *(
                loop.run_in_executor(self.pool, _evaluate_all, c, book, now, session, self.config)
                for c in chunks
                if c
            )
        )
        decisions = allot_free_slots([d for chunk in results for d in chunk], book, self.config)
        for decision in decisions:
            self._record_decision(decision)
            if decision.enter and decision.symbol not in self._entering:
                self._entering.add(decision.symbol)
                self._spawn(self._enter(decision))

    def _record_decision(self, decision: EntryDecision) -> None:
        feed = self.feeds.get(decision.symbol)
        if decision.reason == WARMING_UP and feed is not None and not feed.warmup_logged:
            feed.warmup_logged = True
            warm = feed.indicators.warmup()
            log.info(
                "warming_up",
                symbol=decision.symbol,
                rsi_bars=int(warm.rsi_bars),
                atr_bars=int(warm.atr_bars),
                vwap_has_volume=bool(warm.vwap_has_volume),
            )
        # A symbol skipped for the same reason bar after bar is news once: INFO when the
        # decision changes (and every enter), DEBUG while it holds.
        outcome = (decision.enter, decision.rule, decision.reason)
        changed = feed is None or decision.enter or feed.last_decision != outcome
        if feed is not None:
            feed.last_decision = outcome
        (log.info if changed else log.debug)("entry_decision", **decision.log_fields())

    async def read_book(self, pending: frozenset[str] = frozenset()) -> BookState:
        """The book: IB-side numbers taken here on the loop thread (ib_async's state is not
        thread-safe), database reads in the worker pool so the loop never waits on SQLite.

        `pending`: symbols whose entry is being decided or placed; they count as working.
        """
        prices = {p.contract.symbol: _num(p.marketPrice) for p in self.ib.portfolio()}
        for symbol, feed in self.feeds.items():
            last = _num(getattr(feed.ticker, "last", math.nan))
            if not math.isnan(last):  # our stream is fresher than updatePortfolio (3 min)
                prices[symbol] = last
        working = frozenset(e.symbol for e in self.working.values()) | pending
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
        active = self.db.get_active_positions()
        closed = self.db.get_closed_today()
        entries = {i["symbol"] for i in self.db.get_open_intents() if i["side"] == "BUY"}
        entries |= working
        active_symbols = frozenset(p["symbol"] for p in active)
        realised = sum(float(c["pnl"] or 0.0) for c in closed if c.get("agent") == AGENT)
        unrealised = 0.0
        for p in active:
            if p.get("agent") == AGENT:  # an unknown price makes the P&L unknown (nan)
                price = prices.get(p["symbol"], math.nan)
                unrealised += (price - float(p["entry_price"])) * int(p["quantity"])
        return BookState(
            active_symbols=active_symbols,
            closed_today=frozenset(c["symbol"] for c in closed),
            working_entries=frozenset(entries),
            open_positions=len(active_symbols | entries),
            day_pnl=realised + unrealised,
            net_liquidation=net_liquidation,
            kill_switch=self.kill_switch(),
            exit_manager_problem=exit_manager_problem(
                self.db.get_heartbeats().get(EXIT_MANAGER), time.time()
            ),
        )

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

    def _start_net_liquidation(self) -> float:
        # The daily loss limit is measured against the day's first net liquidation.
        today = self.clock.today_str()
        if self._net_liq_day != today or self._net_liq_start is None:
            net = self.account_value("NetLiquidation")
            if net is None:
                return math.nan
            self._net_liq_start, self._net_liq_day = net, today
        return self._net_liq_start

    # -- entries ----------------------------------------------------------------------------
    async def _enter(self, decision: EntryDecision) -> None:
        try:
            await self._enter_once(decision)
        finally:
            self._entering.discard(decision.symbol)

    async def _enter_once(self, decision: EntryDecision) -> None:
        symbol = decision.symbol
        feed = self.feeds.get(symbol)
        if feed is None or not self.session.ready.is_set():
            return
        if self.reviewer is not None and not await self._llm_approves(decision, feed):
            return
        # Re-decide on the newest data: the review (or the queue) may have taken a while.
        now = self.clock.now()
        session = self.clock.session(now.date())
        book = await self.read_book(pending=frozenset(self._entering - {symbol}))
        fresh = evaluate_entry(feed.snapshot(), book, now, session, self.config)
        if not fresh.enter:
            log.info("entry_dropped", symbol=symbol, reason=fresh.reason)
            return
        limit = marketable_limit_price(fresh.values["ask"], self.options.limit_ticks)
        quantity, sizing = self.size_entry(limit)
        if quantity < 1:
            log.info("entry_too_small", symbol=symbol, limit=limit, **sizing)
            return
        order = LimitOrder("BUY", quantity, limit, tif="DAY", account=self.session.account)
        order.outsideRth = False
        # Decided: what follows is the guarded intent write (which may still refuse), then the send.
        log.info("entry_placing", symbol=symbol, rule=fresh.rule, quantity=quantity, limit=limit)
        try:
            trade = self.orders.place(
                feed.contract,
                order,
                purpose=f"entry:{fresh.rule}",
                guard_entry=True,
                max_open_positions=self.settings.max_open_positions,
            )
        except ReentryBlocked as exc:  # entries halted, or another process took the slot first
            skip = fresh._replace(enter=False, rule=None, reason=exc.reason)
            log.info("entry_decision", **skip.log_fields(), refused_by="database", detail=str(exc))
            return
        self.working[order.orderRef] = WorkingEntry(
            order.orderRef, symbol, quantity, limit, self.clock.epoch(), time.monotonic(), trade
        )
        log.info(
            "entry_sent",
            symbol=symbol,
            rule=fresh.rule,
            order_ref=order.orderRef,
            quantity=quantity,
            limit=limit,
            **sizing,
        )

    async def _llm_approves(self, decision: EntryDecision, feed: SymbolFeed) -> bool:
        from llm_review import Candidate

        v = decision.values
        candidate = Candidate(
            symbol=decision.symbol,
            price=float(v["last"]),
            vwap=float(v["vwap"]) if math.isfinite(v["vwap"]) else float(v["last"]),
            rsi=float(v["rsi"]),
            atr_pct=float(v["atr_pct"]) if math.isfinite(v["atr_pct"]) else 0.0,
            gap_pct=float(v["gap_pct"]) if math.isfinite(v["gap_pct"]) else 0.0,
            volume_ratio=1.0,  # unknown here; the reviewer treats it as neutral-thin
            rule=decision.rule or "standard",  # type: ignore[arg-type]
        )
        try:
            opinion = await asyncio.wait_for(
                self.reviewer.review(candidate), self.options.llm_budget_real_s + 1.0
            )
        except Exception as exc:  # never let the second opinion stop trading
            log.warning("llm_unavailable", symbol=decision.symbol, error=repr(exc))
            return True
        # Approvals are logged too: the trade journal shows each entry's verdict.
        log.info(
            "entry_vetoed" if not opinion.approve else "entry_approved",
            symbol=decision.symbol,
            source=opinion.source,
            reason=opinion.reason,
        )
        return bool(opinion.approve)

    def size_entry(self, limit: float) -> tuple[int, dict[str, Any]]:
        """Shares for one entry at `limit` and the numbers behind them (for the log)."""
        net = self.account_value("NetLiquidation")
        funds = [
            v
            for v in (self.account_value("AvailableFunds"), self.account_value("BuyingPower"))
            if v is not None
        ]
        committed = sum(e.quantity * e.limit for e in self.working.values())
        buying_power = min(funds) - committed if funds else None
        sizing = {
            "net_liquidation": net,
            "buying_power": buying_power,
            "allocation": self.options.allocation,
            "max_open_positions": self.config.max_open_positions,
            "max_position_usd": self.settings.max_position_usd,
        }
        if net is None or buying_power is None:
            return 0, {**sizing, "why": "account values unknown"}
        shares = entry_shares(
            limit,
            net,
            self.options.allocation,
            self.config.max_open_positions,
            buying_power=buying_power,
            max_position_usd=self.settings.max_position_usd,
        )
        return shares, sizing

    async def _watch_entries(self, shutting_down: bool = False) -> None:
        """Timed check of working entries: done, stuck without an answer, or too old."""
        now = self.clock.epoch()
        real = time.monotonic()
        for entry in list(self.working.values()):
            trade = entry.trade
            # A cancel IB refused as too late says the order is done, not how: it may have
            # filled unheard (lost acks). Such an entry is looked up like an unanswered one.
            too_late = trade is not None and cancel_came_too_late(trade)
            if trade is not None and trade.isDone() and not too_late:
                self._finish(entry, trade)
                continue
            unanswered = (
                too_late
                or trade is None
                or trade.orderStatus.status in {OrderStatus.PendingSubmit, ""}
            )
            waited = real - (entry.cancel_sent_real or entry.placed_real)
            if (unanswered or entry.cancel_sent_real) and waited > self.options.ack_timeout_real_s:
                await self._look_up(entry)
                continue
            if entry.cancel_sent_real is None and (
                shutting_down or now - entry.placed_at >= self.options.entry_timeout_s
            ):
                self._send_cancel(entry, "shutdown" if shutting_down else "entry timeout, no chase")

    def _send_cancel(self, entry: WorkingEntry, why: str) -> None:
        if entry.cancel_sent_real is not None or entry.trade is None:
            return
        entry.cancel_sent_real = time.monotonic()
        self.ib.cancelOrder(entry.trade.order)
        log.info("entry_cancel_sent", symbol=entry.symbol, order_ref=entry.order_ref, reason=why)

    async def _look_up(self, entry: WorkingEntry) -> None:
        """No answer in time: find the order by orderRef; never send it again."""
        entry.lookups += 1
        found = await self.orders.lookup(entry.order_ref)
        log.warning(
            "entry_looked_up",
            symbol=entry.symbol,
            order_ref=entry.order_ref,
            status=found.status.value,
        )
        for fill in found.fills:
            self._apply_fill(fill)
        if found.status is LookupStatus.UNKNOWN:  # ask again after another timeout
            if entry.cancel_sent_real is not None:
                entry.cancel_sent_real = time.monotonic()
            else:
                entry.placed_real = time.monotonic()
            return
        if found.status is LookupStatus.NOT_FOUND:
            self._mark(entry.order_ref, CANCELLED, "not at IB after timeout; not re-sent")
            self.working.pop(entry.order_ref, None)
            return
        if found.trade is not None:
            entry.trade = found.trade
            self.orders.sync_intent(found.trade)
            if found.status is LookupStatus.DONE:
                self._finish(entry, found.trade)
                return
        entry.placed_real = time.monotonic()
        if entry.cancel_sent_real is not None:  # the cancel was lost: ask again
            entry.cancel_sent_real = None
            self._send_cancel(entry, "cancel not confirmed, sent again")

    def _finish(self, entry: WorkingEntry, trade: Trade) -> None:
        self.working.pop(entry.order_ref, None)
        status = trade.orderStatus.status
        if status in {OrderStatus.Cancelled, OrderStatus.ApiCancelled}:
            why = "entry timeout: cancelled, not chased" if entry.cancel_sent_real else status
            self._mark(entry.order_ref, CANCELLED, why)
        log.info(
            "entry_done",
            symbol=entry.symbol,
            order_ref=entry.order_ref,
            status=status,
            filled=trade.orderStatus.filled,
        )

    def _mark(self, order_ref: str, state: str, note: str) -> None:
        try:
            self.db.update_order_intent(order_ref, state, note=note)
        except (IntentTransitionError, KeyError) as exc:
            log.warning("intent_mark_refused", order_ref=order_ref, error=str(exc))

    # -- fills ------------------------------------------------------------------------------
    def _on_exec_details(self, trade: Trade, fill: Fill) -> None:
        self._apply_fill(fill)

    def _apply_fill(self, fill: Fill) -> bool:
        """Apply one execution of our entry BUYs (keyed by execId: twice is harmless).

        Returns True when it was new: a trade row, and the position opened at this first
        fill (the exit manager adopts unknown broker positions after a short grace) or grown,
        with target and stop from the average fill price. A symbol the exit manager already
        closed today gets a row again only for shares the broker still holds.
        """
        execution = fill.execution
        ref = execution.orderRef
        if not ref:
            return False
        intent = self.db.get_order_intent(ref)
        if intent is None or intent["agent"] != AGENT or intent["side"] != "BUY":
            return False
        # execution.time is the exchange's; Fill.time is only when the message arrived here.
        when = execution.time if isinstance(execution.time, datetime) else self.clock.now()
        new = self.db.record_trade(
            intent["symbol"],
            "BUY",
            float(execution.shares),
            float(execution.price),
            AGENT,
            order_ref=ref,
            exec_id=execution.execId,
            trade_time=when,
        )
        commission = self._commission_of(fill)
        if commission is not None:  # applying it twice is harmless
            self.db.record_commission(execution.execId, commission)
        if not new:
            return False
        symbol = intent["symbol"]
        quantity, average = self._filled_so_far(ref, when)
        if self.db.get_active_position(symbol) is None and self.db.was_closed_today(symbol):
            self._spawn(self._open_after_close(symbol, ref, when))
        else:
            self._open_or_grow(symbol, ref, quantity, average, when)
        if quantity >= float(intent["quantity"]):
            # Already final (e.g. FILLED from orderStatus first) is fine.
            with contextlib.suppress(IntentTransitionError):
                self.db.update_order_intent(
                    ref, FILLED, filled_quantity=quantity, avg_fill_price=average
                )
        log.info(
            "entry_filled",
            symbol=symbol,
            order_ref=ref,
            exec_id=execution.execId,
            shares=float(execution.shares),
            price=float(execution.price),
            position=quantity,
            avg_price=round(average, 4),
        )
        return True

    def _on_commission_report(self, trade: Trade, fill: Fill, report: CommissionReport) -> None:
        ref = fill.execution.orderRef
        if not ref or not ref.startswith(f"{AGENT}-"):
            return
        if not self.db.record_commission(report.execId, report.commission):
            # Its fill is not written yet: _apply_fill attaches it when it is.
            self._unrecorded_commissions[report.execId] = float(report.commission)

    def _commission_of(self, fill: Fill) -> float | None:
        """IB's commission for this execution if its report has arrived, else None.

        reqExecutions hands back a fresh Fill for an execution seen live; the report is
        on the one ib_async keeps.
        """
        exec_id = fill.execution.execId
        pending = self._unrecorded_commissions.pop(exec_id, None)
        if pending is not None:
            return pending
        for known in (fill, self.ib.wrapper.fills.get(exec_id)):
            report = getattr(known, "commissionReport", None)
            if report is not None and report.execId == exec_id:
                return float(report.commission)
        return None

    def _filled_so_far(self, ref: str, when: datetime) -> tuple[float, float]:
        """Shares filled for one entry and their average price, from the recorded fills."""
        day = when.astimezone(NEW_YORK).date().isoformat()
        own = [t for t in self.db.get_trades_by_date(day) if t["order_ref"] == ref]
        quantity = sum(float(t["quantity"]) for t in own)
        average = average_price((t["quantity"], t["price"]) for t in own)
        assert average is not None  # called after recording a fill of this entry
        return quantity, average

    def _open_or_grow(
        self, symbol: str, ref: str, quantity: float, average: float, when: datetime
    ) -> None:
        """Write the active position (first fill) or update it (later fills), with target and
        stop from the average price."""
        target = profit_target_price(average, self.settings.profit_target_pct)
        stop = stop_loss_price(average, self.settings.stop_loss_pct)
        if not self.db.add_active_position(
            symbol,
            int(quantity),
            average,
            target,
            stop,
            agent=AGENT,
            order_ref=ref,
            entry_time=when.astimezone(NEW_YORK).isoformat(timespec="seconds"),
        ):
            self.db.update_active_position(
                symbol,
                quantity=int(quantity),
                entry_price=average,
                profit_target_price=target,
                stop_loss_price=stop,
            )
        log.info(
            "position_written",
            symbol=symbol,
            order_ref=ref,
            quantity=int(quantity),
            avg_price=round(average, 4),
            target=target,
            stop=stop,
        )

    async def _open_after_close(self, symbol: str, ref: str, when: datetime) -> None:
        """A fill for a symbol the exit manager closed today: a row only for shares the broker
        still holds. Asked fresh (reqPositions): the position stream lags the fill."""
        try:
            async with self._positions_lock:  # ib_async keeps one positions request at a time
                positions = await asyncio.wait_for(self.ib.reqPositionsAsync(), 15.0)
        except (TimeoutError, ConnectionError, OSError) as exc:
            # Unknown is not flat; without a row the exit manager adopts what is still held.
            log.warning(
                "fill_after_close_unchecked",
                symbol=symbol,
                order_ref=ref,
                error=repr(exc),
                action="no row written; the exit manager adopts shares the broker holds",
            )
            return
        held = sum(
            float(p.position)
            for p in positions
            if p.contract.symbol == symbol and p.account in (self.session.account, "")
        )
        quantity, average = self._filled_so_far(ref, when)
        log.warning(
            "fill_after_close",
            symbol=symbol,
            order_ref=ref,
            filled=quantity,
            broker_position=held,
            action="active row for the shares still held" if held > 0 else "no row: flat",
        )
        if held > 0 and self.db.get_active_position(symbol) is None:
            self._open_or_grow(symbol, ref, min(quantity, held), average, when)

    # -- health -----------------------------------------------------------------------------
    def _log_health(self, phase: str) -> None:
        now = self.clock.epoch()
        fresh = 0
        for feed in self.feeds.values():
            snap = feed.snapshot()
            if not quote_is_stale(snap.quote_time, now, self.config):
                fresh += 1
        log.info(
            "health",
            phase=phase,
            connected=self.ib.isConnected(),
            ready=self.session.ready.is_set(),
            subscriptions=sum(1 for f in self.feeds.values() if f.bar_source != "none"),
            fresh_symbols=fresh,
            symbols=len(self.feeds),
            open_positions=len(self.db.get_active_positions()),
            working_entries=len(self.working),
            kill_switch=self.kill_switch(),
        )


def _evaluate_all(
    snaps: Sequence[SymbolSnapshot],
    book: BookState,
    now: datetime,
    session: Session | None,
    config: EntryConfig,
) -> list[EntryDecision]:
    return [evaluate_entry(s, book, now, session, config) for s in snaps]


# ---------------------------------------------------------------------------------------------
# Command line


def _symbols(raw: str) -> tuple[str, ...]:
    symbols = tuple(dict.fromkeys(s.strip().upper() for s in raw.split(",") if s.strip()))
    bad = [s for s in symbols if not is_ticker(s)]
    if not symbols or bad:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a comma-separated list of tickers such as AAPL,MSFT"
        )
    return symbols


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
    parser.add_argument("--symbols", type=_symbols, help="watchlist override, e.g. AAPL,MSFT")
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
        default=60.0,
        help="market seconds an unfilled entry works before it is cancelled (default 60)",
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preload_calendar()  # built while it connects and reconciles, not after (back sooner)
    # `kill -USR1 <pid>` prints every thread's stack: the way to see a hang in production.
    with contextlib.suppress(ValueError, OSError, AttributeError):  # stderr without a file
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"day_trader.py: error: {exc}", file=sys.stderr)
        return 2
    set_settings(settings)
    if settings.clock_file is not None:
        set_clock(MarketClock(FileTimeSource(settings.clock_file)))
    setup_logging(AGENT, level=settings.log_level)
    options = options_from_args(args, settings)
    try:
        return asyncio.run(_run(settings, options))
    except SettingsError as exc:  # paper/live mismatch found at connect
        print(f"day_trader.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a database that cannot be used, and the like: one line
        from observability import DatabaseError

        if isinstance(exc, DatabaseError):
            print(f"day_trader.py: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
