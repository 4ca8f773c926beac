"""Market data subscriptions: streaming/snapshot ticks, historical bars, real-time bars, pacing.

Ticks are encoded once per quote change (`messages.TickTail` style: everything after the
request id) and then framed per subscriber, so cost per extra client is one small join.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.clock import NEW_YORK
from ibsim import messages as msg
from ibsim.requests import HistoricalDataRequest, MktDataRequest, RealTimeBarsRequest, RequestError

log = logging.getLogger("ibsim.marketdata")

LIVE, FROZEN, DELAYED, DELAYED_FROZEN = 1, 2, 3, 4
# (live id, delayed id) per quote field
_BID, _ASK, _LAST, _HIGH, _LOW, _CLOSE, _OPEN = (
    (1, 66),
    (2, 67),
    (4, 68),
    (6, 72),
    (7, 73),
    (9, 75),
    (14, 76),
)
_VOLUME = (8, 74)
_LAST_TIME = (45, 88)

BAR_SIZES = {
    "1 secs": 1, "5 secs": 5, "10 secs": 10, "15 secs": 15, "30 secs": 30,
    "1 min": 60, "2 mins": 120, "3 mins": 180, "5 mins": 300, "10 mins": 600,
    "15 mins": 900, "20 mins": 1200, "30 mins": 1800, "1 hour": 3600, "2 hours": 7200,
    "3 hours": 10800, "4 hours": 14400, "8 hours": 28800, "1 day": 86400,
    "1 week": 86400, "1 month": 86400,
}  # fmt: skip
_MARKET_BAR_SECONDS = (86400, 3600, 1800, 900, 300, 180, 120, 60, 30, 15, 10, 5, 1)
_DURATION_UNITS = {"S": 1, "D": 86400, "W": 7 * 86400, "M": 30 * 86400, "Y": 365 * 86400}
_NO_PERMISSION = "No market data permissions for {exchange} STK"
SMALL_BAR_SECONDS = 30


class Subscriber(Protocol):
    """The side of a client session market data writes to."""

    @property
    def receiving(self) -> bool: ...

    def push(self, data: bytes) -> None: ...


@dataclass(eq=False)
class TickSub:
    session: Subscriber
    req_id: int
    symbol: str
    delayed: bool
    rid: bytes


@dataclass(eq=False)
class BarSub:
    session: Subscriber
    req_id: int
    symbol: str
    realtime: bool
    bar_seconds: int
    use_rth: bool
    format_date: int
    current_start: float = -1.0


@dataclass(frozen=True)
class Hours:
    open: float
    close: float


@dataclass
class Pacer:
    """IB's small-bar historical pacing rules, counted in real (monotonic) seconds."""

    clock: Callable[[], float] = time.monotonic
    history: deque[tuple[float, tuple]] = field(default_factory=deque)

    def check(self, key: tuple, contract_key: tuple) -> None:
        now = self.clock()
        while self.history and now - self.history[0][0] > 600:
            self.history.popleft()
        identical = any(k == key and now - t < 15 for t, k in self.history)
        same_contract = sum(1 for t, k in self.history if k[:2] == contract_key and now - t < 2)
        self.history.append((now, key))
        if identical or same_contract >= 5 or len(self.history) > 60:
            raise RequestError(
                -1,
                162,
                "Historical Market Data Service error message:Historical data request pacing violation",
            )


class MarketData:
    def __init__(self, market, symbols: dict, hours: Hours, subscribed: bool, pacing: bool,  # type: ignore[no-untyped-def]
                 delay_s: float) -> None:  # fmt: skip
        self.market = market
        self.symbols = symbols
        self.hours = hours
        self.subscribed = subscribed
        self.delay_s = delay_s  # how old a delayed quote is (simulated seconds)
        self._prev_delayed: dict[str, object] = {}
        self.pacing = Pacer() if pacing else None
        self.tick_subs: dict[str, list[TickSub]] = {}
        self.bar_subs: list[BarSub] = []
        self.stopped: set[str] = set()
        self.force_pacing_violation: set[int | None] = set()  # fault hook: client ids
        self._prev: dict[str, object] = {}

    # -- ticks ------------------------------------------------------------------------
    def request_ticks(
        self, session: Subscriber, req: MktDataRequest, symbol: str, data_type: int
    ) -> list[bytes]:
        """Messages answering reqMktData; registers a stream unless it is a snapshot."""
        spec = self.symbols[symbol]
        wants_delayed = data_type in (DELAYED, DELAYED_FROZEN)
        if not self.subscribed and not wants_delayed:
            raise RequestError(
                req.req_id,
                354,
                "Requested market data is not subscribed. Check API status by selecting the "
                "Account menu then under Management choose Market Data Subscription Manager "
                f"and/or Delayed Market Data.Delayed market data is available.{symbol} "
                f"{spec.primary_exchange}/TOP/ALL",
            )
        delayed = not self.subscribed
        out: list[bytes] = []
        if delayed:
            out.append(
                msg.error(
                    req.req_id,
                    10167,
                    "Requested market data is not subscribed. Displaying delayed market data.",
                )
            )
        out.append(msg.market_data_type(req.req_id, DELAYED if delayed else LIVE))
        out.append(msg.tick_req_params(req.req_id, spec.min_tick))
        rid = msg.req_id_field(req.req_id)
        quote = self._quote(symbol, delayed)
        out += [msg.with_req_id(h, rid, t) for h, t in _tails(quote, None, delayed)]
        if req.snapshot or req.regulatory_snapshot:
            out.append(msg.tick_snapshot_end(req.req_id))
            return out
        self.cancel_ticks(session, req.req_id)
        self.tick_subs.setdefault(symbol, []).append(
            TickSub(session, req.req_id, symbol, delayed, rid)
        )
        return out

    def cancel_ticks(self, session: Subscriber, req_id: int) -> None:
        for subs in self.tick_subs.values():
            subs[:] = [s for s in subs if not (s.session is session and s.req_id == req_id)]

    def refresh(self, session: Subscriber) -> None:
        """Re-send full quotes to a session (after 1102 or a resumed symbol)."""
        for symbol, subs in self.tick_subs.items():
            for sub in subs:
                if sub.session is session:
                    quote = self._quote(symbol, sub.delayed)
                    for h, t in _tails(quote, None, sub.delayed):
                        session.push(msg.with_req_id(h, sub.rid, t))

    def drop_session(self, session: Subscriber) -> None:
        for subs in self.tick_subs.values():
            subs[:] = [s for s in subs if s.session is not session]
        self.bar_subs = [b for b in self.bar_subs if b.session is not session]

    def on_quotes(self, quotes: list) -> None:  # list[Quote]
        for quote in quotes:
            symbol = quote.symbol
            prev = self._prev.get(symbol)
            self._prev[symbol] = quote
            subs = self.tick_subs.get(symbol)
            if not subs or symbol in self.stopped:
                continue
            live: list[tuple[bytes, bytes]] | None = None
            for sub in subs:
                if not sub.session.receiving or sub.delayed:
                    continue  # delayed streams follow the clock: on_delayed
                if live is None:
                    live = _tails(quote, prev, False)
                if live:
                    rid = sub.rid
                    sub.session.push(b"".join([msg.with_req_id(h, rid, t) for h, t in live]))

    def on_delayed(self, now: float) -> None:
        """Stream to delayed subscribers what the market did `delay_s` ago."""
        if self.subscribed:
            return  # delayed streams exist only without a subscription
        for symbol, subs in self.tick_subs.items():
            receivers = [s for s in subs if s.delayed and s.session.receiving]
            if not receivers or symbol in self.stopped:
                continue
            quote = self.market.quote_at(symbol, now - self.delay_s)
            prev = self._prev_delayed.get(symbol)
            self._prev_delayed[symbol] = quote
            tails = _tails(quote, prev, True)
            for sub in receivers if tails else ():
                rid = sub.rid
                sub.session.push(b"".join([msg.with_req_id(h, rid, t) for h, t in tails]))

    def _quote(self, symbol: str, delayed: bool):  # type: ignore[no-untyped-def]
        if delayed:
            return self.market.quote_at(symbol, self.market.time - self.delay_s)
        return self.market.quote(symbol)

    def resume(self, symbol: str) -> None:
        self.stopped.discard(symbol)
        for sub in self.tick_subs.get(symbol, ()):
            if sub.session.receiving:
                quote = self._quote(symbol, sub.delayed)
                for h, t in _tails(quote, None, sub.delayed):
                    sub.session.push(msg.with_req_id(h, sub.rid, t))

    # -- historical bars ----------------------------------------------------------------
    def historical(
        self,
        session: Subscriber,
        client_id: int,
        req: HistoricalDataRequest,
        symbol: str,
        now: float,
    ) -> list[bytes]:
        """historicalData for a request (and a keepUpToDate registration). Raises RequestError."""
        spec = self.symbols[symbol]
        if not self.subscribed:
            raise RequestError(
                req.req_id,
                162,
                "Historical Market Data Service error message:"
                + _NO_PERMISSION.format(exchange=spec.primary_exchange),
            )
        bar_seconds = BAR_SIZES.get(req.bar_size.strip())
        if bar_seconds is None:
            raise RequestError(
                req.req_id,
                321,
                f"Error validating request.-'bP' : cause - Historical data bar size setting is invalid: {req.bar_size!r}",
            )
        duration = _parse_duration(req.req_id, req.duration)
        if req.keep_up_to_date and req.end.strip():
            raise RequestError(
                req.req_id,
                321,
                "Error validating request.-'bO' : cause - End date not supported with live updates",
            )
        end = _parse_end(req.req_id, req.end, now)
        forced = client_id in self.force_pacing_violation or None in self.force_pacing_violation
        if forced:
            self.force_pacing_violation.discard(client_id)
            self.force_pacing_violation.discard(None)
        try:
            if forced:
                raise RequestError(
                    -1,
                    162,
                    "Historical Market Data Service error message:Historical data request pacing violation",
                )
            if self.pacing is not None and bar_seconds <= SMALL_BAR_SECONDS:
                key = (symbol, req.what_to_show, req.end, req.duration, req.bar_size, req.use_rth)
                self.pacing.check(key, key[:2])
        except RequestError as exc:
            raise RequestError(req.req_id, exc.code, exc.text) from None
        start = end - duration
        bars = self.bars(symbol, start, min(end, now), bar_seconds, req.use_rth)
        rows = [_row(b, bar_seconds, req.format_date) for b in bars]
        out = [msg.historical_data(req.req_id, _stamp(start), _stamp(end), rows)]
        if req.keep_up_to_date:
            sub = BarSub(
                session, req.req_id, symbol, False, bar_seconds, req.use_rth, req.format_date
            )
            sub.current_start = bars[-1].time if bars else -1.0
            self.bar_subs.append(sub)
        return out

    def bars(self, symbol: str, start: float, end: float, bar_seconds: int, use_rth: bool) -> list:
        if use_rth:
            start, end = max(start, self.hours.open), min(end, self.hours.close)
        if end <= start:
            return []
        if bar_seconds in _MARKET_BAR_SECONDS:
            return self.market.bars(symbol, start, end, bar_seconds)
        base = next(s for s in _MARKET_BAR_SECONDS if bar_seconds % s == 0)
        return _aggregate(self.market.bars(symbol, start, end, base), bar_seconds)

    def realtime(self, session: Subscriber, req: RealTimeBarsRequest, symbol: str) -> None:
        spec = self.symbols[symbol]
        if not self.subscribed:
            raise RequestError(
                req.req_id,
                420,
                "Invalid Real-time Query:" + _NO_PERMISSION.format(exchange=spec.primary_exchange),
            )
        self.bar_subs.append(BarSub(session, req.req_id, symbol, True, 5, req.use_rth, 2))

    def cancel_bars(self, session: Subscriber, req_id: int) -> None:
        self.bar_subs = [
            b for b in self.bar_subs if not (b.session is session and b.req_id == req_id)
        ]

    def on_time(self, before: float, now: float) -> None:
        """Emit real-time bars for every 5-s boundary crossed in (before, now] and bar updates."""
        first = math.floor(before / 5) * 5 + 5
        if first > now or not self.bar_subs:
            return
        boundaries = range(int(first), int(now) + 1, 5)
        if len(boundaries) > 120:  # a stalled loop: skip ahead rather than flood clients
            boundaries = boundaries[-120:]
        for sub in list(self.bar_subs):
            if not sub.session.receiving or sub.symbol in self.stopped:
                continue
            if sub.realtime:
                for b in boundaries:
                    self._send_realtime_bar(sub, b)
            else:
                self._send_bar_update(sub, now)

    def _send_realtime_bar(self, sub: BarSub, boundary: int) -> None:
        start = boundary - 5
        if sub.use_rth and not self.hours.open <= start < self.hours.close:
            return
        bars = self.market.bars(sub.symbol, start, boundary, 5)
        if bars:
            b = bars[-1]
            row = (start, b.open, b.high, b.low, b.close, b.volume, b.wap, b.count)
        else:  # IB still sends a bar with no trades: flat at the previous close, no volume
            # Only prices from before the bar's end: the current last may be seconds later.
            close = self.market.last_trade_before(sub.symbol, start)
            row = (start, close, close, close, close, 0, close, 0)
        sub.session.push(msg.realtime_bar(sub.req_id, row))

    def _send_bar_update(self, sub: BarSub, now: float) -> None:
        size = sub.bar_seconds
        anchor = _day_anchor(now) if size >= 86400 else 0.0
        current = anchor + math.floor((now - anchor) / size) * size
        if sub.current_start >= 0 and current > sub.current_start:
            done = self.bars(
                sub.symbol, sub.current_start, sub.current_start + size, size, sub.use_rth
            )
            if done:
                sub.session.push(
                    msg.historical_data_update(sub.req_id, _row(done[-1], size, sub.format_date))
                )
        sub.current_start = current
        bars = self.bars(sub.symbol, current, now + 1, size, sub.use_rth)
        if bars:
            sub.session.push(
                msg.historical_data_update(sub.req_id, _row(bars[-1], size, sub.format_date))
            )


def _tails(quote, prev, delayed: bool) -> list[tuple[bytes, bytes]]:  # type: ignore[no-untyped-def]
    """(head, tail) pairs for the fields of `quote` that differ from `prev` (all if None)."""
    i = 1 if delayed else 0
    out: list[tuple[bytes, bytes]] = []
    price_head, size_head, string_head = (
        msg.TICK_PRICE_HEAD,
        msg.TICK_SIZE_HEAD,
        msg.TICK_STRING_HEAD,
    )
    if prev is None or quote.bid != prev.bid or quote.bid_size != prev.bid_size:
        out.append((price_head, msg.tick_price_tail(_BID[i], quote.bid, quote.bid_size)))
    if prev is None or quote.ask != prev.ask or quote.ask_size != prev.ask_size:
        out.append((price_head, msg.tick_price_tail(_ASK[i], quote.ask, quote.ask_size)))
    if prev is None or quote.volume != prev.volume or quote.last != prev.last:
        if quote.last > 0:
            out.append((price_head, msg.tick_price_tail(_LAST[i], quote.last, quote.last_size)))
            out.append((string_head, msg.tick_string_tail(_LAST_TIME[i], str(int(quote.time)))))
        out.append((size_head, msg.tick_size_tail(_VOLUME[i], quote.volume)))
    for ids, name in ((_HIGH, "high"), (_LOW, "low"), (_OPEN, "open")):
        value = getattr(quote, name)
        if value == value and (prev is None or value != getattr(prev, name)):
            out.append((price_head, msg.tick_price_tail(ids[i], value, 0)))
    if prev is None and quote.prev_close > 0:
        out.append((price_head, msg.tick_price_tail(_CLOSE[i], quote.prev_close, 0)))
    return out


def _aggregate(bars: list, size: int) -> list:
    from ibsim.market import Bar

    out: list = []
    for b in bars:
        start = math.floor(b.time / size) * size
        if out and out[-1].time == start:
            p = out[-1]
            volume = p.volume + b.volume
            wap = (p.wap * p.volume + b.wap * b.volume) / volume if volume else b.wap
            out[-1] = Bar(start, p.open, max(p.high, b.high), min(p.low, b.low), b.close,
                          volume, round(wap, 6), p.count + b.count)  # fmt: skip
        else:
            out.append(Bar(start, b.open, b.high, b.low, b.close, b.volume, b.wap, b.count))
    return out


def _row(bar, bar_seconds: int, format_date: int) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    if bar_seconds >= 86400:
        date = datetime.fromtimestamp(bar.time + 43200, NEW_YORK).strftime("%Y%m%d")
    elif format_date == 2:
        date = str(int(bar.time))
    else:
        date = msg.ib_time(bar.time)
    return (date, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.wap, bar.count)


def _day_anchor(epoch: float) -> float:
    day = datetime.fromtimestamp(epoch, NEW_YORK)
    return day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, NEW_YORK).strftime("%Y%m%d %H:%M:%S")


def _parse_duration(req_id: int, text: str) -> float:
    parts = text.strip().split()
    try:
        count, unit = int(parts[0]), parts[1].upper()
        if count <= 0 or unit not in _DURATION_UNITS:
            raise ValueError
    except (ValueError, IndexError):
        raise RequestError(
            req_id, 321, f"Error validating request.-'bX' : cause - Invalid duration {text!r}"
        ) from None
    return float(count * _DURATION_UNITS[unit])


def _parse_end(req_id: int, text: str, now: float) -> float:
    """endDateTime: '' (now), 'yyyymmdd hh:mm:ss[ tz]' or 'yyyymmdd-hh:mm:ss' (UTC)."""
    text = text.strip()
    if not text:
        return now
    try:
        if "-" in text[:9]:
            stamp = datetime.strptime(text[:17], "%Y%m%d-%H:%M:%S").replace(tzinfo=ZoneInfo("UTC"))
        else:
            parts = text.split(" ")
            parts = [p for p in parts if p]
            if len(parts) == 1 and len(parts[0]) == 8:
                parts.append("23:59:59")
            stamp = datetime.strptime(f"{parts[0]} {parts[1]}", "%Y%m%d %H:%M:%S")
            zone = ZoneInfo(parts[2]) if len(parts) > 2 else NEW_YORK
            stamp = stamp.replace(tzinfo=zone)
    except (ValueError, IndexError, ZoneInfoNotFoundError):
        raise RequestError(
            req_id, 321, f"Error validating request.-'bW' : cause - invalid end date/time {text!r}"
        ) from None
    return stamp.timestamp()
