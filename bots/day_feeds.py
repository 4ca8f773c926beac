"""The day trader's market data I/O: subscriptions per watchlist symbol feeding the core.

Quotes (reqMktData) stamped with the market clock on arrival, 30-s bars from IB's 5-s
real-time bars (or keepUpToDate history when those are refused), indicators seeded from
today's 30-s history so there is no 7-minute warm-up; the pacer keeps history requests
inside IB's limits and backs off on 162 (failure mode 8). What the bars and quotes mean for
entries is the core's (trading.feed); this module moves them and logs what a day's analysis
needs to know (stale ticks, delayed data, refusals).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ib_async import IB, Contract

from core.clock import MarketClock
from core.logs import get_logger
from ib.market_data import (
    REALTIME_REFUSED,
    HistoricalPacer,
    MarketDataLine,
    bar_from_ib,
    entry_quote,
    new_history_bars,
    request_today_bars,
)
from store.bars import BarRecorder
from trading.entries import (
    DELAYED_DATA,
    STALE_QUOTE,
    WARMING_UP,
    EntryConfig,
    EntryCore,
    EntryDecision,
    quote_is_stale,
)
from trading.feed import SymbolFeed
from trading.indicators import BAR_SECONDS, Bar
from trading.model import DAY_TRADER, DELAYED_DATA_TYPES

log = get_logger(DAY_TRADER)

Spawn = Callable[[Coroutine[Any, Any, Any]], None]

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


@dataclass
class WatchedSymbol:
    """One watchlist symbol: the core's feed, its IB subscriptions, and what was logged
    about it (each change is logged once)."""

    feed: SymbolFeed
    line: MarketDataLine
    warmup_logged: bool = False
    data_type: int = 0  # IB marketDataType of the quotes last seen (0 = none yet)
    stale: bool = False  # no tick for the stale limit during regular hours (logged once)
    last_decision: tuple[bool, str | None, str] | None = None  # (enter, rule, reason) logged

    @property
    def symbol(self) -> str:
        return self.feed.symbol


class DayFeeds:
    """The watched symbols' market data: subscribe, seed, stream into the core, log."""

    def __init__(
        self,
        ib: IB,
        clock: MarketClock,
        config: EntryConfig,
        core: EntryCore,
        spawn: Spawn,
        stop_event: asyncio.Event,
        bar_event: asyncio.Event,
        connects: Callable[[], int],
        recorder: BarRecorder | None = None,
    ) -> None:
        self.ib = ib
        self.clock = clock
        self.config = config
        self.core = core
        self.spawn = spawn
        self.stop_event = stop_event
        self.bar_event = bar_event  # set on every new bar: the main loop analyses at once
        self.pacer = HistoricalPacer()
        self.watched: dict[str, WatchedSymbol] = {}
        self.data_notice: str | None = None  # delayed quotes: shown in every heartbeat
        self._req_errors: dict[int, tuple[int, str]] = {}
        self._connects = connects  # the broker session's connection count
        self.generation = -1  # the connection the subscriptions were made on
        self.recorder = recorder  # keeps every bar the feeds take, for replay and the backtest
        ib.pendingTickersEvent += self._on_tickers

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.watched

    def __len__(self) -> int:
        return len(self.watched)

    def symbols(self) -> list[str]:
        return list(self.watched)

    def get(self, symbol: str) -> WatchedSymbol | None:
        return self.watched.get(symbol)

    def last_prices(self) -> dict[str, float]:
        """Each watched symbol's last trade from our stream (nan ones left out)."""
        return {
            s: w.feed.quote.last
            for s, w in self.watched.items()
            if not math.isnan(w.feed.quote.last)
        }

    # -- subscriptions -------------------------------------------------------------------
    def add(self, contracts: Sequence[Contract]) -> None:
        """Watch these (qualified) contracts: subscribe and seed each from today's history."""
        for contract in contracts:
            feed = self.core.add_symbol(contract.symbol)
            if self.recorder is not None:
                feed.on_taken = self._record
            watched = WatchedSymbol(feed, MarketDataLine(contract.symbol, contract))
            self.watched[contract.symbol] = watched
            watched.line.subscribe(self.ib, self._on_realtime)
        self.generation = self._connects()
        for watched in list(self.watched.values()):
            if not watched.feed.seeded and watched.line.bar_source != "history":
                self.spawn(self._seed(watched))

    def _record(self, feed: SymbolFeed, bar: Bar) -> None:
        assert self.recorder is not None
        self.recorder.add(feed.symbol, bar, feed.quote.prev_close)

    def drop(self, symbol: str, why: str) -> None:
        """Stop watching `symbol`: its subscriptions cancelled, its data forgotten."""
        watched = self.watched.pop(symbol, None)
        if watched is None:
            return
        self.core.drop_symbol(symbol)
        watched.line.cancel(self.ib)
        log.info("feed_dropped", symbol=symbol, reason=why)

    def resubscribe_if_lost(self) -> None:
        """After a (re)connect: subscriptions of an earlier connection are made again."""
        if self.generation != self._connects() and self.watched:
            self.generation = self._connects()
            self.spawn(self.resubscribe())

    async def resubscribe(self) -> None:
        """Market data was lost (reconnect or 1101): subscribe again and re-seed the gap."""
        log.info("resubscribing", symbols=len(self.watched))
        for watched in self.watched.values():
            watched.line.restart(self.ib)
            watched.feed.unseed()
            watched.line.subscribe(self.ib, self._on_realtime)
        for watched in list(self.watched.values()):
            self.spawn(self._seed(watched))

    async def _seed(self, watched: WatchedSymbol, keep_up_to_date: bool = False) -> None:
        """Today's 30-s bars so indicators are warm at once; with keep_up_to_date, the stream."""
        feed, line = watched.feed, watched.line
        attempts = 0
        while not self.stop_event.is_set() and self.watched.get(feed.symbol) is watched:
            attempts += 1
            bars = await request_today_bars(
                self.ib, line.contract, self.clock.now(), keep_up_to_date, self.pacer
            )
            error = self._req_errors.pop(getattr(bars, "reqId", -1), None)
            if error is not None and error[0] == 162 and "pacing" in error[1].lower():
                pause = self.pacer.on_pacing_violation()
                log.warning("history_pacing", symbol=feed.symbol, pause_s=pause, attempt=attempts)
                continue
            if error is not None or (not bars and attempts < 3):
                if error is not None:
                    line.no_data = f"{error[0]}: {error[1]}"
                    log.warning("history_refused", symbol=feed.symbol, code=error[0], text=error[1])
                    return
                await asyncio.sleep(1.0)
                continue
            self.pacer.on_success()
            now = self.clock.epoch()
            history = [bar_from_ib(b) for b in bars]
            # The last one may still be in progress.
            feed.seed([b for b in history if b.time + BAR_SECONDS <= now])
            if keep_up_to_date:
                line.follow_history(bars, self._on_history)
            log.info(
                "seeded",
                symbol=feed.symbol,
                bars=len(bars),
                source=line.bar_source,
                warm=feed.indicators.warmup().ready,
            )
            self.bar_event.set()
            return

    # -- the streams ---------------------------------------------------------------------
    def _on_realtime(self, line: MarketDataLine, bars: Any) -> None:
        watched = self.watched.get(line.symbol)
        for bar in line.realtime_bars(bars):
            if watched is not None and watched.line is line:
                watched.feed.on_live_bar(bar)
                self.bar_event.set()

    def _on_history(self, line: MarketDataLine, bars: Any) -> None:
        watched = self.watched.get(line.symbol)
        if watched is None or watched.line is not line:
            return
        for bar in new_history_bars(bars, watched.feed.last_bar_time):
            watched.feed.on_bar(bar)
            self.bar_event.set()

    def flush_bars(self, now: float) -> None:
        """Close on the clock the 30-s windows whose last 5-s bar never came."""
        for watched in self.watched.values():
            bar = watched.line.flush_due(now)
            if bar is not None:
                watched.feed.on_live_bar(bar)

    def _on_tickers(self, tickers: Any) -> None:
        for ticker in tickers:
            watched = self.watched.get(getattr(ticker.contract, "symbol", ""))
            if watched is not None and watched.line.ticker is ticker:
                # IB's tick times are wall time; a simulated day needs the market clock's.
                watched.feed.on_quote(entry_quote(watched.symbol, ticker, self.clock.epoch()))
                self._note_data_type(watched)

    # -- what the analysis needs logged --------------------------------------------------
    def watch_quotes(self, now: float) -> None:
        """Log a symbol whose ticks stopped for the stale limit (and again when they resume):
        its entries are refused, and with its bars stopped too no decision would say why."""
        for watched in self.watched.values():
            quote_time = watched.feed.quote_time
            stale = quote_is_stale(quote_time, now, self.config)
            if stale == watched.stale:
                continue
            watched.stale = stale
            if stale:
                age = now - quote_time  # nan: never ticked
                log.warning(
                    "market_data_stale",
                    symbol=watched.symbol,
                    last_tick_age_s=round(age, 1) if math.isfinite(age) else None,
                    reason=STALE_QUOTE,
                    action="no entries on this symbol until its ticks resume",
                )
            else:
                log.info("market_data_fresh", symbol=watched.symbol)

    def fresh_symbols(self, now: float) -> int:
        """How many symbols have a quote within the stale limit."""
        return sum(
            not quote_is_stale(w.feed.quote_time, now, self.config) for w in self.watched.values()
        )

    def subscriptions(self) -> int:
        return sum(1 for w in self.watched.values() if w.line.bar_source != "none")

    def _note_data_type(self, watched: WatchedSymbol) -> None:
        """Log when a symbol's quotes turn delayed (and live again). Entries refuse delayed
        data unless ALLOW_DELAYED_DATA; without a subscription IB sends no bars either, so
        no entry decision is ever logged to say so."""
        data_type = watched.feed.quote.data_type
        previous, watched.data_type = watched.data_type, data_type
        if data_type == previous:
            return
        notice = delayed_data_notice(
            (w.data_type for w in self.watched.values()), self.config.allow_delayed_data
        )
        if notice != self.data_notice:
            self.data_notice = notice
            if notice is not None:  # one line saying why and what turns entries on
                log.warning("delayed_market_data", detail=notice, reason=DELAYED_DATA)
            else:
                log.info("market_data_live_again")
        if data_type in DELAYED_DATA_TYPES:
            allowed = self.config.allow_delayed_data
            log.info(  # per symbol; the WARNING above says it once for all
                "market_data_delayed",
                symbol=watched.symbol,
                data_type=data_type,
                reason=DELAYED_DATA,
                action="entries allowed (ALLOW_DELAYED_DATA)"
                if allowed
                else "no entries on this symbol until its data is live",
            )
        elif previous in DELAYED_DATA_TYPES:
            log.info("market_data_live", symbol=watched.symbol, data_type=data_type)

    def record_decision(self, decision: EntryDecision) -> None:
        """Log one entry decision: INFO when it changed for the symbol (and every enter),
        DEBUG while it holds; the first warm-up wait once per symbol."""
        watched = self.watched.get(decision.symbol)
        if decision.reason == WARMING_UP and watched is not None and not watched.warmup_logged:
            watched.warmup_logged = True
            warm = watched.feed.indicators.warmup()
            log.info(
                "warming_up",
                symbol=decision.symbol,
                rsi_bars=int(warm.rsi_bars),
                atr_bars=int(warm.atr_bars),
                vwap_has_volume=bool(warm.vwap_has_volume),
            )
        # A symbol skipped for the same reason bar after bar is news once.
        outcome = (decision.enter, decision.rule, decision.reason)
        changed = watched is None or decision.enter or watched.last_decision != outcome
        if watched is not None:
            watched.last_decision = outcome
        (log.info if changed else log.debug)("entry_decision", **decision.log_fields())

    def on_ib_error(self, req_id: int, code: int, message: str) -> None:
        """Keep request errors for the history seed; real-time bars refused: use history."""
        if req_id < 0:
            return
        self._req_errors[req_id] = (code, message)
        if len(self._req_errors) > 1000:
            self._req_errors.pop(next(iter(self._req_errors)))
        if code in REALTIME_REFUSED:
            for watched in self.watched.values():
                line = watched.line
                if line.realtime is not None and line.realtime.reqId == req_id:
                    log.warning(
                        "realtime_bars_refused",
                        symbol=watched.symbol,
                        code=code,
                        action="using historical bars with keepUpToDate",
                    )
                    line.refuse_realtime(self.ib)
                    self.spawn(self._seed(watched, keep_up_to_date=True))
