"""Momentum scanner: ranks US stocks from Massive (ex-Polygon.io) market data into the day
trader's watchlist (`day_trading_watchlist.json`), every 15 minutes from the pre-market on.

Data (official `massive` client, key in MASSIVE_API_KEY, POLYGON_API_KEY accepted), by plan.
The plan is learnt from the service's own answers at the first scan and logged once
(`massive_plan`): the full-market snapshot answers 403 NOT_AUTHORIZED on the free plan, says
`"status": "DELAYED"` (or carries 15-minute-old data) on Starter/Developer, and is live on
Advanced.
  - real-time and delayed plans: the full-market snapshot
    /v2/snapshot/locale/us/markets/stocks/tickers (or the top-20 gainers with
    `universe="gainers"`); on delayed plans every pick says its data is 15 minutes old and the
    last-minute bar (15 minutes old, so no signal) is left out of the score;
  - free plan (no snapshot): grouped daily bars /v2/aggs/grouped/locale/us/market/stocks/{date}
    give a previous-day momentum/volume watchlist (one request per session for the whole
    market), ready before the open; intraday the day trader judges entries on its own IB data;
  - every plan: grouped daily bars for the average daily volume of the `avg_volume_days`
    sessions before (past days never change, so cached); /v3/reference/tickers?type=CS once a
    day (the common-stock list); /v3/reference/splits once a day (the split guard below).

Momentum score in [0, 1], per ticker (L last price, P previous close, H/Lo today's high/low,
m_o/m_c the last minute bar's open/close):
    change   = clip(((L - P) / P * 100) / full_change_pct, 0, 1)       # +10% or more -> 1
    position = clip((L - Lo) / (H - Lo), 0, 1), 0.5 when H == Lo         # at the high -> 1
    minute   = clip(0.5 + ((m_c - m_o) / m_o * 100) / (2 * full_minute_change_pct), 0, 1)
               (flat or missing minute bar -> 0.5; +1% -> 1; -1% -> 0)
    momentum = clip(0.5 * change + 0.3 * position + 0.2 * minute, 0, 1)
A component the data cannot give is left out and the other weights scaled up to sum to 1:
the minute bar on delayed data and in the previous-day list, the day's range before the open
(the day bar is all zeros then).
Volume ratio = today's volume so far (the day bar; before the open the pre-market volume
`min.av`) / average daily volume of the previous sessions (grouped daily bars); when those are
unavailable, the previous day's volume from the snapshot. It is not time-of-day adjusted, so
early in the session it understates (conservative); before the open its own, lower threshold
applies (`min_premarket_volume_ratio`, `min_premarket_dollar_volume`).

A pick needs momentum >= 0.7, volume ratio > 2.0, $2 <= price <= $500, today's dollar volume
>= $1M, not OTC, a common stock when the reference list is available, and data no older than
`max_data_age_s` beyond the plan's delay (`updated`, else `min.t`; older tickers are dropped
and counted in `scan_done`). All configurable.

Split guard: the snapshot's previous day is not split-adjusted, so on a reverse split's
execution day a stock looks up 20x on 1/20 of its volume. Splits executed since the data was
fetched scale the previous close (x split_from/split_to) and the past volumes (the inverse).

Requests: every HTTP attempt, retries and cursor pages included, passes one `RateLimiter`: the
free plan's 5 requests per minute (also while the plan is not yet known), no limit on paid
plans, or MASSIVE_REQUESTS_PER_MINUTE. A request occupies the window until its response
arrives, plus a margin, so a strict server-side window never sees one too many. A 429 waits
for its Retry-After (else for the window to clear); a 401 stops at the first request (the key
is wrong: one line naming MASSIVE_API_KEY, no further requests until restart). Cursor pages
are fetched from `next_url` alone, as the official client does.
No key, no network, or a rejected key -> the scanner says so once and returns None; the day
trader keeps the last watchlist file (`WatchlistStore`) or `fallback_watchlist(symbols)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import urlparse

import numpy as np
from massive import RESTClient
from massive.exceptions import BadResponse
from massive.rest import BASE as MASSIVE_BASE_URL
from massive.rest.models import TickerSnapshot
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util.retry import Retry

from core import cli
from core.clock import NEW_YORK, MarketClock, get_clock
from core.logs import get_logger
from core.settings import Settings
from core.tickers import is_ticker

log = get_logger("scanner")

T = TypeVar("T")

SOURCES = frozenset({"massive", "gateway", "cache"})
# What the picks were scored on; "unknown" for files written before the field existed.
BASES = frozenset(
    {
        "realtime",
        "realtime_premarket",
        "delayed_15m",
        "delayed_15m_premarket",
        "previous_day",
        "none",
        "unknown",
    }
)
WATCHLIST_VERSION = 1
REFRESH_INTERVAL_S = 15 * 60.0
# The snapshot is repopulated from 04:00 New York; pre-market scans start then.
PREMARKET_START = clock_time(4, 0)
# Bounds every cursor walk (about 5,000 common stocks at 1,000 per page).
_MAX_PAGES = 10


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ScanConfig:
    """Filter thresholds and score shape; validated at construction."""

    min_momentum: float = 0.7
    min_volume_ratio: float = 2.0  # strict: ratio must be greater
    min_price: float = 2.0
    max_price: float = 500.0
    min_dollar_volume: float = 1_000_000.0
    # Before the open a whole day's average is compared with a few hours of pre-market volume.
    min_premarket_volume_ratio: float = 0.1
    min_premarket_dollar_volume: float = 250_000.0
    max_picks: int = 20
    full_change_pct: float = 10.0  # today's gain that scores 1.0 on the change component
    full_minute_change_pct: float = 1.0  # last-minute gain that scores 1.0 on the minute part
    weight_change: float = 0.5
    weight_range: float = 0.3
    weight_minute: float = 0.2
    avg_volume_days: int = 5  # 0: use the snapshot's previous-day volume only
    common_stocks_only: bool = True
    universe: Literal["all", "gainers"] = "all"
    max_data_age_s: float = 300.0  # beyond the plan's own delay; older tickers are dropped

    def __post_init__(self) -> None:
        weights = self.weight_change + self.weight_range + self.weight_minute
        checks = [
            (0.0 <= self.min_momentum <= 1.0, "min_momentum must be in [0, 1]"),
            (self.min_volume_ratio >= 0, "min_volume_ratio must be >= 0"),
            (self.min_premarket_volume_ratio >= 0, "min_premarket_volume_ratio must be >= 0"),
            (0 <= self.min_price < self.max_price, "need 0 <= min_price < max_price"),
            (self.min_dollar_volume >= 0, "min_dollar_volume must be >= 0"),
            (self.min_premarket_dollar_volume >= 0, "min_premarket_dollar_volume must be >= 0"),
            (self.max_picks >= 1, "max_picks must be >= 1"),
            (self.full_change_pct > 0 and self.full_minute_change_pct > 0, "full_* must be > 0"),
            (math.isclose(weights, 1.0), f"weights must sum to 1, got {weights}"),
            (self.weight_change > 0, "weight_change must be > 0"),
            (0 <= self.avg_volume_days <= 30, "avg_volume_days must be in [0, 30]"),
            (self.universe in ("all", "gainers"), "universe must be 'all' or 'gainers'"),
            (self.max_data_age_s > 0, "max_data_age_s must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"scanner config: {message}")

    def without(self, *, range_part: bool = False, minute_part: bool = False) -> ScanConfig:
        """The same config with the named score components left out, the rest scaled to 1."""
        w_range = 0.0 if range_part else self.weight_range
        w_minute = 0.0 if minute_part else self.weight_minute
        total = self.weight_change + w_range + w_minute
        return replace(
            self,
            weight_change=self.weight_change / total,
            weight_range=w_range / total,
            weight_minute=w_minute / total,
        )

    def for_premarket(self) -> ScanConfig:
        """Pre-market thresholds: no session range yet, volume compared with a whole day's."""
        return replace(
            self.without(range_part=True),
            min_volume_ratio=self.min_premarket_volume_ratio,
            min_dollar_volume=self.min_premarket_dollar_volume,
        )


@dataclass(frozen=True)
class Pick:
    """One watchlist entry. Numbers are None when unknown (fallback lists), never invented."""

    symbol: str
    momentum: float | None
    volume_ratio: float | None
    price: float | None
    change_pct: float | None
    reason: str


@dataclass(frozen=True)
class Watchlist:
    """Ranked picks, best first; `timestamp` is exchange time when the list was made."""

    timestamp: datetime
    source: str  # "massive", "gateway" or "cache"
    picks: tuple[Pick, ...]
    rejected: tuple[str, ...] = ()  # file entries that are not tickers, dropped
    basis: str = "unknown"  # what the picks were scored on: one of BASES

    @property
    def symbols(self) -> list[str]:
        return [p.symbol for p in self.picks]

    def age_seconds(self, now_epoch: float) -> float:
        return now_epoch - self.timestamp.timestamp()

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "version": WATCHLIST_VERSION,
            "timestamp": self.timestamp.isoformat(),
            "source": self.source,
            "basis": self.basis,
            "picks": [asdict(p) for p in self.picks],
        }


class WatchlistError(ValueError):
    """The watchlist file is missing or malformed; the message names the file and the fix."""


def fallback_watchlist(
    symbols: Iterable[str], source: str = "gateway", now: datetime | None = None
) -> Watchlist:
    """A watchlist of `symbols` in the given order, with unknown scores (None).

    For when no scan is available: the simulated gateway's universe, or a user's list.
    """
    if source not in SOURCES:
        raise ValueError(f"watchlist source {source!r} must be one of {sorted(SOURCES)}")
    seen: dict[str, None] = {}
    for raw in symbols:
        symbol = raw.strip().upper()
        if symbol:
            seen.setdefault(symbol, None)
    reason = f"fallback: {source} universe, no market scan"
    picks = tuple(Pick(s, None, None, None, None, reason) for s in seen)
    return Watchlist(timestamp=now or get_clock().now(), source=source, picks=picks, basis="none")


# ------------------------------------------------------------ pure filtering


class DailyBar(NamedTuple):
    """One ticker's session from the grouped daily bars."""

    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True)
class Split:
    """One split from /v3/reference/splits: `split_from` old shares became `split_to`."""

    ticker: str
    execution_date: date
    split_from: float
    split_to: float

    @property
    def price_factor(self) -> float:
        """Multiplies a price from before the split (1-for-20 reverse split: x20)."""
        return self.split_from / self.split_to


def split_factors(splits: Iterable[Split], after: date) -> dict[str, float]:
    """Price factor per ticker for the splits executed after `after` (data from `after` or
    earlier predates them). Volumes scale by the inverse."""
    factors: dict[str, float] = {}
    for split in splits:
        if split.execution_date > after:
            factors[split.ticker] = factors.get(split.ticker, 1.0) * split.price_factor
    return factors


def adjust_bars(bars: Mapping[str, DailyBar], factors: Mapping[str, float]) -> dict[str, DailyBar]:
    """Bars in post-split terms: prices x factor, volume / factor."""
    if not factors:
        return dict(bars)
    out = {}
    for symbol, bar in bars.items():
        f = factors.get(symbol)
        out[symbol] = (
            bar
            if f is None
            else DailyBar(bar.open * f, bar.high * f, bar.low * f, bar.close * f, bar.volume / f)
        )
    return out


@dataclass(frozen=True)
class SnapshotArrays:
    """The snapshot parsed once into aligned arrays (NaN = missing) for vectorised scoring."""

    symbols: np.ndarray  # str objects
    last: np.ndarray
    prev_close: np.ndarray
    day_high: np.ndarray
    day_low: np.ndarray
    day_volume: np.ndarray  # the day bar's volume, else the accumulated (pre-market) volume
    minute_open: np.ndarray
    minute_close: np.ndarray
    avg_volume: np.ndarray  # average daily volume, or the previous day's volume
    avg_is_prev_day: np.ndarray  # bool: avg_volume fell back to the previous day's volume
    eligible: np.ndarray  # bool: not OTC, and a common stock when the list is known
    data_epoch: np.ndarray  # epoch seconds of the ticker's newest data; NaN when unknown


def _positive(column: np.ndarray) -> np.ndarray:
    """Prices must be > 0: zero (pre-market day bars) and missing become NaN."""
    with np.errstate(invalid="ignore"):
        return np.where(column > 0, column, np.nan)


def epoch_seconds(stamp: float | None) -> float | None:
    """Seconds from a Massive timestamp in s, ms, us or ns (its fields mix them)."""
    if stamp is None or not stamp > 0:
        return None
    for scale in (1e18, 1e15, 1e12):  # the scale a present-day timestamp has in ns, us, ms
        if stamp >= scale:
            return stamp / (scale / 1e9)
    return float(stamp)


def snapshot_arrays(
    snapshots: Sequence[TickerSnapshot],
    avg_volume: Mapping[str, float] | None = None,
    common_stocks: Set[str] | None = None,
    split_price_factor: Mapping[str, float] | None = None,
) -> SnapshotArrays:
    """Parse `TickerSnapshot` objects into arrays in one pass.

    Last price: last trade, else the last minute bar's close, else the day bar's close.
    Volume: the day bar's, else the minute bar's accumulated volume (before the open the day
    bar is all zeros while `min.av` holds the pre-market volume).
    Average volume: `avg_volume[symbol]`, else the previous day's volume (flagged).
    `common_stocks` None means the type is unknown: every non-OTC ticker stays eligible.
    `split_price_factor`: splits executed since the previous day, whose bar the snapshot does
    not adjust (its close x factor, its volume / factor).
    Data time: `updated`, else the minute bar's start, else the last trade's time.
    """
    avg_volume = avg_volume or {}
    splits = split_price_factor or {}
    symbols: list[str] = []
    rows: list[tuple[Any, ...]] = []
    eligible: list[bool] = []
    # One tuple per ticker, converted once: per-element numpy writes cost ~3x more.
    for snap in snapshots:
        day, prev, minute, trade = snap.day, snap.prev_day, snap.min, snap.last_trade
        symbol = snap.ticker or ""
        otc = bool(day and day.otc) or bool(minute and minute.otc)
        symbols.append(symbol)
        eligible.append(
            bool(symbol) and not otc and (common_stocks is None or symbol in common_stocks)
        )
        factor = splits.get(symbol, 1.0)
        stamp = (
            epoch_seconds(snap.updated)
            or epoch_seconds(minute.timestamp if minute else None)
            or epoch_seconds(trade.sip_timestamp if trade else None)
        )
        prev_close = prev.close if prev else None
        prev_volume = prev.volume if prev else None
        rows.append(
            (
                trade.price if trade else None,
                minute.close if minute else None,
                day.close if day else None,
                prev_close * factor if prev_close is not None else None,
                day.high if day else None,
                day.low if day else None,
                day.volume if day and day.volume else minute.accumulated_volume if minute else None,
                minute.open if minute else None,
                avg_volume.get(symbol),
                prev_volume / factor if prev_volume is not None else None,
                stamp,
            )
        )
    cols = np.array(rows, dtype=float).reshape(len(rows), 11).T  # None -> NaN
    trade_price, minute_close, day_close = _positive(cols[0]), _positive(cols[1]), cols[2]
    last = np.where(
        np.isfinite(trade_price),
        trade_price,
        np.where(np.isfinite(minute_close), minute_close, _positive(day_close)),
    )
    with np.errstate(invalid="ignore"):
        has_average = cols[8] > 0
        prev_volume = np.where(cols[9] > 0, cols[9], np.nan)
    return SnapshotArrays(
        symbols=np.array(symbols, dtype=object),
        last=last,
        prev_close=_positive(cols[3]),
        day_high=_positive(cols[4]),
        day_low=_positive(cols[5]),
        day_volume=cols[6],
        minute_open=_positive(cols[7]),
        minute_close=minute_close,
        avg_volume=np.where(has_average, cols[8], prev_volume),
        avg_is_prev_day=~has_average,
        eligible=np.array(eligible, dtype=bool),
        data_epoch=cols[10],
    )


def previous_day_arrays(
    sessions: Sequence[Mapping[str, DailyBar]],
    common_stocks: Set[str] | None = None,
    session_close_epoch: float = math.nan,
) -> SnapshotArrays:
    """The previous session scored as "today" from grouped daily bars (free plan).

    `sessions[0]` is the previous session (last = its close, range = its high/low, volume =
    its volume), `sessions[1]` gives the previous close, and the average volume is over
    `sessions[1:]`. Bars must be split-adjusted to one basis. No minute bar: NaN.
    """
    latest = sessions[0] if sessions else {}
    before = sessions[1] if len(sessions) > 1 else {}
    average = average_daily_volume([{s: b.volume for s, b in d.items()} for d in sessions[1:]])
    symbols = sorted(latest)
    n = len(symbols)

    def column(values: Iterable[float]) -> np.ndarray:
        return np.fromiter(values, dtype=float, count=n)

    bars = [latest[s] for s in symbols]
    prev = [before.get(s) for s in symbols]
    nan = np.full(n, np.nan)
    return SnapshotArrays(
        symbols=np.array(symbols, dtype=object),
        last=_positive(column(b.close for b in bars)),
        prev_close=_positive(column(p.close if p else math.nan for p in prev)),
        day_high=_positive(column(b.high for b in bars)),
        day_low=_positive(column(b.low for b in bars)),
        day_volume=column(b.volume for b in bars),
        minute_open=nan,
        minute_close=nan,
        avg_volume=column(average.get(s, math.nan) for s in symbols),
        avg_is_prev_day=np.zeros(n, dtype=bool),
        eligible=np.array(
            [common_stocks is None or s in common_stocks for s in symbols], dtype=bool
        ),
        data_epoch=np.full(n, session_close_epoch),
    )


def stale_mask(a: SnapshotArrays, now_epoch: float, max_age_s: float) -> np.ndarray:
    """True where the ticker's data is older than `max_age_s` (or has no time at all)."""
    with np.errstate(invalid="ignore"):
        return ~(now_epoch - a.data_epoch <= max_age_s)


@dataclass(frozen=True)
class Scores:
    """Per-ticker numbers aligned with `SnapshotArrays`; `passed` is the filter mask."""

    change_pct: np.ndarray
    range_position: np.ndarray
    minute_change_pct: np.ndarray
    momentum: np.ndarray
    volume_ratio: np.ndarray
    dollar_volume: np.ndarray
    passed: np.ndarray


def score_snapshot(a: SnapshotArrays, config: ScanConfig) -> Scores:
    """Momentum, volume ratio and the filter mask (formula in the module docstring). Pure."""
    with np.errstate(divide="ignore", invalid="ignore"):
        change_pct = (a.last - a.prev_close) / a.prev_close * 100.0
        span = a.day_high - a.day_low
        position = np.where(span > 0, np.clip((a.last - a.day_low) / span, 0.0, 1.0), 0.5)
        minute_pct = (a.minute_close - a.minute_open) / a.minute_open * 100.0
        minute_pct = np.where(np.isfinite(minute_pct), minute_pct, 0.0)
        momentum = np.clip(
            config.weight_change * np.clip(change_pct / config.full_change_pct, 0.0, 1.0)
            + config.weight_range * position
            + config.weight_minute
            * np.clip(0.5 + minute_pct / (2.0 * config.full_minute_change_pct), 0.0, 1.0),
            0.0,
            1.0,
        )  # NaN change (no previous close) stays NaN and fails every comparison below
        volume_ratio = np.where(a.avg_volume > 0, a.day_volume / a.avg_volume, np.nan)
        dollar_volume = a.day_volume * a.last
        passed = (
            a.eligible
            & (momentum >= config.min_momentum)
            & (volume_ratio > config.min_volume_ratio)
            & (a.last >= config.min_price)
            & (a.last <= config.max_price)
            & (dollar_volume >= config.min_dollar_volume)
        )
    return Scores(change_pct, position, minute_pct, momentum, volume_ratio, dollar_volume, passed)


def rank_picks(
    a: SnapshotArrays, config: ScanConfig, avg_label: str | None = None, note: str = ""
) -> list[Pick]:
    """The tickers passing every filter, best momentum first (ties: higher volume ratio).

    `avg_label` names the average-volume basis in reasons (default "<avg_volume_days>d-avg");
    `note` leads every reason (what the data is: delayed, pre-market, previous day).
    """
    s = score_snapshot(a, config)
    idx = np.flatnonzero(s.passed)
    order = idx[np.lexsort((-s.volume_ratio[idx], -s.momentum[idx]))][: config.max_picks]
    label = avg_label or f"{config.avg_volume_days}d-avg"
    picks = []
    for i in order:
        basis = "prev-day" if a.avg_is_prev_day[i] else label
        parts = [f"chg {s.change_pct[i]:+.1f}%"]
        if config.weight_range > 0:
            parts.append(f"range pos {s.range_position[i]:.2f}")
        if config.weight_minute > 0:
            parts.append(f"1m {s.minute_change_pct[i]:+.2f}%")
        reason = (
            f"{note}momentum {s.momentum[i]:.2f}>={config.min_momentum:.2f} "
            f"({', '.join(parts)}); "
            f"volume {s.volume_ratio[i]:.1f}x {basis}>{config.min_volume_ratio:g}x; "
            f"price ${a.last[i]:.2f} in [${config.min_price:g}, ${config.max_price:g}]; "
            f"dollar vol ${s.dollar_volume[i] / 1e6:.1f}M>=${config.min_dollar_volume / 1e6:g}M"
        )
        picks.append(
            Pick(
                symbol=str(a.symbols[i]),
                momentum=round(float(s.momentum[i]), 4),
                volume_ratio=round(float(s.volume_ratio[i]), 3),
                price=round(float(a.last[i]), 4),
                change_pct=round(float(s.change_pct[i]), 3),
                reason=reason,
            )
        )
    return picks


def average_daily_volume(days: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean volume per symbol over the sessions in which it traded."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for day in days:
        for symbol, volume in day.items():
            totals[symbol] = totals.get(symbol, 0.0) + volume
            counts[symbol] = counts.get(symbol, 0) + 1
    return {s: totals[s] / counts[s] for s in totals}


# ------------------------------------------------------------ watchlist file


def write_watchlist(path: str | Path, watchlist: Watchlist) -> None:
    """Write atomically: a temp file in the same folder, fsync, then os.replace.

    A reader sees the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(watchlist.to_json_dict(), indent=2)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _number_or_none(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"pick field {key!r} is {value!r}, not a number")
    return float(value)


def parse_watchlist(payload: Any) -> Watchlist:
    """A Watchlist from the file's JSON. Raises ValueError saying what is wrong."""
    if not isinstance(payload, dict):
        raise ValueError("top level is not a JSON object")
    stamp = datetime.fromisoformat(str(payload["timestamp"]))
    if stamp.tzinfo is None:
        raise ValueError("timestamp has no timezone")
    source = payload["source"]
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {sorted(SOURCES)}")
    basis = payload.get("basis", "unknown")
    if basis not in BASES:
        raise ValueError(f"basis {basis!r} is not one of {sorted(BASES)}")
    raw_picks = payload["picks"]
    if not isinstance(raw_picks, list):
        raise ValueError("picks is not a list")
    picks = []
    rejected = []
    for entry in raw_picks:
        if not isinstance(entry, dict):
            raise ValueError(f"pick {entry!r} is not an object")
        symbol = entry.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            raise ValueError(f"pick {entry!r} has no symbol")
        if not is_ticker(symbol.strip().upper()):
            rejected.append(symbol)  # never sent to IB as a contract lookup
            continue
        picks.append(
            Pick(
                symbol=symbol.strip().upper(),
                momentum=_number_or_none(entry, "momentum"),
                volume_ratio=_number_or_none(entry, "volume_ratio"),
                price=_number_or_none(entry, "price"),
                change_pct=_number_or_none(entry, "change_pct"),
                reason=str(entry.get("reason", "")),
            )
        )
    return Watchlist(
        timestamp=stamp,
        source=source,
        picks=tuple(picks),
        rejected=tuple(rejected),
        basis=basis,
    )


def read_watchlist(path: str | Path) -> Watchlist:
    """The watchlist in `path`. Raises WatchlistError naming the file and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise WatchlistError(
            f"watchlist {path} does not exist: run `python scanner_polygon.py --once` "
            "(or start the scanner)"
        ) from exc
    except OSError as exc:
        raise WatchlistError(
            f"watchlist {path} is unreadable ({exc}): check its permissions"
        ) from exc
    try:
        return parse_watchlist(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise WatchlistError(
            f"watchlist {path} is malformed ({type(exc).__name__}: {exc}): delete it and run "
            "`python scanner_polygon.py --once`"
        ) from exc


class WatchlistStore:
    """Reads the watchlist file for the day trader, keeping the last good list in memory.

    `load()` re-parses only when the file changed; a missing or malformed file logs one line
    (again only when the problem changes) and returns the last good list marked source
    "cache", or None when no good list was ever read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.last_good: Watchlist | None = None
        self._stamp: tuple[int, int] | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()

    def load(self) -> Watchlist | None:
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if stamp is not None and stamp == self._stamp and self._problem is None:
                return self.last_good
            try:
                watchlist = read_watchlist(self.path)
            except WatchlistError as exc:
                self._stamp = stamp
                if str(exc) != self._problem:
                    self._problem = str(exc)
                    log.warning(
                        "watchlist_unusable",
                        path=str(self.path),
                        error=str(exc),
                        kept=len(self.last_good.picks) if self.last_good else None,
                    )
                if self.last_good is None:
                    return None
                return replace(self.last_good, source="cache")
            self._stamp = stamp
            self._problem = None
            if watchlist.rejected:  # once per version of the file: load re-reads on change only
                log.warning(
                    "watchlist_symbols_dropped",
                    path=str(self.path),
                    symbols=list(watchlist.rejected),
                    action="not tickers (e.g. AAPL, BRK.B): fix or remove them in the file",
                )
            self.last_good = watchlist
            return watchlist


_stores: dict[Path, WatchlistStore] = {}
_stores_lock = threading.Lock()


def load_watchlist(path: str | Path) -> Watchlist | None:
    """The watchlist in `path`, through a per-path `WatchlistStore`.

    Missing or malformed file: one log line naming the file and the fix, and the last good
    list (source "cache") is returned, or None if there never was one.
    """
    key = Path(path).resolve()
    with _stores_lock:
        store = _stores.setdefault(key, WatchlistStore(key))
    return store.load()


# ------------------------------------------------------------ plans, rate limit, retry


@dataclass(frozen=True)
class Plan:
    """What a Massive key is entitled to, as far as the scanner is concerned."""

    name: Literal["unknown", "free", "delayed", "realtime"]
    has_snapshot: bool
    delay_s: float  # how old the snapshot's data is by design
    requests_per_minute: int | None  # None: no limit
    watchlist_from: str


PLANS: dict[str, Plan] = {
    # Until the first answer says otherwise, the free plan's limit: never a refused request.
    "unknown": Plan("unknown", True, 0.0, 5, "snapshot (plan not known yet)"),
    "free": Plan("free", False, 0.0, 5, "previous day's grouped daily bars"),
    "delayed": Plan("delayed", True, 15 * 60.0, None, "snapshot, 15 minutes delayed"),
    "realtime": Plan("realtime", True, 0.0, None, "real-time snapshot"),
}
# A live market's newest update is seconds old; this old means the feed is delayed.
_DELAYED_IF_NEWEST_OLDER_S = 10 * 60.0


class RateLimiter:
    """At most `max_requests` in ANY `per_seconds` window, seen from the server's side.

    A request holds its place in the window from the moment it is sent until `margin_s` past
    the moment its response arrived: the server counts it somewhere in between, so stamping the
    send time alone lets a strict server window see one request too many (a 60.0 s gap between
    arrivals 1 and 6). A plain token bucket refilling 5/min would allow up to 9 in one window.
    `max_requests` None: no limit (paid plans); requests are still recorded. Thread-safe; time
    is injectable.
    """

    def __init__(
        self,
        max_requests: int | None = 5,
        per_seconds: float = 60.0,
        time_fn: Callable[[], float] = time.monotonic,
        sleep_fn: Callable[[float], None] = time.sleep,
        margin_s: float = 1.0,
    ) -> None:
        if per_seconds <= 0 or margin_s < 0:
            raise ValueError("rate limiter needs per_seconds > 0 and margin_s >= 0")
        self.per_seconds = per_seconds
        self.margin_s = margin_s
        self._time = time_fn
        self._sleep = sleep_fn
        self._held: list[list[float]] = []  # one [time] per request; inf while in flight
        self._lock = threading.Lock()
        self.max_requests: int | None = None
        self.set_limit(max_requests)

    def set_limit(self, max_requests: int | None) -> None:
        if max_requests is not None and max_requests < 1:
            raise ValueError("rate limiter needs max_requests >= 1 (None: no limit)")
        self.max_requests = max_requests

    def _expiry(self, stamp: float) -> float:
        return stamp + self.per_seconds + self.margin_s

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Wait for room, then hold it for one HTTP attempt (the body of the `with`)."""
        ticket = self._acquire()
        try:
            yield
        finally:
            ticket[0] = self._time()  # the window now runs from the response's arrival

    def _acquire(self) -> list[float]:
        with self._lock:
            while True:
                now = self._time()
                self._held = [t for t in self._held if self._expiry(t[0]) > now]
                if self.max_requests is None or len(self._held) < self.max_requests:
                    ticket = [math.inf]
                    self._held.append(ticket)
                    return ticket
                first_free = min(self._expiry(t[0]) for t in self._held)
                # All in flight (other threads): look again shortly.
                self._sleep(first_free - now if math.isfinite(first_free) else 0.05)

    def seconds_until_clear(self) -> float:
        """Seconds until no request sent so far is inside the window any more."""
        with self._lock:
            now = self._time()
            latest = max((self._expiry(t[0]) for t in self._held), default=now)
            return max(0.0, (latest if math.isfinite(latest) else now) - now)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of 5xx/network errors with exponential backoff and jitter (a 429 waits
    for its Retry-After or the rate window instead)."""

    max_attempts: int = 4
    base_delay_s: float = 2.0
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0  # a longer Retry-After ends the scan; the next one retries

    def delay(self, retry_number: int, rng: random.Random) -> float:
        """Seconds before retry `retry_number` (1-based): half fixed, half random ("equal jitter")."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (retry_number - 1))
        return cap / 2 + rng.random() * cap / 2


class MarketDataError(Exception):
    """A Massive request failed for good.

    `kind`: unauthorized (401), not_entitled (403), rate_limited (429), http (5xx), rejected
    (other 4xx), network, bad_data.
    """

    def __init__(self, kind: str, what: str, detail: str) -> None:
        super().__init__(f"{what}: {kind}: {detail}")
        self.kind = kind
        self.what = what
        self.detail = detail


_FIXES = {
    "unauthorized": "Massive does not know this key: set MASSIVE_API_KEY in .env to the key shown "
    "in the Massive dashboard and restart; no more requests are sent with this one",
    "not_entitled": "the Massive plan does not include this data; the scanner uses what the plan "
    "allows",
    "rate_limited": "Massive is rate-limiting this key (another process on it?); will retry at "
    "the next refresh",
    "http": "Massive is failing or overloaded; will retry at the next refresh",
    "rejected": "Massive refused the request; check MASSIVE_API_KEY and the base URL",
    "network": "check the network/proxy or the base URL; the day trader keeps the last watchlist",
    "bad_data": "unexpected response shape; report it, the day trader keeps the last watchlist",
}


class Answer(NamedTuple):
    """One HTTP response as it came off the wire."""

    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes


class _MeteredPool:
    """Stands in for the massive client's urllib3 pool.

    Every HTTP attempt the client makes passes the rate limiter, and the last answer (status,
    headers, body) stays readable after the client has turned a non-200 into BadResponse(body).
    """

    def __init__(self, pool: Any, limiter: RateLimiter) -> None:
        self._pool = pool
        self._limiter = limiter
        self._last = threading.local()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self._last.answer = None
        with self._limiter.slot():
            response = self._pool.request(method, url, **kwargs)
        headers = {k.lower(): v for k, v in response.headers.items()}  # names are case-blind
        self._last.answer = Answer(response.status, headers, response.data)
        return response

    def last_answer(self) -> Answer | None:
        return getattr(self._last, "answer", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def _error_text(body: bytes) -> str:
    """The service's own words: `status: message` (403) or `status: error` (401/429)."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace")
    if not isinstance(payload, dict):
        return str(payload)[:200]
    words = payload.get("message") or payload.get("error") or ""
    return f"{payload.get('status', '?')}: {words}"[:300]


def retry_after_seconds(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if absent
    or unreadable."""
    if not value or not value.strip():
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        stamp = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, stamp.timestamp() - now_epoch)


def _path_of(next_url: str) -> str:
    """`next_url` as a path on the client's base, exactly as the client's own pagination."""
    parsed = urlparse(next_url)
    return parsed.path + (f"?{parsed.query}" if parsed.query else "")


def _results(payload: Any, what: str) -> list[dict[str, Any]]:
    results = payload.get("results") if isinstance(payload, dict) else None
    if results is None and isinstance(payload, dict) and "status" in payload:
        return []  # a day without data answers without "results"
    if not isinstance(results, list):
        raise MarketDataError("bad_data", what, "no 'results' list in the response")
    return [r for r in results if isinstance(r, dict)]


@dataclass(frozen=True)
class _GroupedDay:
    fetched_on: date  # bars are split-adjusted as of this day
    bars: dict[str, DailyBar]


def _daily_bar(row: Mapping[str, Any]) -> DailyBar | None:
    try:
        bar = DailyBar(*(float(row[k]) for k in ("o", "h", "l", "c", "v")))
    except (KeyError, TypeError, ValueError):
        return None
    return bar if all(math.isfinite(x) for x in bar) else None


def _split(row: Mapping[str, Any]) -> Split | None:
    try:
        split = Split(
            ticker=str(row["ticker"]),
            execution_date=date.fromisoformat(str(row["execution_date"])),
            split_from=float(row["split_from"]),
            split_to=float(row["split_to"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return split if split.split_from > 0 and split.split_to > 0 else None


# ------------------------------------------------------------ scanner (I/O)


@dataclass
class _ScanTally:
    """What one scan used, for `scan_done`."""

    tickers: int = 0
    stale_dropped: int = 0
    split_adjusted: list[str] = field(default_factory=list)
    picks_on_prev_day_volume: int = 0
    avg_volume_basis: str = "none"


class MassiveScanner:
    """Fetches market data through the official `massive` client and ranks picks.

    `scan()` returns a Watchlist (source "massive"), or None when there is no key or the data
    cannot be had; each such condition is logged once until a scan succeeds again.
    `requests_per_minute`: None follows the plan (5 until it is known and on the free plan, no
    limit on paid plans), 0 means no limit, any other number is the limit.
    """

    def __init__(
        self,
        api_key: str | None,
        *,
        config: ScanConfig | None = None,
        clock: MarketClock | None = None,
        base_url: str = MASSIVE_BASE_URL,
        limiter: RateLimiter | None = None,
        requests_per_minute: int | None = None,
        retry: RetryPolicy | None = None,
        sleep_fn: Callable[[float], None] = time.sleep,
        wall_time_fn: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if requests_per_minute is not None and requests_per_minute < 0:
            raise ValueError("requests_per_minute must be >= 0 (0: no limit, None: the plan's)")
        self.api_key = api_key.strip() if api_key else None
        self.config = config or ScanConfig()
        self.clock = clock or get_clock()
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter or RateLimiter()
        self.retry = retry or RetryPolicy()
        self._requests_per_minute = requests_per_minute
        self._sleep = sleep_fn
        self._wall_time = wall_time_fn  # Retry-After dates are wall-clock times
        self._rng = rng or random.Random()
        self._timeout_s = timeout_s
        self._client: RESTClient | None = None
        self._pool: _MeteredPool | None = None
        self._outage: str | None = None  # the condition last reported, until a scan succeeds
        self._key_refused = False
        self._daily_bars: dict[date, _GroupedDay] = {}
        self._common: tuple[date, frozenset[str]] | None = None
        self._splits: tuple[tuple[date, date], tuple[Split, ...]] | None = None
        self._degraded_today: set[tuple[date, str]] = set()
        self.plan = PLANS["unknown"]
        self._apply_rate_limit()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> MassiveScanner:
        """A scanner using the settings' key (MASSIVE_API_KEY or POLYGON_API_KEY; None if
        unset), MASSIVE_REQUESTS_PER_MINUTE and SCANNER_MAX_DATA_AGE_SECONDS."""
        key = settings.massive_api_key.reveal() if settings.massive_api_key else None
        kwargs.setdefault("requests_per_minute", settings.massive_requests_per_minute)
        kwargs.setdefault(
            "config", ScanConfig(max_data_age_s=settings.scanner_max_data_age_seconds)
        )
        return cls(key, **kwargs)

    # -- plan ------------------------------------------------------------------------------
    def _apply_rate_limit(self) -> None:
        override = self._requests_per_minute
        if override is None:
            self.limiter.set_limit(self.plan.requests_per_minute)
        else:
            self.limiter.set_limit(override or None)

    def _set_plan(self, name: str, evidence: str) -> None:
        self.plan = PLANS[name]
        self._apply_rate_limit()
        limit = self.limiter.max_requests
        log.info(
            "massive_plan",
            plan=name,
            watchlist_from=self.plan.watchlist_from,
            requests_per_minute=limit if limit is not None else "unlimited",
            limit_from="MASSIVE_REQUESTS_PER_MINUTE"
            if self._requests_per_minute is not None
            else "plan",
            evidence=evidence,
        )

    def _detect_plan(self) -> dict[str, Any] | None:
        """The snapshot, asked once: its answer says the plan. Returns it (None: free plan)."""
        try:
            payload = self._snapshot_payload()
        except MarketDataError as exc:
            if exc.kind != "not_entitled":
                raise
            self._set_plan("free", f"{exc.what}: {exc.detail}")
            return None
        if payload.get("status") == "DELAYED":
            self._set_plan("delayed", 'snapshot: "status": "DELAYED"')
            return payload
        newest = _newest_update(payload)
        lag = None if newest is None else self.clock.epoch() - newest
        if lag is not None and self._in_scan_hours() and lag >= _DELAYED_IF_NEWEST_OLDER_S:
            self._set_plan("delayed", f"snapshot: newest update {lag / 60:.1f} min old")
        else:
            self._set_plan("realtime", f"snapshot: status {payload.get('status')!r}")
        return payload

    def _in_scan_hours(self) -> bool:
        return in_scan_hours(self.clock)

    # -- HTTP ------------------------------------------------------------------------------
    def _rest(self) -> RESTClient:
        if self._client is None:
            # Retry(0): every status comes back as a response (urllib3 would turn a 429 into
            # "too many 429 error responses", losing its body and Retry-After); we retry
            # ourselves, each attempt through the rate limiter.
            self._client = RESTClient(
                api_key=self.api_key,
                base=self.base_url,
                retries=0,
                connect_timeout=self._timeout_s,
                read_timeout=self._timeout_s,
                pagination=False,
                connection_pool_kw={"retries": Retry(0)},
            )
            self._pool = _MeteredPool(self._client.client, self.limiter)
            self._client.client = self._pool  # type: ignore[assignment]
        return self._client

    def _request(self, what: str, call: Callable[[RESTClient], Any]) -> Any:
        """One logical request (raw HTTP response -> decoded JSON) with limiter and retries."""
        client = self._rest()
        assert self._pool is not None
        for attempt in range(1, self.retry.max_attempts + 1):
            last_try = attempt == self.retry.max_attempts
            try:
                response = call(client)
            except BadResponse as exc:
                answer = self._pool.last_answer()
                status = answer.status if answer else 0
                text = _error_text(answer.body) if answer else str(exc)[:200]
                detail = f"HTTP {status} {text}"
                if status == 401:
                    raise MarketDataError("unauthorized", what, detail) from exc
                if status == 403:
                    raise MarketDataError("not_entitled", what, detail) from exc
                if status == 429:
                    header = answer.headers.get("retry-after") if answer else None
                    wait = retry_after_seconds(header, self._wall_time())
                    basis = "Retry-After" if wait is not None else "rate window"
                    if wait is None:
                        wait = self.limiter.seconds_until_clear()
                    if last_try or wait > self.retry.max_retry_after_s:
                        raise MarketDataError(
                            "rate_limited", what, f"{detail} (wait {wait:.0f} s by {basis})"
                        ) from exc
                    log.warning(
                        "massive_rate_limited", what=what, wait_s=wait, basis=basis, error=text
                    )
                    self._sleep(wait)
                    continue
                if status < 500 or last_try:
                    raise MarketDataError(
                        "http" if status >= 500 else "rejected", what, detail
                    ) from exc
            except (Urllib3Error, OSError) as exc:
                if last_try:
                    raise MarketDataError(
                        "network", what, f"{type(exc).__name__}: {str(exc)[:200]}"
                    ) from exc
            else:
                try:
                    return json.loads(response.data.decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise MarketDataError("bad_data", what, f"invalid JSON: {exc}") from exc
            pause = self.retry.delay(attempt, self._rng)
            log.debug("massive_retry", what=what, attempt=attempt, wait_s=pause)
            self._sleep(pause)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _pages(self, what: str, first: Callable[[RESTClient], Any]) -> list[dict[str, Any]]:
        """Every page's results: the first request, then each `next_url` alone (the cursor
        carries the query), as the client's own pagination does."""
        payload = self._request(f"{what} page 1", first)
        rows = _results(payload, what)
        for page in range(2, _MAX_PAGES + 1):
            next_url = payload.get("next_url") if isinstance(payload, dict) else None
            if not next_url:
                break
            path = _path_of(str(next_url))
            payload = self._request(
                f"{what} page {page}",
                # The client's own page step (BaseClient._paginate_iter): path + query, no params.
                lambda c, p=path: c._get(path=p, params={}, raw=True),
            )
            rows.extend(_results(payload, what))
        return rows

    # -- data ------------------------------------------------------------------------------
    def _snapshot_payload(self) -> dict[str, Any]:
        if self.config.universe == "gainers":
            payload = self._request(
                "gainers", lambda c: c.get_snapshot_direction("stocks", "gainers", raw=True)
            )
        else:
            payload = self._request("snapshot", lambda c: c.get_snapshot_all("stocks", raw=True))
        if not isinstance(payload, dict) or not isinstance(payload.get("tickers"), list):
            raise MarketDataError("bad_data", "snapshot", "no 'tickers' list in the response")
        return payload

    def fetch_snapshots(self) -> list[TickerSnapshot]:
        """The configured universe as the client's TickerSnapshot objects."""
        return _snapshots(self._snapshot_payload())

    def _snapshot_session(self) -> date:
        # On a non-trading day the snapshot still shows the last session.
        today = self.clock.today()
        return (
            today
            if self.clock.is_trading_day(today)
            else self.clock.previous_session(today).trading_date
        )

    def _sessions_before(self, anchor: date, count: int) -> list[date]:
        sessions = []
        for _ in range(count):
            anchor = self.clock.previous_session(anchor).trading_date
            sessions.append(anchor)
        return sessions

    def _grouped_days(self, sessions: Sequence[date]) -> list[_GroupedDay]:
        """Grouped daily bars (split-adjusted) of `sessions`, each fetched once and cached."""
        for day in sessions:
            if day in self._daily_bars:
                continue
            payload = self._request(
                f"grouped_daily {day}",
                lambda c, d=day: c.get_grouped_daily_aggs(d.isoformat(), adjusted=True, raw=True),
            )
            bars = {
                r["T"]: bar
                for r in _results(payload, f"grouped_daily {day}")
                if isinstance(r.get("T"), str) and (bar := _daily_bar(r)) is not None
            }
            self._daily_bars[day] = _GroupedDay(self.clock.today(), bars)
        self._daily_bars = {d: v for d, v in self._daily_bars.items() if d in sessions}
        return [self._daily_bars[d] for d in sessions]

    def fetch_average_volume(self, splits: Sequence[Split] = ()) -> dict[str, float]:
        """Average daily volume over the `avg_volume_days` sessions before the snapshot's, in
        today's shares (splits executed since a day was fetched scale it)."""
        days = self._grouped_days(
            self._sessions_before(self._snapshot_session(), self.config.avg_volume_days)
        )
        return average_daily_volume(
            [
                {
                    s: b.volume
                    for s, b in adjust_bars(d.bars, split_factors(splits, d.fetched_on)).items()
                }
                for d in days
            ]
        )

    def fetch_common_stocks(self) -> frozenset[str]:
        """Active common stocks (type CS) from the reference endpoint, cached for the day."""
        today = self.clock.today()
        if self._common is not None and self._common[0] == today:
            return self._common[1]
        rows = self._pages(
            "tickers_cs",
            lambda c: c.list_tickers(type="CS", market="stocks", active=True, limit=1000, raw=True),
        )
        self._common = (today, frozenset(r["ticker"] for r in rows if r.get("ticker")))
        return self._common[1]

    def fetch_splits(self, since: date) -> tuple[Split, ...]:
        """Splits executed from `since` to today (reference endpoint), cached for the day."""
        span = (since, self.clock.today())
        if self._splits is not None and self._splits[0] == span:
            return self._splits[1]
        rows = self._pages(
            "splits",
            lambda c: c.list_splits(
                execution_date_gte=since.isoformat(),
                execution_date_lte=span[1].isoformat(),
                limit=1000,
                raw=True,
            ),
        )
        self._splits = (span, tuple(s for r in rows if (s := _split(r)) is not None))
        return self._splits[1]

    def fetch_aggregates(
        self, symbol: str, timespan: str, start_epoch: float, end_epoch: float
    ) -> list[dict[str, Any]]:
        """`symbol`'s split-adjusted 1-`timespan` ("minute", "day") bars starting in
        [start_epoch, end_epoch] (seconds), oldest first, every page: raw rows with `t` (epoch
        ms of the bar's start) and `o`, `h`, `l`, `c`, `v`. Raises MarketDataError."""
        return self._pages(
            f"{symbol} {timespan} bars",
            lambda c: c.get_aggs(
                symbol,
                1,
                timespan,
                int(start_epoch * 1000),  # epoch ms: the window is exact, whatever its zone
                int(end_epoch * 1000),
                adjusted=True,
                sort="asc",
                limit=50_000,
                raw=True,
            ),
        )

    def _optional(self, what: str, fetch: Callable[[], T]) -> T | None:
        """Secondary data: degrade (logged once a day) unless the network or the key is bad."""
        try:
            return fetch()
        except MarketDataError as exc:
            if exc.kind in ("network", "unauthorized"):
                raise
            key = (self.clock.today(), what)
            if key not in self._degraded_today:
                self._degraded_today.add(key)
                log.warning("scanner_degraded", data=what, error=str(exc), fix=_FIXES[exc.kind])
            return None

    # -- scans -----------------------------------------------------------------------------
    def scan(self) -> Watchlist | None:
        """Ranked picks from Massive, or None (reason logged once) without a key or data."""
        if not self.api_key:
            self._report(
                "no_key",
                "MASSIVE_API_KEY (or POLYGON_API_KEY) is not set: set it in .env; the day trader "
                "uses the last watchlist file or the gateway fallback",
            )
            return None
        if self._key_refused:
            return None  # said once; the key only changes with a restart
        started = time.monotonic()
        try:
            probe = self._detect_plan() if self.plan.name == "unknown" else None
            tally = _ScanTally()
            if self.plan.has_snapshot:
                picks, basis = self._scan_snapshot(probe, tally)
            else:
                picks, basis = self._scan_previous_day(tally)
        except MarketDataError as exc:
            if exc.kind == "unauthorized":
                self._key_refused = True
            self._report(exc.kind, f"{exc}; {_FIXES[exc.kind]}")
            return None
        if self._outage is not None:
            log.info("massive_recovered", after=self._outage)
            self._outage = None
        log.info(
            "scan_done",
            plan=self.plan.name,
            basis=basis,
            tickers=tally.tickers,
            picks=len(picks),
            symbols=[p.symbol for p in picks],
            avg_volume_basis=tally.avg_volume_basis,
            picks_on_prev_day_volume=tally.picks_on_prev_day_volume,
            stale_dropped=tally.stale_dropped,
            split_adjusted=tally.split_adjusted,
            seconds=round(time.monotonic() - started, 2),
        )
        return Watchlist(
            timestamp=self.clock.now(), source="massive", picks=tuple(picks), basis=basis
        )

    def _splits_since(self, oldest: date) -> tuple[Split, ...]:
        splits = self._optional("splits", lambda: self.fetch_splits(oldest + timedelta(days=1)))
        return splits or ()

    def _scan_snapshot(
        self, probe: dict[str, Any] | None, tally: _ScanTally
    ) -> tuple[list[Pick], str]:
        config = self.config
        common = None
        if config.common_stocks_only:
            common = self._optional("common_stocks", self.fetch_common_stocks)
        session = self._snapshot_session()
        prev_session = self.clock.previous_session(session).trading_date
        in_use = self._sessions_before(session, config.avg_volume_days) or [prev_session]
        splits = self._splits_since(min(in_use))
        avg: dict[str, float] = {}
        if config.avg_volume_days:
            avg = self._optional("average_volume", lambda: self.fetch_average_volume(splits)) or {}
        # Snapshot last: the reference requests above must not age it (a probe is seconds
        # old: it came on the first scan, and paid plans have no rate limit).
        payload = probe if probe is not None else self._snapshot_payload()
        snapshots = _snapshots(payload)
        factors = split_factors(splits, after=prev_session)
        arrays = snapshot_arrays(snapshots, avg, common, factors)
        stale = stale_mask(arrays, self.clock.epoch(), self.plan.delay_s + config.max_data_age_s)
        arrays = replace(arrays, eligible=arrays.eligible & ~stale)
        tally.tickers = len(snapshots)
        tally.stale_dropped = int(np.count_nonzero(stale))
        tally.split_adjusted = sorted(set(factors) & set(arrays.symbols.tolist()))
        note = ""
        basis = "realtime"
        if self.plan.delay_s > 0:
            config = config.without(minute_part=True)  # a 15-minute-old minute bar says nothing
            note = f"data {self.plan.delay_s / 60:.0f} min delayed; "
            basis = "delayed_15m"
        today = self.clock.session()
        if today is not None and self.clock.now() < today.open:
            config = config.for_premarket()
            note += "pre-market; "
            basis += "_premarket"
        picks = rank_picks(arrays, config, note=note)
        _tally_volume_basis(tally, arrays, picks, avg, f"{config.avg_volume_days}d")
        return picks, basis

    def _scan_previous_day(self, tally: _ScanTally) -> tuple[list[Pick], str]:
        config = self.config
        common = None
        if config.common_stocks_only:
            common = self._optional("common_stocks", self.fetch_common_stocks)
        latest = self.clock.previous_session(self.clock.today())
        sessions = [
            latest.trading_date,
            *self._sessions_before(latest.trading_date, max(1, config.avg_volume_days)),
        ]
        splits = self._splits_since(min(sessions))
        days = self._grouped_days(sessions)
        bars = [adjust_bars(d.bars, split_factors(splits, d.fetched_on)) for d in days]
        arrays = previous_day_arrays(bars, common, latest.close.timestamp())
        tally.tickers = len(arrays.symbols)
        label = f"{len(sessions) - 1}d"
        picks = rank_picks(
            arrays,
            config.without(minute_part=True),
            avg_label=f"{label}-avg",
            note=f"previous day {latest.trading_date}; ",
        )
        tally.avg_volume_basis = label
        return picks, "previous_day"

    def _report(self, condition: str, message: str) -> None:
        # Once per condition: a dead key or network must not print every 15 minutes.
        if self._outage != condition:
            self._outage = condition
            log.error("scanner_unavailable", condition=condition, error=message)


def _newest_update(payload: Mapping[str, Any]) -> float | None:
    """Epoch seconds of the most recent `updated` in a snapshot payload."""
    stamps = [
        epoch_seconds(t["updated"])
        for t in payload.get("tickers") or []
        if isinstance(t, dict) and isinstance(t.get("updated"), int | float)
    ]
    return max((s for s in stamps if s is not None), default=None)


def _snapshots(payload: Mapping[str, Any]) -> list[TickerSnapshot]:
    return [TickerSnapshot.from_dict(t) for t in payload["tickers"] if isinstance(t, dict)]


def _tally_volume_basis(
    tally: _ScanTally,
    arrays: SnapshotArrays,
    picks: Sequence[Pick],
    avg: Mapping[str, float],
    label: str,
) -> None:
    """The average-volume basis the picks were actually judged on."""
    on_prev = {str(s) for s in arrays.symbols[arrays.avg_is_prev_day]}
    tally.picks_on_prev_day_volume = sum(1 for p in picks if p.symbol in on_prev)
    if not picks:
        tally.avg_volume_basis = label if avg else "prev_day"
    elif tally.picks_on_prev_day_volume == 0:
        tally.avg_volume_basis = label
    elif tally.picks_on_prev_day_volume == len(picks):
        tally.avg_volume_basis = "prev_day"
    else:
        tally.avg_volume_basis = "mixed"


# ------------------------------------------------------------ refresh loop


def in_scan_hours(clock: MarketClock, at: datetime | None = None) -> bool:
    """True on a trading day from the pre-market (04:00 New York) to the close."""
    at = (at or clock.now()).astimezone(NEW_YORK)
    session = clock.session(at.date())
    if session is None:
        return False
    premarket = session.open.replace(hour=PREMARKET_START.hour, minute=PREMARKET_START.minute)
    return premarket <= at < session.close


def refresh_watchlist(scanner: MassiveScanner, path: str | Path) -> Watchlist | None:
    """Scan once and, when it succeeds, write the watchlist file. Returns the new list or None."""
    watchlist = scanner.scan()
    if watchlist is not None:
        write_watchlist(path, watchlist)
        log.info("watchlist_written", path=str(path), picks=len(watchlist.picks))
    return watchlist


def _seconds_to_next_scan(clock: MarketClock, interval_s: float, market_hours_only: bool) -> float:
    if not market_hours_only or in_scan_hours(clock):
        return interval_s
    now = clock.now()
    session = clock.session()
    if session is None or now >= session.close:
        session = clock.next_session()
    start = session.open.replace(hour=PREMARKET_START.hour, minute=PREMARKET_START.minute)
    return max(1.0, min(interval_s, (start - now).total_seconds()))


async def run_forever(
    scanner: MassiveScanner,
    path: str | Path,
    *,
    interval_s: float = REFRESH_INTERVAL_S,
    clock: MarketClock | None = None,
    stop: asyncio.Event | None = None,
    market_hours_only: bool = True,
) -> None:
    """Refresh the watchlist every `interval_s` exchange seconds until `stop` is set.

    Sleeps on the market clock (simulated time may run faster). Scans run in a worker thread
    because the massive client and the rate limiter block. With `market_hours_only`, no
    requests are spent outside trading days' pre-market and regular hours: the first scan
    comes at 04:00 New York, so the list is ready before the open.
    """
    clock = clock or scanner.clock
    stop = stop or asyncio.Event()
    while not stop.is_set():
        if not market_hours_only or in_scan_hours(clock):
            try:
                await asyncio.to_thread(refresh_watchlist, scanner, path)
            except OSError as exc:  # the file could not be written; keep scanning
                log.error("watchlist_write_failed", path=str(path), error=str(exc))
            except Exception:  # a bug or an odd response must not end the refreshes
                log.exception("scan_crashed", path=str(path))
        pause = clock.real_seconds(_seconds_to_next_scan(clock, interval_s, market_hours_only))
        with contextlib.suppress(TimeoutError):  # the pause ended without a stop
            await asyncio.wait_for(stop.wait(), timeout=pause)


# ------------------------------------------------------------ CLI


def _build_parser() -> argparse.ArgumentParser:
    d = ScanConfig()
    p = cli.OneLineParser(
        prog="scanner_polygon.py",
        description="Momentum scanner: writes the day trader's watchlist from Massive data.",
    )
    p.add_argument("--once", action="store_true", help="scan once, print the picks and exit")
    p.add_argument("--no-write", action="store_true", help="with --once: do not write the file")
    p.add_argument("--output", type=Path, help="watchlist file (default: WATCHLIST_PATH)")
    p.add_argument("--base-url", default=MASSIVE_BASE_URL, help="API base URL (tests, proxies)")
    p.add_argument("--interval-min", type=float, default=REFRESH_INTERVAL_S / 60)
    p.add_argument("--all-hours", action="store_true", help="also scan while the market is closed")
    p.add_argument("--universe", choices=["all", "gainers"], default=d.universe)
    p.add_argument("--min-momentum", type=float, default=d.min_momentum)
    p.add_argument("--min-volume-ratio", type=float, default=d.min_volume_ratio)
    p.add_argument("--min-premarket-volume-ratio", type=float, default=d.min_premarket_volume_ratio)
    p.add_argument("--min-price", type=float, default=d.min_price)
    p.add_argument("--max-price", type=float, default=d.max_price)
    p.add_argument("--min-dollar-volume", type=float, default=d.min_dollar_volume)
    p.add_argument("--max-picks", type=int, default=d.max_picks)
    p.add_argument("--avg-days", type=int, default=d.avg_volume_days)
    p.add_argument(
        "--no-common-filter", action="store_true", help="skip the common-stock reference list"
    )
    p.add_argument(
        "--requests-per-minute",
        type=int,
        help="default MASSIVE_REQUESTS_PER_MINUTE, else the plan's (5 on the free plan, no "
        "limit on paid plans); 0: no limit",
    )
    p.add_argument(
        "--max-data-age-s",
        type=float,
        help="drop tickers whose data is older (beyond the plan's delay); default "
        "SCANNER_MAX_DATA_AGE_SECONDS",
    )
    return p


def _print_picks(watchlist: Watchlist) -> None:
    print(
        f"{len(watchlist.picks)} picks at {watchlist.timestamp.isoformat()} "
        f"({watchlist.source}, {watchlist.basis})"
    )
    for rank, pick in enumerate(watchlist.picks, 1):
        print(f"{rank:>3} {pick.symbol:<6} {pick.reason}")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from core.logs import setup_logging
    from core.settings import SettingsError, get_settings

    try:
        settings = get_settings()
        config = ScanConfig(
            min_momentum=args.min_momentum,
            min_volume_ratio=args.min_volume_ratio,
            min_premarket_volume_ratio=args.min_premarket_volume_ratio,
            min_price=args.min_price,
            max_price=args.max_price,
            min_dollar_volume=args.min_dollar_volume,
            max_picks=args.max_picks,
            avg_volume_days=args.avg_days,
            common_stocks_only=not args.no_common_filter,
            universe=args.universe,
            max_data_age_s=args.max_data_age_s or settings.scanner_max_data_age_seconds,
        )
        rpm = args.requests_per_minute
        if rpm is not None and rpm < 0:
            raise ValueError("--requests-per-minute must be >= 0 (0: no limit)")
        scanner = MassiveScanner.from_settings(
            settings,
            config=config,
            base_url=args.base_url,
            requests_per_minute=rpm if rpm is not None else settings.massive_requests_per_minute,
        )
    except (SettingsError, ValueError) as exc:
        print(f"scanner_polygon.py: error: {exc}", file=sys.stderr)
        return 2
    setup_logging("scanner", settings.log_dir, settings.log_level)
    path = args.output or settings.watchlist_path
    if args.once:
        watchlist = scanner.scan() if args.no_write else refresh_watchlist(scanner, path)
        if watchlist is None:
            print("no scan: see the log line above", file=sys.stderr)
            return 1
        _print_picks(watchlist)
        return 0
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
        asyncio.run(
            run_forever(
                scanner,
                path,
                interval_s=args.interval_min * 60,
                market_hours_only=not args.all_hours,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
