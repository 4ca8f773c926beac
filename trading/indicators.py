"""Intraday indicators on 30-second bars: session VWAP, Wilder RSI, Wilder ATR and ATR%.

Three forms of the same arithmetic, which agree to 1e-12:
- batch functions (`rsi`, `atr`, `atr_percent`, `session_vwap`) over a whole history (one row
  per symbol when given a 2-D array); RSI and ATR are TA-Lib's own C loops, a row at a time
  (numpy over whole arrays was 5-10x slower: a pass over memory per operation), VWAP numpy;
- `StreamingIndicators`, one per symbol, O(1) per new bar;
- `IndicatorBank`, the streaming state of N symbols as numpy arrays, all updated in one call.

RSI and ATR reproduce TA-Lib (`talib.RSI`, `talib.ATR`, default unstable period 0): the first value
is at index `period`; RSI seeds with the simple means of the first `period` gains and losses and
is 0 when both averages are exactly 0; ATR seeds with the simple mean of the first `period` true
ranges (indices 1..period). Both then smooth: avg = (avg * (period - 1) + x) / period (Wilder).

VWAP is anchored at the regular-hours open, 09:30 New York, of each bar's New York calendar day
(or at one fixed `session_open_epoch`): bars starting before the anchor do not count, a new day
starts a new VWAP, and bars after the close still count (callers feed regular-session bars).

`BarAggregator` builds clock-aligned 30-s bars from IB's 5-s real-time bars; `completed_bars`
keeps the finished bars of a keepUpToDate historical list. Everything here is pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

import numpy as np

from core.clock import NEW_YORK

DEFAULT_PERIOD = 14
BAR_SECONDS = 30
IB_REALTIME_BAR_SECONDS = 5
_NAN = float("nan")


class Bar(NamedTuple):
    """One OHLCV bar; `time` is the unix time (seconds) of the bar's start."""

    time: float
    open: float
    high: float
    low: float
    close: float
    volume: float


class IndicatorSnapshot(NamedTuple):
    """Indicator values after one bar; nan while an indicator is warming up."""

    time: float
    close: float
    vwap: float
    rsi: float
    atr: float
    atr_pct: float
    ready: bool


class WarmupStatus(NamedTuple):
    """Bars each indicator still needs before its first value (0 = has a value)."""

    rsi_bars: int
    atr_bars: int
    vwap_has_volume: bool

    @property
    def ready(self) -> bool:
        return self.rsi_bars == 0 and self.atr_bars == 0 and self.vwap_has_volume


class BankSnapshot(NamedTuple):
    """Latest indicator values of every symbol of an `IndicatorBank`, one array element each.

    Symbols not updated by the last call keep their previous values (and `time`).
    """

    time: np.ndarray
    close: np.ndarray
    vwap: np.ndarray
    rsi: np.ndarray
    atr: np.ndarray
    atr_pct: np.ndarray
    ready: np.ndarray


class BankWarmup(NamedTuple):
    """Per-symbol warm-up state of an `IndicatorBank` (arrays, one element per symbol)."""

    rsi_bars: np.ndarray
    atr_bars: np.ndarray
    vwap_has_volume: np.ndarray


# ---------------------------------------------------------------------------------------------
# Session anchor


def regular_open_epoch(time: float) -> float:
    """Returns the unix time of 09:30 New York on the New York calendar day containing `time`."""
    local = datetime.fromtimestamp(time, NEW_YORK)
    return datetime(local.year, local.month, local.day, 9, 30, tzinfo=NEW_YORK).timestamp()


class _SessionAnchor:
    """The VWAP anchor for a bar time, caching the current New York day so lookups are O(1)."""

    __slots__ = ("_day_end", "_day_start", "_fixed", "_open")

    def __init__(self, fixed_open_epoch: float | None) -> None:
        self._fixed = fixed_open_epoch
        self._day_start = math.inf
        self._day_end = -math.inf
        self._open = _NAN

    def anchor_for(self, time: float) -> float:
        if self._fixed is not None:
            return self._fixed
        if not self._day_start <= time < self._day_end:
            local = datetime.fromtimestamp(time, NEW_YORK)
            midnight = datetime(local.year, local.month, local.day, tzinfo=NEW_YORK)
            following = midnight.date() + timedelta(days=1)
            self._day_start = midnight.timestamp()
            self._day_end = datetime(
                following.year, following.month, following.day, tzinfo=NEW_YORK
            ).timestamp()
            self._open = regular_open_epoch(time)
        return self._open

    def day_end(self) -> float:
        """The end (next New York midnight) of the day of the last `anchor_for` time."""
        return self._day_end


def _anchors_for(times: np.ndarray, session_open_epoch: float | None) -> np.ndarray:
    """VWAP anchor of every bar time; `times` strictly increasing (checked by the caller).

    One calendar look-up per New York day, its bars found by bisection: no pandas, whose
    import alone cost the day trader a second on every (re)start.
    """
    if session_open_epoch is not None:
        return np.full(times.shape, float(session_open_epoch))
    anchors = np.empty(times.shape)
    session = _SessionAnchor(None)
    start = 0
    while start < times.size:
        anchor = session.anchor_for(float(times[start]))
        stop = int(np.searchsorted(times, session.day_end(), side="left"))
        anchors[start:stop] = anchor
        start = stop
    return anchors


# ---------------------------------------------------------------------------------------------
# Batch (vectorised) forms


def _check_period(period: int) -> None:
    if not isinstance(period, int | np.integer) or period < 2:
        raise ValueError(f"indicator period must be an integer >= 2, got {period!r}")


def _as_series(name: str, values: np.ndarray | Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (time) or 2-D (symbol, time), got shape {array.shape}"
        )
    return array


def _each_row(compute: Callable[..., np.ndarray], *series: np.ndarray) -> np.ndarray:
    """`compute` over a 1-D series, or over each row (symbol) of equally shaped 2-D ones."""
    if series[0].ndim == 1:
        return compute(*(np.ascontiguousarray(s) for s in series))
    out = np.empty(series[0].shape)
    for row in range(series[0].shape[0]):
        out[row] = compute(*(np.ascontiguousarray(s[row]) for s in series))
    return out


def rsi(close: np.ndarray | Sequence[float], period: int = DEFAULT_PERIOD) -> np.ndarray:
    """Returns Wilder RSI, talib.RSI itself (rows = symbols if 2-D); raises ValueError on bad
    input."""
    import talib  # here, not at import: the bots use the streaming forms only

    _check_period(period)
    close = _as_series("close", close)
    return _each_row(lambda c: talib.RSI(c, timeperiod=int(period)), close)


def true_range(
    high: np.ndarray | Sequence[float],
    low: np.ndarray | Sequence[float],
    close: np.ndarray | Sequence[float],
) -> np.ndarray:
    """Returns the true range as talib.TRANGE (nan at 0); raises ValueError on unequal shapes."""
    high, low, close = (
        _as_series(n, v) for n, v in (("high", high), ("low", low), ("close", close))
    )
    if not high.shape == low.shape == close.shape:
        raise ValueError(f"high/low/close shapes differ: {high.shape}, {low.shape}, {close.shape}")
    out = np.full(close.shape, _NAN)
    prev_close = close[..., :-1]
    h, lo = high[..., 1:], low[..., 1:]
    out[..., 1:] = np.maximum(np.maximum(h - lo, np.abs(h - prev_close)), np.abs(lo - prev_close))
    return out


def atr(
    high: np.ndarray | Sequence[float],
    low: np.ndarray | Sequence[float],
    close: np.ndarray | Sequence[float],
    period: int = DEFAULT_PERIOD,
) -> np.ndarray:
    """Returns Wilder ATR, talib.ATR itself (rows = symbols if 2-D); raises ValueError on bad
    input."""
    import talib  # here, not at import: the bots use the streaming forms only

    _check_period(period)
    high, low, close = (
        _as_series(n, v) for n, v in (("high", high), ("low", low), ("close", close))
    )
    if not high.shape == low.shape == close.shape:
        raise ValueError(f"high/low/close shapes differ: {high.shape}, {low.shape}, {close.shape}")
    return _each_row(lambda h, lo, c: talib.ATR(h, lo, c, timeperiod=int(period)), high, low, close)


def atr_percent(
    high: np.ndarray | Sequence[float],
    low: np.ndarray | Sequence[float],
    close: np.ndarray | Sequence[float],
    period: int = DEFAULT_PERIOD,
) -> np.ndarray:
    """Returns ATR / close * 100 (nan in warm-up or if close <= 0); raises ValueError like atr."""
    average_range = atr(high, low, close, period)
    close = np.asarray(close, dtype=float)
    positive = close > 0
    return np.where(positive, average_range / np.where(positive, close, 1.0) * 100.0, _NAN)


def session_vwap(
    times: np.ndarray | Sequence[float],
    high: np.ndarray | Sequence[float],
    low: np.ndarray | Sequence[float],
    close: np.ndarray | Sequence[float],
    volume: np.ndarray | Sequence[float],
    session_open_epoch: float | None = None,
) -> np.ndarray:
    """Returns session VWAP (nan before session volume); raises ValueError on unsorted times/shapes.

    With `session_open_epoch=None` each New York day anchors at its own 09:30; with a number, one
    session anchored there. Volume <= 0 (or nan) counts as no volume. Rows are symbols if 2-D.
    """
    times = np.asarray(times, dtype=float)
    high, low, close, volume = (
        _as_series(n, v)
        for n, v in (("high", high), ("low", low), ("close", close), ("volume", volume))
    )
    if times.ndim != 1 or not high.shape == low.shape == close.shape == volume.shape:
        raise ValueError("times must be 1-D and high/low/close/volume of one shape")
    if high.shape[-1] != times.size:
        raise ValueError(f"{times.size} times for {high.shape[-1]} bars")
    if times.size > 1 and not np.all(np.diff(times) > 0):
        raise ValueError("bar times must be strictly increasing")
    anchors = _anchors_for(times, session_open_epoch)
    counts = (times >= anchors) & (volume > 0)
    typical = (high + low + close) / 3.0
    price_volume = np.where(counts, typical * np.where(counts, volume, 0.0), 0.0)
    counted_volume = np.where(counts, volume, 0.0)
    cum_pv = np.empty(price_volume.shape)
    cum_volume = np.empty(counted_volume.shape)
    # Cumulate within each session (sequentially, exactly as the streaming form adds).
    boundaries = np.flatnonzero(np.diff(anchors) != 0) + 1
    for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, times.size], strict=True):
        cum_pv[..., start:stop] = np.cumsum(price_volume[..., start:stop], axis=-1)
        cum_volume[..., start:stop] = np.cumsum(counted_volume[..., start:stop], axis=-1)
    has_volume = cum_volume > 0
    return np.where(has_volume, cum_pv / np.where(has_volume, cum_volume, 1.0), _NAN)


# ---------------------------------------------------------------------------------------------
# Streaming, one symbol


@dataclass(slots=True)  # attribute access on every bar of every symbol
class StreamingIndicators:
    """VWAP, RSI, ATR and ATR% of one symbol, updated in O(1) per completed bar."""

    rsi_period: int = DEFAULT_PERIOD
    atr_period: int = DEFAULT_PERIOD
    session_open_epoch: float | None = None
    _anchor: _SessionAnchor = field(init=False, repr=False)
    _last_time: float = field(default=-math.inf, init=False, repr=False)
    _prev_close: float = field(default=_NAN, init=False, repr=False)
    _changes: int = field(default=0, init=False, repr=False)
    # While warming up these hold running sums; afterwards the Wilder averages.
    _avg_gain: float = field(default=0.0, init=False, repr=False)
    _avg_loss: float = field(default=0.0, init=False, repr=False)
    _avg_range: float = field(default=0.0, init=False, repr=False)
    _vwap_anchor: float = field(default=_NAN, init=False, repr=False)
    _cum_pv: float = field(default=0.0, init=False, repr=False)
    _cum_volume: float = field(default=0.0, init=False, repr=False)
    # The latest bar's values as a plain tuple; the snapshot is made from it when asked.
    _values: tuple[float, float, float, float, float, float, bool] | None = field(
        default=None, init=False, repr=False
    )
    _last: IndicatorSnapshot | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_period(self.rsi_period)
        _check_period(self.atr_period)
        self._anchor = _SessionAnchor(self.session_open_epoch)

    @property
    def last(self) -> IndicatorSnapshot | None:
        """The snapshot of the latest bar, None before the first."""
        if self._last is None and self._values is not None:
            self._last = IndicatorSnapshot._make(self._values)
        return self._last

    def warmup(self) -> WarmupStatus:
        """Returns how many more bars RSI and ATR need, and whether the session VWAP has volume."""
        return WarmupStatus(
            rsi_bars=max(0, self.rsi_period - self._changes + (self._values is None)),
            atr_bars=max(0, self.atr_period - self._changes + (self._values is None)),
            vwap_has_volume=self._cum_volume > 0,
        )

    def update(self, bar: Bar) -> IndicatorSnapshot:
        """Returns the indicators after `bar`; raises ValueError unless bar.time is the latest."""
        self.add(bar)
        assert self._values is not None
        self._last = IndicatorSnapshot._make(self._values)
        return self._last

    def add(self, bar: Bar) -> None:
        """`update` without making the snapshot (`last` makes it when asked); raises
        ValueError unless bar.time is the latest.

        Once per bar of every symbol, so written for speed (locals, the Wilder step inline),
        in TA-Lib's order of operations: running sums while warming up, their mean at
        `period` changes, then avg = (avg * (period - 1) + x) / period.
        """
        time = float(bar.time)
        if time <= self._last_time:
            raise ValueError(f"bar at {time} is not after the previous bar at {self._last_time}")
        self._last_time = time
        high, low, close, volume = float(bar.high), float(bar.low), float(bar.close), bar.volume

        anchor = self._anchor.anchor_for(time)
        if anchor != self._vwap_anchor:
            self._vwap_anchor = anchor
            self._cum_pv = 0.0
            self._cum_volume = 0.0
        if time >= anchor and volume > 0:
            volume = float(volume)
            self._cum_pv += (high + low + close) / 3.0 * volume
            self._cum_volume += volume
        cum_volume = self._cum_volume
        vwap = self._cum_pv / cum_volume if cum_volume > 0 else _NAN

        changes = self._changes
        rsi_period, atr_period = self.rsi_period, self.atr_period
        if self._values is not None:
            prev = self._prev_close
            changes += 1
            self._changes = changes
            change = close - prev
            gain = change if change > 0 else 0.0
            loss = -change if change < 0 else 0.0
            bar_range = max(high - low, abs(high - prev), abs(low - prev))
            # The Wilder step: running sums while warming up, the seed mean, then Wilder.
            if changes < rsi_period:
                self._avg_gain += gain
                self._avg_loss += loss
            elif changes == rsi_period:
                self._avg_gain = (self._avg_gain + gain) / rsi_period
                self._avg_loss = (self._avg_loss + loss) / rsi_period
            else:
                self._avg_gain = (self._avg_gain * (rsi_period - 1) + gain) / rsi_period
                self._avg_loss = (self._avg_loss * (rsi_period - 1) + loss) / rsi_period
            if changes < atr_period:
                self._avg_range += bar_range
            elif changes == atr_period:
                self._avg_range = (self._avg_range + bar_range) / atr_period
            else:
                self._avg_range = (self._avg_range * (atr_period - 1) + bar_range) / atr_period
        self._prev_close = close

        rsi_value = _NAN
        if changes >= rsi_period:
            avg_gain = self._avg_gain
            total = avg_gain + self._avg_loss
            rsi_value = 100.0 * (avg_gain / total) if total != 0.0 else 0.0
        atr_value = self._avg_range if changes >= atr_period else _NAN
        atr_pct = atr_value / close * 100.0 if close > 0 else _NAN
        ready = changes >= rsi_period and changes >= atr_period and cum_volume > 0
        self._values = (time, close, vwap, rsi_value, atr_value, atr_pct, ready)
        self._last = None


# ---------------------------------------------------------------------------------------------
# Streaming, many symbols at once


class IndicatorBank:
    """The streaming indicators of N symbols as numpy arrays, all updated in one vectorised call.

    Gives exactly what one `StreamingIndicators` per symbol gives for the same bars.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        rsi_period: int = DEFAULT_PERIOD,
        atr_period: int = DEFAULT_PERIOD,
        session_open_epoch: float | None = None,
    ) -> None:
        _check_period(rsi_period)
        _check_period(atr_period)
        self.symbols: tuple[str, ...] = tuple(symbols)
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("symbols must be unique")
        self._index = {symbol: i for i, symbol in enumerate(self.symbols)}
        self.rsi_period = rsi_period
        self.atr_period = atr_period
        self._anchor = _SessionAnchor(session_open_epoch)
        self._last_time = -math.inf
        n = len(self.symbols)
        self._bars = np.zeros(n, dtype=np.int64)
        self._prev_close = np.full(n, _NAN)
        self._avg_gain = np.zeros(n)
        self._avg_loss = np.zeros(n)
        self._avg_range = np.zeros(n)
        self._vwap_anchor = np.full(n, _NAN)
        self._cum_pv = np.zeros(n)
        self._cum_volume = np.zeros(n)
        self._time = np.full(n, _NAN)
        self._close = np.full(n, _NAN)
        self._vwap = np.full(n, _NAN)
        self._rsi = np.full(n, _NAN)
        self._atr = np.full(n, _NAN)
        self._atr_pct = np.full(n, _NAN)
        self._ready = np.zeros(n, dtype=bool)

    def index_of(self, symbol: str) -> int:
        """Returns the row of `symbol` in every array, raises KeyError for an unknown symbol."""
        return self._index[symbol]

    def warmup(self) -> BankWarmup:
        """Returns, per symbol, the bars RSI and ATR still need and whether VWAP has volume."""
        changes = np.maximum(self._bars - 1, 0) - (self._bars == 0)
        return BankWarmup(
            rsi_bars=np.maximum(self.rsi_period - changes, 0),
            atr_bars=np.maximum(self.atr_period - changes, 0),
            vwap_has_volume=self._cum_volume > 0,
        )

    def snapshot(self) -> BankSnapshot:
        """Returns copies of every symbol's latest indicator values."""
        return BankSnapshot(
            self._time.copy(),
            self._close.copy(),
            self._vwap.copy(),
            self._rsi.copy(),
            self._atr.copy(),
            self._atr_pct.copy(),
            self._ready.copy(),
        )

    def snapshot_of(self, symbol: str) -> IndicatorSnapshot:
        """Returns one symbol's latest values, raises KeyError for an unknown symbol."""
        i = self._index[symbol]
        return IndicatorSnapshot(
            float(self._time[i]),
            float(self._close[i]),
            float(self._vwap[i]),
            float(self._rsi[i]),
            float(self._atr[i]),
            float(self._atr_pct[i]),
            bool(self._ready[i]),
        )

    def update(
        self,
        time: float,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray,
        updated: np.ndarray | None = None,
    ) -> BankSnapshot:
        """Returns all symbols' values after a bar for `updated` rows; raises ValueError if bad.

        Rows not in `updated` (None = all) keep their state; `time` must increase call to call.
        """
        time = float(time)
        if time <= self._last_time:
            raise ValueError(f"bar at {time} is not after the previous bar at {self._last_time}")
        n = len(self.symbols)
        arrays = [np.asarray(a, dtype=float) for a in (high, low, close, volume)]
        if any(a.shape != (n,) for a in arrays):
            raise ValueError(f"high/low/close/volume must each have shape ({n},)")
        rows: slice | np.ndarray = slice(None)
        if updated is not None:
            mask = np.asarray(updated, dtype=bool)
            if mask.shape != (n,):
                raise ValueError(f"updated must have shape ({n},)")
            rows = np.flatnonzero(mask)
            arrays = [a[rows] for a in arrays]
        high, low, close, volume = arrays
        self._last_time = time
        self._step(time, rows, high, low, close, volume)
        return self.snapshot()

    def _step(
        self,
        time: float,
        rows: slice | np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray,
    ) -> None:
        # VWAP: restart rows whose session changed, then add this bar if it counts.
        anchor = self._anchor.anchor_for(time)
        stale = self._vwap_anchor[rows] != anchor
        cum_pv = np.where(stale, 0.0, self._cum_pv[rows])
        cum_volume = np.where(stale, 0.0, self._cum_volume[rows])
        self._vwap_anchor[rows] = anchor
        if time >= anchor:
            counts = volume > 0
            cum_pv = cum_pv + np.where(counts, (high + low + close) / 3.0 * volume, 0.0)
            cum_volume = cum_volume + np.where(counts, volume, 0.0)
        self._cum_pv[rows] = cum_pv
        self._cum_volume[rows] = cum_volume
        has_volume = cum_volume > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            self._vwap[rows] = np.where(has_volume, cum_pv / cum_volume, _NAN)

        # RSI and ATR: `changes` counts close-to-close changes seen, including this bar's.
        bars = self._bars[rows] + 1
        self._bars[rows] = bars
        changes = bars - 1
        prev = self._prev_close[rows]
        first = bars == 1
        change = np.where(first, 0.0, close - prev)
        gain = np.maximum(change, 0.0)
        loss = np.maximum(-change, 0.0)
        bar_range = np.where(
            first,
            0.0,
            np.maximum(np.maximum(high - low, np.abs(high - prev)), np.abs(low - prev)),
        )
        avg_gain = _wilder_step(self._avg_gain[rows], gain, changes, self.rsi_period)
        avg_loss = _wilder_step(self._avg_loss[rows], loss, changes, self.rsi_period)
        avg_range = _wilder_step(self._avg_range[rows], bar_range, changes, self.atr_period)
        self._avg_gain[rows] = avg_gain
        self._avg_loss[rows] = avg_loss
        self._avg_range[rows] = avg_range
        self._prev_close[rows] = close

        rsi_ready = changes >= self.rsi_period
        atr_ready = changes >= self.atr_period
        total = avg_gain + avg_loss
        with np.errstate(divide="ignore", invalid="ignore"):
            rsi_value = np.where(total != 0.0, 100.0 * (avg_gain / total), 0.0)
            atr_value = np.where(atr_ready, avg_range, _NAN)
            atr_pct = np.where(close > 0, atr_value / close * 100.0, _NAN)
        self._rsi[rows] = np.where(rsi_ready, rsi_value, _NAN)
        self._atr[rows] = atr_value
        self._atr_pct[rows] = atr_pct
        self._time[rows] = time
        self._close[rows] = close
        self._ready[rows] = rsi_ready & atr_ready & has_volume


def _wilder_step(
    average: np.ndarray, value: np.ndarray, changes: np.ndarray, period: int
) -> np.ndarray:
    """Vectorised Wilder step of `StreamingIndicators.update`: running sum, then mean, then
    Wilder average."""
    summed = average + value
    smoothed = (average * (period - 1) + value) / period
    return np.where(
        changes < period, summed, np.where(changes == period, summed / period, smoothed)
    )


# ---------------------------------------------------------------------------------------------
# Bars


class BarAggregator:
    """Builds clock-aligned bars of `bar_seconds` from IB's 5-s real-time bars.

    A window [k * bar_seconds, (k + 1) * bar_seconds) of epoch time is emitted when its last 5-s bar
    arrives, or, after a gap, when a bar of a later window arrives (windows never merge). 5-s bars
    not after the latest one seen (reconnect replays, duplicates) or inside an emitted window are
    ignored. A 5-s bar without volume (IB sends one flat at the previous close when nothing
    traded) adds no price to a window with trades, so the window matches IB's 30-s history
    bar; a window with no trades at all is emitted flat with volume 0.
    """

    def __init__(
        self, bar_seconds: int = BAR_SECONDS, source_seconds: int = IB_REALTIME_BAR_SECONDS
    ) -> None:
        if source_seconds <= 0 or bar_seconds <= 0 or bar_seconds % source_seconds:
            raise ValueError(
                f"bar_seconds ({bar_seconds}) must be a positive multiple of "
                f"source_seconds ({source_seconds})"
            )
        self.bar_seconds = bar_seconds
        self.source_seconds = source_seconds
        self._pending: Bar | None = None
        self._latest_source_time = -math.inf
        self._emitted_until = -math.inf

    @property
    def pending(self) -> Bar | None:
        """The window being built, None if there is none."""
        return self._pending

    def add(self, bar: Bar) -> list[Bar]:
        """Returns the bars completed by this 5-s bar (usually none or one; two after a gap)."""
        time = float(bar.time)
        if time <= self._latest_source_time or time < self._emitted_until:
            return []
        self._latest_source_time = time
        window = math.floor(time / self.bar_seconds) * self.bar_seconds
        completed: list[Bar] = []
        pending = self._pending
        if pending is not None and pending.time != window:
            completed.append(self._emit())
            pending = None
        if pending is None or (pending.volume <= 0 < bar.volume):  # the window's first trades
            pending = Bar(float(window), bar.open, bar.high, bar.low, bar.close, bar.volume)
        elif bar.volume > 0:  # a 5-s bar without trades (flat at the last close) adds no price
            pending = Bar(
                pending.time,
                pending.open,
                max(pending.high, bar.high),
                min(pending.low, bar.low),
                bar.close,
                pending.volume + bar.volume,
            )
        self._pending = pending
        if time + self.source_seconds >= window + self.bar_seconds:
            completed.append(self._emit())
        return completed

    def flush_if_due(self, now: float) -> Bar | None:
        """Returns the pending bar if its window ended by `now` (last 5-s bar missed), or None."""
        if self._pending is not None and now >= self._pending.time + self.bar_seconds:
            return self._emit()
        return None

    def _emit(self) -> Bar:
        assert self._pending is not None
        bar = self._pending
        self._pending = None
        self._emitted_until = bar.time + self.bar_seconds
        return bar


def completed_bars(bars: Sequence[Bar], after: float | None = None) -> list[Bar]:
    """Returns a keepUpToDate list's completed bars (not the in-progress last), after `after`."""
    if not bars:
        return []
    in_progress = bars[-1].time
    return [
        bar for bar in bars[:-1] if bar.time < in_progress and (after is None or bar.time > after)
    ]
