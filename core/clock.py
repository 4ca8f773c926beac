"""The one clock: exchange time, the XNYS calendar, and the simulated clock.

Every market decision asks this module for the time. In simulation the simulated gateway
publishes its clock in a small JSON file (`write_sim_clock_file`); every process that points
`CLOCK_FILE` at it follows the same simulated time, at the same speed.

Clock file format (JSON, written atomically):
    {"real_anchor": <unix seconds, real>, "sim_anchor": <unix seconds, simulated>,
     "speed": <simulated seconds per real second>}
    sim_now = sim_anchor + (time.time() - real_anchor) * speed
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from trading.phases import day_phase

NEW_YORK = ZoneInfo("America/New_York")
CALENDAR_NAME = "XNYS"
# The sessions, once taken from exchange_calendars, are kept here as plain JSON: that library
# and pandas cost every process a second to import and tens of MiB to hold.
CALENDAR_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"
# The calendar covers 1990 to two years ahead: old enough for any recorded intraday data one
# may replay (building it once costs about the same as a three-year one).
CALENDAR_FIRST_DAY = date(1990, 1, 1)
# How often (real seconds) a file-driven clock re-reads its file; cheap enough for hot paths.
_CLOCK_FILE_RECHECK_S = 0.25


class ClockError(RuntimeError):
    """The simulated clock file is unreadable or malformed, or a date is outside the
    exchange calendar."""


class CalendarRangeError(ClockError, ValueError):
    """A date outside the exchange calendar the clock loads; the message gives the range."""


class TimeSource(Protocol):
    def epoch(self) -> float:
        """Current time as unix seconds (real or simulated)."""

    def speed(self) -> float:
        """Simulated seconds per real second (1.0 for the wall clock)."""


class SystemTimeSource:
    def epoch(self) -> float:
        return time.time()

    def speed(self) -> float:
        return 1.0


@dataclass(frozen=True)
class SimulatedTimeSource:
    """Simulated time: `sim_anchor` at real time `real_anchor`, running `speed` times faster."""

    real_anchor: float
    sim_anchor: float
    speed_factor: float = 1.0

    def epoch(self) -> float:
        return self.sim_anchor + (time.time() - self.real_anchor) * self.speed_factor

    def speed(self) -> float:
        return self.speed_factor

    @classmethod
    def starting_at(cls, sim_start: datetime, speed: float = 1.0) -> SimulatedTimeSource:
        if sim_start.tzinfo is None:
            raise ClockError("simulated start time must be timezone-aware (e.g. America/New_York)")
        if speed <= 0:
            raise ClockError(f"simulated clock speed must be > 0, got {speed}")
        return cls(real_anchor=time.time(), sim_anchor=sim_start.timestamp(), speed_factor=speed)


class ManualTimeSource:
    """Time that moves only when told to (tests and replays)."""

    def __init__(self, start: datetime | float, speed: float = 1.0) -> None:
        self._epoch = start.timestamp() if isinstance(start, datetime) else float(start)
        self._speed = speed

    def epoch(self) -> float:
        return self._epoch

    def speed(self) -> float:
        return self._speed

    def set(self, moment: datetime | float) -> None:
        self._epoch = moment.timestamp() if isinstance(moment, datetime) else float(moment)

    def advance(self, seconds: float) -> None:
        self._epoch += seconds


def write_sim_clock_file(path: str | Path, source: SimulatedTimeSource) -> None:
    """Publish a simulated clock atomically (temp file + rename) so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "real_anchor": source.real_anchor,
        "sim_anchor": source.sim_anchor,
        "speed": source.speed_factor,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def read_sim_clock_file(path: str | Path) -> SimulatedTimeSource:
    """Read a clock file. Raises ClockError naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        source = SimulatedTimeSource(
            real_anchor=float(payload["real_anchor"]),
            sim_anchor=float(payload["sim_anchor"]),
            speed_factor=float(payload["speed"]),
        )
    except FileNotFoundError as exc:
        raise ClockError(
            f"clock file {path} does not exist: start the simulated gateway first or unset CLOCK_FILE"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClockError(
            f"clock file {path} is malformed ({exc}): delete it and restart the simulated gateway"
        ) from exc
    if source.speed_factor <= 0:
        raise ClockError(f"clock file {path} has speed {source.speed_factor}; it must be > 0")
    return source


class FileTimeSource:
    """Follows a clock file, re-reading it when it changes (the simulator may restart or jump)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._source = read_sim_clock_file(self.path)
        self._mtime_ns = self.path.stat().st_mtime_ns
        self._checked_at = time.monotonic()
        self._lock = threading.Lock()

    def _current(self) -> SimulatedTimeSource:
        now = time.monotonic()
        if now - self._checked_at >= _CLOCK_FILE_RECHECK_S:
            with self._lock:
                self._checked_at = now
                try:
                    mtime_ns = self.path.stat().st_mtime_ns
                    if mtime_ns != self._mtime_ns:
                        self._source = read_sim_clock_file(self.path)
                        self._mtime_ns = mtime_ns
                except (OSError, ClockError):
                    pass  # keep the last good clock: the simulator is rewriting or gone
        return self._source

    def epoch(self) -> float:
        return self._current().epoch()

    def speed(self) -> float:
        return self._current().speed()


_calendar_lock = threading.Lock()  # one build, however many threads ask at once


def _calendar() -> _SessionTable:
    with _calendar_lock:
        return _build_calendar()


def preload_calendar() -> None:
    """Load the exchange calendar in a background thread now: the first process of a
    calendar range builds it from exchange_calendars (about a second), and an exit manager
    restarted with positions to protect must not wait for it between connecting and
    placing their stops."""
    threading.Thread(target=_calendar, name="calendar-preload", daemon=True).start()


def calendar_loaded() -> bool:
    """True once the exchange calendar is built: asking it anything is instant from then on."""
    return _build_calendar.cache_info().currsize > 0


@dataclass(frozen=True)
class _SessionTable:
    """The exchange's regular sessions from `first` to `last`: sorted date ordinals with
    their open and close as unix times."""

    first: date
    last: date
    days: tuple[int, ...]
    opens: tuple[float, ...]
    closes: tuple[float, ...]

    def _check(self, day: date) -> None:
        if not self.first <= day <= self.last:
            first, last = date.fromordinal(self.days[0]), date.fromordinal(self.days[-1])
            raise CalendarRangeError(
                f"{day} is outside the {CALENDAR_NAME} calendar ({first} to {last}); "
                "pick a date in that range"
            )

    def index_of(self, day: date) -> int | None:
        """The position of `day`'s session, or None when the exchange is closed that day.
        Raises ClockError outside the table's range."""
        self._check(day)
        at = bisect.bisect_left(self.days, day.toordinal())
        return at if at < len(self.days) and self.days[at] == day.toordinal() else None

    def next_after(self, day: date) -> int:
        self._check(day)
        at = bisect.bisect_right(self.days, day.toordinal())
        if at >= len(self.days):
            raise ClockError(f"no session after {day} within the calendar (to {self.last})")
        return at

    def previous_before(self, day: date) -> int:
        self._check(day)
        at = bisect.bisect_left(self.days, day.toordinal()) - 1
        if at < 0:
            raise ClockError(f"no session before {day} within the calendar (from {self.first})")
        return at

    def session_at(self, index: int) -> Session:
        return Session(
            trading_date=date.fromordinal(self.days[index]),
            open=datetime.fromtimestamp(self.opens[index], NEW_YORK),
            close=datetime.fromtimestamp(self.closes[index], NEW_YORK),
        )


def _table_from_library(first: date, last: date) -> _SessionTable:
    """The sessions from exchange_calendars itself (imports pandas: about a second)."""
    import warnings

    import exchange_calendars as xcals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecation noise from inside the library
        calendar = xcals.get_calendar(CALENDAR_NAME, start=first.isoformat(), end=last.isoformat())
    schedule = calendar.schedule
    return _SessionTable(
        first,
        last,
        tuple(stamp.date().toordinal() for stamp in schedule.index),
        tuple(stamp.timestamp() for stamp in schedule["open"]),
        tuple(stamp.timestamp() for stamp in schedule["close"]),
    )


def _calendar_cache_file(first: date, last: date) -> Path | None:
    """The cache file of this range and library version; None when the library is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        library = version("exchange_calendars")
    except PackageNotFoundError:
        return None
    return CALENDAR_CACHE_DIR / f"{CALENDAR_NAME}_{library}_{first}_{last}.json"


def _read_cached_table(path: Path, first: date, last: date) -> _SessionTable | None:
    try:
        payload = json.loads(path.read_text())
        table = _SessionTable(
            first, last, tuple(payload["days"]), tuple(payload["opens"]), tuple(payload["closes"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, half-written by another process, or damaged: build it again
    ok = len(table.days) == len(table.opens) == len(table.closes) > 0
    return table if ok and list(table.days) == sorted(table.days) else None


def _write_cached_table(path: Path, table: _SessionTable) -> None:
    """Atomically, so a process reading at the same moment sees all of it or none."""
    payload = {"days": table.days, "opens": table.opens, "closes": table.closes}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only install: every process builds its own, as before


@lru_cache(maxsize=1)
def _build_calendar() -> _SessionTable:
    today = date.today()
    first, last = CALENDAR_FIRST_DAY, date(today.year + 2, 12, 31)
    cache = _calendar_cache_file(first, last)
    table = _read_cached_table(cache, first, last) if cache is not None else None
    if table is None:
        table = _table_from_library(first, last)
        if cache is not None:
            _write_cached_table(cache, table)
    return table


@dataclass(frozen=True)
class Session:
    """One regular trading session, times in America/New_York."""

    trading_date: date
    open: datetime
    close: datetime

    @property
    def is_half_day(self) -> bool:
        return self.close.hour < 16


class MarketClock:
    """Exchange time and the XNYS calendar, driven by a real or simulated time source."""

    def __init__(self, source: TimeSource | None = None) -> None:
        self.source: TimeSource = source or SystemTimeSource()

    # -- time -------------------------------------------------------------
    def epoch(self) -> float:
        return self.source.epoch()

    def now(self) -> datetime:
        """Current exchange time (aware, America/New_York)."""
        return datetime.fromtimestamp(self.source.epoch(), NEW_YORK)

    def today(self) -> date:
        """The trading date: the calendar date in New York, never the machine's local date."""
        return self.now().date()

    def today_str(self) -> str:
        return self.today().isoformat()

    @property
    def speed(self) -> float:
        return self.source.speed()

    def real_seconds(self, market_seconds: float) -> float:
        """Real seconds that `market_seconds` of exchange time take at the current speed."""
        return market_seconds / self.source.speed()

    async def sleep(self, market_seconds: float) -> None:
        await asyncio.sleep(max(0.0, self.real_seconds(market_seconds)))

    # -- calendar ---------------------------------------------------------
    def is_trading_day(self, day: date | None = None) -> bool:
        """Raises CalendarRangeError for a day outside the calendar (1990 to two years ahead)."""
        return _calendar().index_of(day or self.today()) is not None

    def session(self, day: date | None = None) -> Session | None:
        """The regular session of `day` (default today), or None when the exchange is closed."""
        return _session(day or self.today())

    def next_session(self, after: date | None = None) -> Session:
        table = _calendar()
        return table.session_at(table.next_after(after or self.today()))

    def previous_session(self, before: date | None = None) -> Session:
        table = _calendar()
        return table.session_at(table.previous_before(before or self.today()))

    def is_market_open(self, at: datetime | None = None) -> bool:
        """True during regular hours of a trading day (open inclusive, close exclusive)."""
        at = at or self.now()
        return day_phase(at, self.session(at.astimezone(NEW_YORK).date())).regular_hours

    def seconds_until(self, moment: datetime) -> float:
        """Exchange seconds from now until `moment` (negative if past)."""
        return moment.timestamp() - self.epoch()


@lru_cache(maxsize=64)
def _session(day: date) -> Session | None:
    table = _calendar()
    index = table.index_of(day)
    return None if index is None else table.session_at(index)


_default_clock: MarketClock | None = None
_default_lock = threading.Lock()


def get_clock(clock_file: str | Path | None = None) -> MarketClock:
    """The process-wide clock: follows `clock_file` (or $CLOCK_FILE) when set, else wall time."""
    global _default_clock
    with _default_lock:
        if clock_file is not None:
            return MarketClock(FileTimeSource(clock_file))
        if _default_clock is None:
            path = os.environ.get("CLOCK_FILE", "").strip()
            _default_clock = MarketClock(FileTimeSource(path) if path else SystemTimeSource())
        return _default_clock


def set_clock(clock: MarketClock | None) -> None:
    """Replace the process-wide clock (tests, and programs that build one from settings)."""
    global _default_clock
    with _default_lock:
        _default_clock = clock
