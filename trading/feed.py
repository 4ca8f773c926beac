"""One symbol's market data as the entry rules see it: bars -> indicators -> snapshot.

Pure: fed completed 30-s bars and quotes (plain records) with the market time they arrived,
never reading a clock or a broker object, so the live day trader, the simulator and a replay
build the same snapshot from the same bars.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from typing import Protocol

from core.clock import NEW_YORK, Session
from trading.indicators import Bar, StreamingIndicators
from trading.model import Quote


@dataclass(frozen=True)
class SymbolSnapshot:
    """What the trader knows about one symbol at one moment; nan = unknown.

    `close` is the latest completed 30-s bar's close: the price the rules compare with VWAP,
    the one the indicators were computed on. `last` (the ticker's last trade) only says a
    quote is there. `quote_time` is the market-clock epoch of the last tick the trader
    received (stamped on arrival, since IB's tick times are wall time); `bar_time` the start
    of the latest completed 30-s bar. `rsi_bars` / `atr_bars`: bars each indicator still needs.
    """

    symbol: str
    last: float = math.nan
    close: float = math.nan
    bid: float = math.nan
    ask: float = math.nan
    vwap: float = math.nan
    rsi: float = math.nan
    atr_pct: float = math.nan
    prev_close: float = math.nan
    gap_pct: float = math.nan
    market_data_type: int = 0  # 0 = not known yet
    quote_time: float = math.nan
    bar_time: float = math.nan
    rsi_bars: int = 14
    atr_bars: int = 14
    vwap_has_volume: bool = False


def gap_percent(price: float, prev_close: float) -> float:
    """Returns the percent change of `price` from the previous close (nan when unknown)."""
    if not (prev_close > 0 and price > 0):
        return math.nan
    return (price - prev_close) / prev_close * 100.0


class SessionCalendar(Protocol):
    """Where a day's regular session comes from (core.clock.MarketClock is one)."""

    def session(self, day: date) -> Session | None: ...


# Before the first quote: nothing known, data type 0 (not known yet).
NO_QUOTE = Quote("", math.nan, math.nan, math.nan, math.nan, 0)


@dataclass(slots=True)  # attribute access on every bar of every symbol
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
        price VWAP and RSI were computed on, not the quote's last, which arrives with the
        bar and is a later trade (seconds later at speed). The entry limit is priced from
        the ask when the order is sent.
    """

    symbol: str
    calendar: SessionCalendar
    indicators: StreamingIndicators = field(default_factory=StreamingIndicators)
    quote: Quote = NO_QUOTE  # the latest; its time is when it arrived (market clock)
    last_bar_time: float = -math.inf
    premarket_close: float = math.nan  # the last pre-market trade: the gap reference
    new_bar: bool = False  # a regular-hours bar came since the last decision
    seeded: bool = False
    held_back: list[Bar] = field(default_factory=list)
    # Sees every bar the feed takes, as taken (the day trader records them for replay).
    on_taken: Callable[[SymbolFeed, Bar], None] | None = None
    # The New York day of the last bar with volume and its session's hours, as epochs.
    _day_start: float = field(default=math.inf, init=False, repr=False)
    _day_end: float = field(default=-math.inf, init=False, repr=False)
    _open_epoch: float = field(default=-math.inf, init=False, repr=False)
    _close_epoch: float = field(default=-math.inf, init=False, repr=False)

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

    def unseed(self) -> None:
        """Market data was lost: stream bars wait again for a fresh history seed."""
        self.seeded = False

    def on_bar(self, bar: Bar) -> bool:
        """Take one completed 30-s bar (see the class docstring for which bars count);
        False when it is not newer than the last one."""
        if bar.time <= self.last_bar_time:
            return False
        self.last_bar_time = bar.time  # the feed is alive, traded or not
        if self.on_taken is not None:
            self.on_taken(self, bar)
        if not bar.volume > 0:
            return True
        if not self._day_start <= bar.time < self._day_end:
            self._learn_day(bar.time)
        if bar.time < self._open_epoch:
            self.premarket_close = bar.close
        elif bar.time < self._close_epoch:
            self.indicators.add(bar)
            self.new_bar = True
        return True

    def _learn_day(self, time: float) -> None:
        """The New York day of `time` and its session's open and close as epochs, looked up
        once a day instead of once a bar (no session: no bar of the day counts)."""
        local = datetime.fromtimestamp(time, NEW_YORK)
        midnight = datetime(local.year, local.month, local.day, tzinfo=NEW_YORK)
        following = midnight.date() + timedelta(days=1)
        self._day_start = midnight.timestamp()
        self._day_end = datetime.combine(following, clock_time(), NEW_YORK).timestamp()
        session = self.calendar.session(local.date())
        if session is None:
            self._open_epoch = self._close_epoch = -math.inf
        else:
            self._open_epoch = session.open.timestamp()
            self._close_epoch = session.close.timestamp()

    def on_quote(self, quote: Quote) -> None:
        """The latest quote; `quote.time` is the market time it arrived (broker tick times
        are wall time; a simulated day needs the market clock's)."""
        self.quote = quote

    @property
    def quote_time(self) -> float:
        """Market epoch the last quote arrived (nan: none yet)."""
        return self.quote.time

    def gap_pct(self) -> float:
        """Pre-market gap: the last pre-market trade vs the previous close (0 without a
        pre-market trade; nan until the previous close is known)."""
        prev_close = self.quote.prev_close
        reference = prev_close if math.isnan(self.premarket_close) else self.premarket_close
        return gap_percent(reference, prev_close)

    def snapshot(self) -> SymbolSnapshot:
        """What the rules see of this symbol now."""
        quote = self.quote
        ind = self.indicators.last
        warm = self.indicators.warmup()
        return SymbolSnapshot(
            symbol=self.symbol,
            last=quote.last,
            close=ind.close if ind else math.nan,
            bid=quote.bid,
            ask=quote.ask,
            vwap=ind.vwap if ind else math.nan,
            rsi=ind.rsi if ind else math.nan,
            atr_pct=ind.atr_pct if ind else math.nan,
            prev_close=quote.prev_close,
            gap_pct=self.gap_pct(),
            market_data_type=quote.data_type,
            quote_time=self.quote_time,
            bar_time=self.last_bar_time if self.last_bar_time > 0 else math.nan,
            rsi_bars=int(warm.rsi_bars),
            atr_bars=int(warm.atr_bars),
            vwap_has_volume=bool(warm.vwap_has_volume),
        )
