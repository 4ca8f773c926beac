"""Momentum scanner: ranks US stocks from Massive (ex-Polygon.io) snapshots into the day
trader's watchlist (`day_trading_watchlist.json`), every 15 minutes.

Data (official `massive` client, key in MASSIVE_API_KEY, POLYGON_API_KEY accepted):
  - the full-market snapshot /v2/snapshot/locale/us/markets/stocks/tickers (or the top-20
    gainers /v2/snapshot/locale/us/markets/stocks/gainers with `universe="gainers"`);
  - grouped daily bars /v2/aggs/grouped/locale/us/market/stocks/{date} for the last
    `avg_volume_days` sessions (average daily volume; past days never change, so cached);
  - /v3/reference/tickers?type=CS once a day: the common-stock list.

Momentum score in [0, 1], per ticker (L last price, P previous close, H/Lo today's high/low,
m_o/m_c the last minute bar's open/close):
    change   = clip(((L - P) / P * 100) / full_change_pct, 0, 1)       # +10% or more -> 1
    position = clip((L - Lo) / (H - Lo), 0, 1), 0.5 when H == Lo         # at the high -> 1
    minute   = clip(0.5 + ((m_c - m_o) / m_o * 100) / (2 * full_minute_change_pct), 0, 1)
               (flat or missing minute bar -> 0.5; +1% -> 1; -1% -> 0)
    momentum = clip(0.5 * change + 0.3 * position + 0.2 * minute, 0, 1)
Volume ratio = today's volume so far / average daily volume of the previous sessions
(grouped daily bars); when those are unavailable, the previous day's volume from the snapshot.
It is not time-of-day adjusted, so early in the session it understates (conservative).

A pick needs momentum >= 0.7, volume ratio > 2.0, $2 <= price <= $500, today's dollar volume
>= $1M, not OTC, and a common stock when the reference list is available (all configurable).

Rate limit: free tier 5 requests/minute, enforced by `RateLimiter` over *every* HTTP attempt,
retries included (the client's own urllib3 retries are off, ours count against the budget).
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
import re
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlparse

import numpy as np
from massive import RESTClient
from massive.exceptions import BadResponse
from massive.rest import BASE as MASSIVE_BASE_URL
from massive.rest.models import TickerSnapshot
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, ResponseError

from core import cli
from core.clock import MarketClock, get_clock
from core.logs import get_logger
from core.settings import Settings
from core.tickers import is_ticker

log = get_logger("scanner")

T = TypeVar("T")

SOURCES = frozenset({"massive", "gateway", "cache"})
WATCHLIST_VERSION = 1
REFRESH_INTERVAL_S = 15 * 60.0
# Bounds the common-stock list download (about 5,000 names at 1,000 per page).
_MAX_REFERENCE_PAGES = 10


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ScanConfig:
    """Filter thresholds and score shape; validated at construction."""

    min_momentum: float = 0.7
    min_volume_ratio: float = 2.0  # strict: ratio must be greater
    min_price: float = 2.0
    max_price: float = 500.0
    min_dollar_volume: float = 1_000_000.0
    max_picks: int = 20
    full_change_pct: float = 10.0  # today's gain that scores 1.0 on the change component
    full_minute_change_pct: float = 1.0  # last-minute gain that scores 1.0 on the minute part
    weight_change: float = 0.5
    weight_range: float = 0.3
    weight_minute: float = 0.2
    avg_volume_days: int = 5  # 0: use the snapshot's previous-day volume only
    common_stocks_only: bool = True
    universe: Literal["all", "gainers"] = "all"

    def __post_init__(self) -> None:
        weights = self.weight_change + self.weight_range + self.weight_minute
        checks = [
            (0.0 <= self.min_momentum <= 1.0, "min_momentum must be in [0, 1]"),
            (self.min_volume_ratio >= 0, "min_volume_ratio must be >= 0"),
            (0 <= self.min_price < self.max_price, "need 0 <= min_price < max_price"),
            (self.min_dollar_volume >= 0, "min_dollar_volume must be >= 0"),
            (self.max_picks >= 1, "max_picks must be >= 1"),
            (self.full_change_pct > 0 and self.full_minute_change_pct > 0, "full_* must be > 0"),
            (math.isclose(weights, 1.0), f"weights must sum to 1, got {weights}"),
            (0 <= self.avg_volume_days <= 30, "avg_volume_days must be in [0, 30]"),
            (self.universe in ("all", "gainers"), "universe must be 'all' or 'gainers'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"scanner config: {message}")


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
    return Watchlist(timestamp=now or get_clock().now(), source=source, picks=picks)


# ------------------------------------------------------------ pure filtering


@dataclass(frozen=True)
class SnapshotArrays:
    """The snapshot parsed once into aligned arrays (NaN = missing) for vectorised scoring."""

    symbols: np.ndarray  # str objects
    last: np.ndarray
    prev_close: np.ndarray
    day_high: np.ndarray
    day_low: np.ndarray
    day_volume: np.ndarray
    minute_open: np.ndarray
    minute_close: np.ndarray
    avg_volume: np.ndarray  # average daily volume, or the previous day's volume
    avg_is_prev_day: np.ndarray  # bool: avg_volume fell back to the previous day's volume
    eligible: np.ndarray  # bool: not OTC, and a common stock when the list is known


def _positive(column: np.ndarray) -> np.ndarray:
    """Prices must be > 0: zero (pre-market day bars) and missing become NaN."""
    with np.errstate(invalid="ignore"):
        return np.where(column > 0, column, np.nan)


def snapshot_arrays(
    snapshots: Sequence[TickerSnapshot],
    avg_volume: Mapping[str, float] | None = None,
    common_stocks: Set[str] | None = None,
) -> SnapshotArrays:
    """Parse `TickerSnapshot` objects into arrays in one pass.

    Last price: last trade, else the last minute bar's close, else the day bar's close.
    Average volume: `avg_volume[symbol]`, else the previous day's volume (flagged).
    `common_stocks` None means the type is unknown: every non-OTC ticker stays eligible.
    """
    avg_volume = avg_volume or {}
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
        rows.append(
            (
                trade.price if trade else None,
                minute.close if minute else None,
                day.close if day else None,
                prev.close if prev else None,
                day.high if day else None,
                day.low if day else None,
                day.volume if day else None,
                minute.open if minute else None,
                avg_volume.get(symbol),
                prev.volume if prev else None,
            )
        )
    cols = np.array(rows, dtype=float).reshape(len(rows), 10).T  # None -> NaN
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
    )


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


def rank_picks(a: SnapshotArrays, config: ScanConfig) -> list[Pick]:
    """The tickers passing every filter, best momentum first (ties: higher volume ratio)."""
    s = score_snapshot(a, config)
    idx = np.flatnonzero(s.passed)
    order = idx[np.lexsort((-s.volume_ratio[idx], -s.momentum[idx]))][: config.max_picks]
    picks = []
    for i in order:
        basis = "prev-day" if a.avg_is_prev_day[i] else f"{config.avg_volume_days}d-avg"
        reason = (
            f"momentum {s.momentum[i]:.2f}>={config.min_momentum:.2f} "
            f"(chg {s.change_pct[i]:+.1f}%, range pos {s.range_position[i]:.2f}, "
            f"1m {s.minute_change_pct[i]:+.2f}%); "
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
    return Watchlist(timestamp=stamp, source=source, picks=tuple(picks), rejected=tuple(rejected))


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


# ------------------------------------------------------------ rate limit, retry


class RateLimiter:
    """At most `max_requests` in ANY `per_seconds` window (a sliding log of request times).

    A plain token bucket refilling 5/min would allow up to 9 requests in one 60 s window
    (5 burst + 4 refills); the sliding log cannot. Thread-safe; time is injectable.
    """

    def __init__(
        self,
        max_requests: int = 5,
        per_seconds: float = 60.0,
        time_fn: Callable[[], float] = time.monotonic,
        sleep_fn: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_requests < 1 or per_seconds <= 0:
            raise ValueError("rate limiter needs max_requests >= 1 and per_seconds > 0")
        self.max_requests = max_requests
        self.per_seconds = per_seconds
        self._time = time_fn
        self._sleep = sleep_fn
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until a request may be sent and record it; returns the seconds waited."""
        waited = 0.0
        with self._lock:
            while True:
                now = self._time()
                while self._sent and now - self._sent[0] >= self.per_seconds:
                    self._sent.popleft()
                if len(self._sent) < self.max_requests:
                    self._sent.append(now)
                    return waited
                pause = self._sent[0] + self.per_seconds - now
                self._sleep(pause)
                waited += pause


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of 429/5xx/network errors with exponential backoff and jitter."""

    max_attempts: int = 4
    base_delay_s: float = 2.0
    max_delay_s: float = 30.0

    def delay(self, retry_number: int, rng: random.Random) -> float:
        """Seconds before retry `retry_number` (1-based): half fixed, half random ("equal jitter")."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (retry_number - 1))
        return cap / 2 + rng.random() * cap / 2


class MarketDataError(Exception):
    """A Massive request failed for good. `kind`: network, http (429/5xx), rejected, bad_data."""

    def __init__(self, kind: str, what: str, detail: str) -> None:
        super().__init__(f"{what}: {kind}: {detail}")
        self.kind = kind
        self.what = what
        self.detail = detail


_STATUS_RE = re.compile(r"too many (\d+) error responses")

_FIXES = {
    "network": "check the network/proxy or the base URL; the day trader keeps the last watchlist",
    "http": "Massive is overloaded or rate-limiting (another process on this key?); will retry "
    "at the next refresh",
    "rejected": "check MASSIVE_API_KEY and that the plan includes stock snapshots",
    "bad_data": "unexpected response shape; report it, the day trader keeps the last watchlist",
}


def _classify(exc: BaseException) -> tuple[str, bool, str]:
    """(kind, retryable, detail) for an exception raised by the massive client."""
    # The client's urllib3 Retry(total=0) turns 429/5xx into MaxRetryError(ResponseError).
    if isinstance(exc, MaxRetryError) and isinstance(exc.reason, ResponseError):
        match = _STATUS_RE.search(str(exc.reason))
        return "http", True, f"HTTP {match.group(1) if match else '?'}"
    if isinstance(exc, BadResponse):  # any other non-200: 401/403/404, not worth retrying
        return "rejected", False, str(exc)[:200]
    if isinstance(exc, MaxRetryError):
        return "network", True, str(exc.reason)[:200]
    return "network", True, f"{type(exc).__name__}: {str(exc)[:200]}"


# ------------------------------------------------------------ scanner (I/O)


class MassiveScanner:
    """Fetches snapshots through the official `massive` client and ranks picks.

    `scan()` returns a Watchlist (source "massive"), or None when there is no key or the data
    cannot be had; each such condition is logged once until a scan succeeds again.
    """

    def __init__(
        self,
        api_key: str | None,
        *,
        config: ScanConfig | None = None,
        clock: MarketClock | None = None,
        base_url: str = MASSIVE_BASE_URL,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        sleep_fn: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.api_key = api_key.strip() if api_key else None
        self.config = config or ScanConfig()
        self.clock = clock or get_clock()
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter or RateLimiter()
        self.retry = retry or RetryPolicy()
        self._sleep = sleep_fn
        self._rng = rng or random.Random()
        self._timeout_s = timeout_s
        self._client: RESTClient | None = None
        self._outage: str | None = None  # the condition last reported, until a scan succeeds
        self._daily_volumes: dict[date, dict[str, float]] = {}
        self._common: tuple[date, frozenset[str]] | None = None
        self._degraded_today: set[tuple[date, str]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> MassiveScanner:
        """A scanner using the settings' MASSIVE_API_KEY (or POLYGON_API_KEY), None if unset."""
        key = settings.massive_api_key.reveal() if settings.massive_api_key else None
        return cls(key, **kwargs)

    def _rest(self) -> RESTClient:
        if self._client is None:
            # retries=0: we retry ourselves so that every attempt passes the rate limiter.
            self._client = RESTClient(
                api_key=self.api_key,
                base=self.base_url,
                retries=0,
                connect_timeout=self._timeout_s,
                read_timeout=self._timeout_s,
                pagination=False,
            )
        return self._client

    def _request(self, what: str, call: Callable[[RESTClient], Any]) -> Any:
        """One logical request (raw HTTP response -> decoded JSON) with limiter and retries."""
        client = self._rest()
        for attempt in range(1, self.retry.max_attempts + 1):
            self.limiter.acquire()
            try:
                response = call(client)
            except (BadResponse, Urllib3Error, OSError) as exc:
                kind, retryable, detail = _classify(exc)
                if not retryable or attempt == self.retry.max_attempts:
                    raise MarketDataError(kind, what, detail) from exc
                pause = self.retry.delay(attempt, self._rng)
                log.debug("massive_retry", what=what, attempt=attempt, error=detail, wait_s=pause)
                self._sleep(pause)
                continue
            try:
                return json.loads(response.data.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise MarketDataError("bad_data", what, f"invalid JSON: {exc}") from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def fetch_snapshots(self) -> list[TickerSnapshot]:
        """The configured universe as the client's TickerSnapshot objects."""
        if self.config.universe == "gainers":
            payload = self._request(
                "gainers", lambda c: c.get_snapshot_direction("stocks", "gainers", raw=True)
            )
        else:
            payload = self._request("snapshot", lambda c: c.get_snapshot_all("stocks", raw=True))
        tickers = payload.get("tickers") if isinstance(payload, dict) else None
        if not isinstance(tickers, list):
            raise MarketDataError("bad_data", "snapshot", "no 'tickers' list in the response")
        return [TickerSnapshot.from_dict(t) for t in tickers if isinstance(t, dict)]

    def _snapshot_session(self) -> date:
        # On a non-trading day the snapshot still shows the last session.
        today = self.clock.today()
        return (
            today
            if self.clock.is_trading_day(today)
            else self.clock.previous_session(today).trading_date
        )

    def fetch_average_volume(self) -> dict[str, float]:
        """Average daily volume over the `avg_volume_days` sessions before the snapshot's."""
        days = self.config.avg_volume_days
        if days == 0:
            return {}
        sessions: list[date] = []
        anchor = self._snapshot_session()
        for _ in range(days):
            anchor = self.clock.previous_session(anchor).trading_date
            sessions.append(anchor)
        for day in sessions:
            if day in self._daily_volumes:
                continue
            payload = self._request(
                f"grouped_daily {day}",
                lambda c, d=day: c.get_grouped_daily_aggs(d.isoformat(), adjusted=True, raw=True),
            )
            rows = payload.get("results") if isinstance(payload, dict) else None
            self._daily_volumes[day] = {
                r["T"]: float(r["v"])
                for r in rows or []
                if isinstance(r, dict) and isinstance(r.get("T"), str) and r.get("v")
            }
        self._daily_volumes = {d: v for d, v in self._daily_volumes.items() if d in sessions}
        return average_daily_volume([self._daily_volumes[d] for d in sessions])

    def fetch_common_stocks(self) -> frozenset[str]:
        """Active common stocks (type CS) from the reference endpoint, cached for the day."""
        today = self.clock.today()
        if self._common is not None and self._common[0] == today:
            return self._common[1]
        symbols: set[str] = set()
        cursor: str | None = None
        for page in range(_MAX_REFERENCE_PAGES):
            params = {"cursor": cursor} if cursor else None
            payload = self._request(
                f"tickers_cs page {page + 1}",
                lambda c, p=params: c.list_tickers(
                    type="CS", market="stocks", active=True, limit=1000, params=p, raw=True
                ),
            )
            if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
                raise MarketDataError("bad_data", "tickers_cs", "no 'results' list")
            symbols.update(
                r["ticker"] for r in payload["results"] if isinstance(r, dict) and r.get("ticker")
            )
            next_url = payload.get("next_url")
            cursor = (
                parse_qs(urlparse(next_url).query).get("cursor", [None])[0] if next_url else None
            )
            if not cursor:
                break
        self._common = (today, frozenset(symbols))
        return self._common[1]

    def _optional(self, what: str, fetch: Callable[[], T]) -> T | None:
        """Secondary data: degrade (logged once a day) unless the network itself is down."""
        try:
            return fetch()
        except MarketDataError as exc:
            if exc.kind == "network":
                raise
            key = (self.clock.today(), what)
            if key not in self._degraded_today:
                self._degraded_today.add(key)
                log.warning("scanner_degraded", data=what, error=str(exc), fix=_FIXES[exc.kind])
            return None

    def scan(self) -> Watchlist | None:
        """Ranked picks from Massive, or None (reason logged once) without a key or data."""
        if not self.api_key:
            self._report(
                "no_key",
                "MASSIVE_API_KEY (or POLYGON_API_KEY) is not set: set it in .env; the day trader "
                "uses the last watchlist file or the gateway fallback",
            )
            return None
        started = time.monotonic()
        try:
            common = None
            if self.config.common_stocks_only:
                common = self._optional("common_stocks", self.fetch_common_stocks)
            avg = self._optional("average_volume", self.fetch_average_volume) or {}
            # Snapshot last: the slow reference requests above must not age it.
            snapshots = self.fetch_snapshots()
        except MarketDataError as exc:
            self._report(exc.kind, f"{exc}; {_FIXES[exc.kind]}")
            return None
        picks = rank_picks(snapshot_arrays(snapshots, avg, common), self.config)
        if self._outage is not None:
            log.info("massive_recovered", after=self._outage)
            self._outage = None
        log.info(
            "scan_done",
            tickers=len(snapshots),
            picks=len(picks),
            symbols=[p.symbol for p in picks],
            avg_volume_basis="prev_day" if not avg else f"{self.config.avg_volume_days}d",
            common_filter=common is not None,
            seconds=round(time.monotonic() - started, 2),
        )
        return Watchlist(timestamp=self.clock.now(), source="massive", picks=tuple(picks))

    def _report(self, condition: str, message: str) -> None:
        # Once per condition: a dead key or network must not print every 15 minutes.
        if self._outage != condition:
            self._outage = condition
            log.error("scanner_unavailable", condition=condition, error=message)


# ------------------------------------------------------------ refresh loop


def refresh_watchlist(scanner: MassiveScanner, path: str | Path) -> Watchlist | None:
    """Scan once and, when it succeeds, write the watchlist file. Returns the new list or None."""
    watchlist = scanner.scan()
    if watchlist is not None:
        write_watchlist(path, watchlist)
        log.info("watchlist_written", path=str(path), picks=len(watchlist.picks))
    return watchlist


def _seconds_to_next_scan(clock: MarketClock, interval_s: float, market_hours_only: bool) -> float:
    if not market_hours_only or clock.is_market_open():
        return interval_s
    now = clock.now()
    session = clock.session()
    next_open = session.open if session and session.open > now else clock.next_session().open
    return max(1.0, min(interval_s, (next_open - now).total_seconds()))


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
    requests are spent while the exchange is closed; the first scan comes at the open.
    """
    clock = clock or scanner.clock
    stop = stop or asyncio.Event()
    while not stop.is_set():
        if not market_hours_only or clock.is_market_open():
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
        description="Momentum scanner: writes the day trader's watchlist from Massive snapshots.",
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
    p.add_argument("--min-price", type=float, default=d.min_price)
    p.add_argument("--max-price", type=float, default=d.max_price)
    p.add_argument("--min-dollar-volume", type=float, default=d.min_dollar_volume)
    p.add_argument("--max-picks", type=int, default=d.max_picks)
    p.add_argument("--avg-days", type=int, default=d.avg_volume_days)
    p.add_argument(
        "--no-common-filter", action="store_true", help="skip the common-stock reference list"
    )
    p.add_argument("--requests-per-minute", type=int, default=5, help="5 on the free tier")
    return p


def _print_picks(watchlist: Watchlist) -> None:
    print(f"{len(watchlist.picks)} picks at {watchlist.timestamp.isoformat()} ({watchlist.source})")
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
            min_price=args.min_price,
            max_price=args.max_price,
            min_dollar_volume=args.min_dollar_volume,
            max_picks=args.max_picks,
            avg_volume_days=args.avg_days,
            common_stocks_only=not args.no_common_filter,
            universe=args.universe,
        )
        limiter = RateLimiter(max_requests=args.requests_per_minute)
    except (SettingsError, ValueError) as exc:
        print(f"scanner_polygon.py: error: {exc}", file=sys.stderr)
        return 2
    setup_logging("scanner", settings.log_dir, settings.log_level)
    path = args.output or settings.watchlist_path
    scanner = MassiveScanner.from_settings(
        settings, config=config, base_url=args.base_url, limiter=limiter
    )
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
