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
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
CALENDAR_NAME = "XNYS"
# The calendar covers 1990 to two years ahead: old enough for any recorded intraday data one
# may replay, and building it costs the same (about 0.4 s) as a three-year one.
CALENDAR_FIRST_DAY = date(1990, 1, 1)
# How often (real seconds) a file-driven clock re-reads its file; cheap enough for hot paths.
_CLOCK_FILE_RECHECK_S = 0.25


class ClockError(RuntimeError):
    """The simulated clock file is unreadable or malformed."""


class CalendarRangeError(ValueError):
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


def _calendar():  # type: ignore[no-untyped-def]
    with _calendar_lock:
        return _build_calendar()


def preload_calendar() -> None:
    """Build the exchange calendar in a background thread now: it takes about a second
    (pandas, exchange_calendars), and an exit manager restarted with positions to protect
    must not wait for it between connecting and placing their stops."""
    threading.Thread(target=_calendar, name="calendar-preload", daemon=True).start()


def calendar_loaded() -> bool:
    """True once the exchange calendar is built: asking it anything is instant from then on."""
    return _build_calendar.cache_info().currsize > 0


@lru_cache(maxsize=1)
def _build_calendar():  # type: ignore[no-untyped-def]
    import warnings

    import exchange_calendars as xcals

    today = date.today()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecation noise from inside the library
        calendar = xcals.get_calendar(
            CALENDAR_NAME,
            start=CALENDAR_FIRST_DAY.isoformat(),
            end=f"{today.year + 2}-12-31",
        )
    return calendar


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
        """True on an XNYS session. Raises CalendarRangeError outside the loaded calendar."""
        import pandas as pd

        day = _in_calendar(day or self.today())
        return bool(_calendar().is_session(pd.Timestamp(day)))

    def session(self, day: date | None = None) -> Session | None:
        """The regular session of `day` (default today), or None when the exchange is closed."""
        return _session(day or self.today())

    def next_session(self, after: date | None = None) -> Session:
        import pandas as pd

        day = _in_calendar(after or self.today())
        nxt = _calendar().date_to_session(pd.Timestamp(day) + pd.Timedelta(days=1), "next")
        session = _session(nxt.date())
        assert session is not None
        return session

    def previous_session(self, before: date | None = None) -> Session:
        import pandas as pd

        day = _in_calendar(before or self.today())
        prev = _calendar().date_to_session(pd.Timestamp(day) - pd.Timedelta(days=1), "previous")
        session = _session(prev.date())
        assert session is not None
        return session

    def is_market_open(self, at: datetime | None = None) -> bool:
        """True during regular hours of a trading day (open inclusive, close exclusive)."""
        at = at or self.now()
        session = self.session(at.astimezone(NEW_YORK).date())
        return session is not None and session.open <= at < session.close

    def close_minus(self, minutes: float, day: date | None = None) -> datetime | None:
        """Today's (or `day`'s) close minus `minutes`; None when the exchange is closed that day."""
        session = self.session(day)
        return None if session is None else session.close - timedelta(minutes=minutes)

    def is_before_close_minus(self, minutes: float, at: datetime | None = None) -> bool:
        """True while the market is open and `at` is earlier than close - `minutes`."""
        at = at or self.now()
        cutoff = self.close_minus(minutes, at.astimezone(NEW_YORK).date())
        return cutoff is not None and self.is_market_open(at) and at < cutoff

    def seconds_until(self, moment: datetime) -> float:
        """Exchange seconds from now until `moment` (negative if past)."""
        return moment.timestamp() - self.epoch()


def _in_calendar(day: date) -> date:
    """`day` itself; CalendarRangeError when the loaded calendar does not cover it."""
    calendar = _calendar()
    first, last = calendar.first_session.date(), calendar.last_session.date()
    if not first <= (day.date() if isinstance(day, datetime) else day) <= last:
        raise CalendarRangeError(
            f"{day} is outside the XNYS calendar ({first} to {last}); pick a date in that range"
        )
    return day


@lru_cache(maxsize=64)
def _session(day: date) -> Session | None:
    import pandas as pd

    _in_calendar(day)
    calendar = _calendar()
    stamp = pd.Timestamp(day)
    if not calendar.is_session(stamp):
        return None
    return Session(
        trading_date=day,
        open=calendar.session_open(stamp).tz_convert(NEW_YORK).to_pydatetime(),
        close=calendar.session_close(stamp).tz_convert(NEW_YORK).to_pydatetime(),
    )


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
