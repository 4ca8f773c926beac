"""Market data from IB for the entry side: quotes, 30-s bars and IB's history pacing.

The adapter between ib_async's objects (Ticker, RealTimeBarList, BarDataList) and the pure
core's records (trading.model.Quote, trading.indicators.Bar):
  - quotes: reqMktData tickers read into Quote records (unset prices become nan);
  - bars: IB's 5-s real-time bars aggregated into clock-aligned 30-s bars, or a
    keepUpToDate 30-s history list when real-time bars are refused; today's history from
    04:00 seeds the indicators;
  - pacing: IB's small-bar history limits, with a growing pause after a 162 (failure mode 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

from ib_async import IB, Contract, Stock

from ib.convert import ib_price
from trading.indicators import IB_REALTIME_BAR_SECONDS, Bar, BarAggregator
from trading.model import Quote

# IB refuses real-time bars for these (no subscription / permissions): use history instead.
REALTIME_REFUSED = frozenset({162, 354, 420, 10089, 10168})
# reqMarketDataType 3: live where subscribed, else delayed (stamped type 3) instead of no data.
LIVE_ELSE_DELAYED = 3
HISTORY_BAR_SIZE = "30 secs"


# A stock's contract as the gateway qualified it (conId set): a bot keeps it only to hand
# back to the adapter (subscriptions, history) and reads its `symbol`.
StockContract: TypeAlias = Contract


async def qualified_stocks(
    ib: IB, symbols: Sequence[str], timeout: float
) -> list[tuple[str, StockContract | None]]:
    """(symbol, its SMART-routed US stock contract) for each of `symbols`, the contract None
    when the gateway does not know the symbol. Raises TimeoutError after `timeout` seconds."""
    contracts = [Stock(s, "SMART", "USD") for s in symbols]
    qualified = await asyncio.wait_for(ib.qualifyContractsAsync(*contracts), timeout)
    return [
        (symbol, contract if contract is not None and getattr(contract, "conId", 0) else None)
        for symbol, contract in zip(symbols, qualified, strict=True)
    ]


def entry_quote(symbol: str, ticker: Any, received_at: float) -> Quote:
    """The entry side's quote of an ib_async Ticker, stamped `received_at` (market epoch of
    its arrival: IB's tick times are wall time); tick 9, the close, is the previous close.
    Unset prices are nan, an unknown market data type 0."""
    return Quote(
        symbol=symbol,
        last=ib_price(getattr(ticker, "last", math.nan)),
        bid=ib_price(getattr(ticker, "bid", math.nan)),
        ask=ib_price(getattr(ticker, "ask", math.nan)),
        time=received_at,
        data_type=int(getattr(ticker, "marketDataType", 0) or 0),
        prev_close=ib_price(getattr(ticker, "close", math.nan)),
    )


def bar_from_ib(b: Any) -> Bar:
    """A trading.indicators.Bar from ib_async's BarData (formatDate=2) or RealTimeBar."""
    when = b.time if hasattr(b, "open_") else b.date
    opened = b.open_ if hasattr(b, "open_") else b.open
    stamp = when.timestamp() if isinstance(when, datetime) else float(when)
    return Bar(stamp, float(opened), float(b.high), float(b.low), float(b.close), float(b.volume))


def history_request(now: datetime) -> tuple[str, str]:
    """Duration and end for today's 30-s bars up to `now`: from 04:00 (IB caps small bars
    at 8 h)."""
    start = now.replace(hour=4, minute=0, second=0, microsecond=0)
    seconds = int(min(max((now - start).total_seconds(), 60.0), 28_800.0))
    return f"{seconds} S", ""


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
# One symbol's subscriptions


@dataclass
class MarketDataLine:
    """One symbol's IB market data: its quote ticker and its bar stream, either 5-s
    real-time bars (aggregated here into 30-s bars) or a keepUpToDate 30-s history list."""

    symbol: str
    contract: Contract
    aggregator: BarAggregator = field(default_factory=BarAggregator)
    ticker: Any = None
    realtime: Any = None  # RealTimeBarList
    history: Any = None  # BarDataList with keepUpToDate
    bar_source: str = "none"  # "realtime", "history" or "none"
    no_data: str | None = None  # why IB refused this symbol's history

    def subscribe(self, ib: IB, on_bars: Callable[[MarketDataLine, Any], None]) -> None:
        """Quotes and 5-s real-time bars; `on_bars(line, bars)` on each real-time update."""
        self.ticker = ib.reqMktData(self.contract, "", False, False)
        self.realtime = ib.reqRealTimeBars(self.contract, IB_REALTIME_BAR_SECONDS, "TRADES", False)
        self.bar_source = "realtime"
        self.realtime.updateEvent += lambda bars, has_new: on_bars(self, bars)

    def restart(self, ib: IB) -> None:
        """Drop the quote and real-time subscriptions and the partial 30-s bar (market data
        was lost); `subscribe` again afterwards."""
        with contextlib.suppress(Exception):
            ib.cancelMktData(self.contract)
            if self.realtime is not None:
                ib.cancelRealTimeBars(self.realtime)
        self.aggregator = BarAggregator()
        self.history = None

    def cancel(self, ib: IB) -> None:
        """Cancel every subscription of this symbol (it left the watchlist)."""
        with contextlib.suppress(Exception):
            if self.ticker is not None:
                ib.cancelMktData(self.contract)
            if self.realtime is not None:
                ib.cancelRealTimeBars(self.realtime)
            if self.history is not None:
                ib.cancelHistoricalData(self.history)

    def refuse_realtime(self, ib: IB) -> None:
        """IB refused real-time bars: cancel them; history with keepUpToDate takes over."""
        with contextlib.suppress(Exception):
            ib.cancelRealTimeBars(self.realtime)
        self.realtime = None
        self.bar_source = "none"

    def follow_history(self, bars: Any, on_bars: Callable[[MarketDataLine, Any], None]) -> None:
        """The keepUpToDate history list is this symbol's bar stream from now on."""
        self.history = bars
        self.bar_source = "history"
        bars.updateEvent += lambda items, has_new: on_bars(self, items)

    def realtime_bars(self, bars: Any) -> list[Bar]:
        """The 30-s bars completed by the newest 5-s bar of a real-time update."""
        if not bars:
            return []
        completed = self.aggregator.add(bar_from_ib(bars[-1]))
        if len(bars) > 200:  # the library keeps every 5-s bar; we only need the newest
            del bars[:-20]
        return completed

    def flush_due(self, now_epoch: float) -> Bar | None:
        """A 30-s window whose last 5-s bar never came, closed on the clock; or None."""
        if self.bar_source != "realtime":
            return None
        return self.aggregator.flush_if_due(now_epoch - IB_REALTIME_BAR_SECONDS)


def new_history_bars(bars: Any, after: float) -> list[Bar]:
    """The completed bars of a keepUpToDate history list newer than `after`, oldest first
    (the list's last bar is in progress)."""
    fresh: list[Bar] = []
    for b in reversed(bars[:-1]):
        bar = bar_from_ib(b)
        if bar.time <= after:
            break
        fresh.append(bar)
    return fresh[::-1]


async def request_today_bars(
    ib: IB, contract: Contract, now: datetime, keep_up_to_date: bool, pacer: HistoricalPacer
) -> Any:
    """Today's 30-s TRADES bars of `contract` up to `now` (BarDataList), paced."""
    duration, end = history_request(now)
    key = (contract.symbol, "TRADES", end, duration, HISTORY_BAR_SIZE, keep_up_to_date)
    await pacer.acquire(key, contract.symbol)
    return await ib.reqHistoricalDataAsync(
        contract,
        end,
        duration,
        HISTORY_BAR_SIZE,
        "TRADES",
        False,
        formatDate=2,
        keepUpToDate=keep_up_to_date,
        timeout=30.0,
    )
