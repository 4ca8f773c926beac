"""The one day-phase rule: where a moment is in the trading day.

Every program asks this one function: the day trader (pre-market work, entries), the entry
rules (the entry cutoff), the exit manager (end-of-day flatten and sweep) and the dashboard.
The session comes from the exchange calendar (its close is 13:00 on half days); the minutes
are the caller's settings, passed in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
PREMARKET_AGGREGATION = (7, 0)  # New York time: the scanner's candidates are aggregated
PREMARKET_ANALYSIS = (7, 30)  # New York time: the watchlist is analysed


class SessionHours(Protocol):
    """A trading session's regular hours (core.clock.Session has these)."""

    @property
    def open(self) -> datetime: ...

    @property
    def close(self) -> datetime: ...


class DayPhase(Enum):
    CLOSED = "closed"  # no session today
    IDLE = "idle"  # before the pre-market work
    AGGREGATION = "aggregation"
    ANALYSIS = "analysis"
    REGULAR = "regular"
    ENTRY_CUTOFF = "entry_cutoff"  # regular hours, no new entries
    FLATTEN = "flatten"  # close - eod_flatten_minutes: flatten everything
    SWEEP = "sweep"  # close - eod_sweep_minutes: flatten whatever is left, verify flat
    AFTER_CLOSE = "after_close"

    @property
    def regular_hours(self) -> bool:
        """True between the session's open and its close."""
        return self in _REGULAR_HOURS

    @property
    def entries_allowed(self) -> bool:
        return self is DayPhase.REGULAR

    @property
    def flattening(self) -> bool:
        """True in the end-of-day phases, when every position is sold."""
        return self in (DayPhase.FLATTEN, DayPhase.SWEEP)


_REGULAR_HOURS = frozenset(
    {DayPhase.REGULAR, DayPhase.ENTRY_CUTOFF, DayPhase.FLATTEN, DayPhase.SWEEP}
)


def day_phase(
    now: datetime,
    session: SessionHours | None,
    *,
    entry_cutoff_minutes: float = 0.0,
    eod_flatten_minutes: float = 0.0,
    eod_sweep_minutes: float = 0.0,
) -> DayPhase:
    """Where `now` (timezone-aware) is in the trading day of `session` (None: no session).

    Inside regular hours the latest phase whose minutes before the close have begun wins:
    SWEEP, then FLATTEN, then ENTRY_CUTOFF; a minutes value of 0 turns its phase off.
    """
    if session is None:
        return DayPhase.CLOSED
    if now >= session.close:
        return DayPhase.AFTER_CLOSE
    if now >= session.open:
        left = session.close - now
        if left <= timedelta(minutes=eod_sweep_minutes):
            return DayPhase.SWEEP
        if left <= timedelta(minutes=eod_flatten_minutes):
            return DayPhase.FLATTEN
        if left <= timedelta(minutes=entry_cutoff_minutes):
            return DayPhase.ENTRY_CUTOFF
        return DayPhase.REGULAR
    local = now.astimezone(NEW_YORK)
    if (local.hour, local.minute) >= PREMARKET_ANALYSIS:
        return DayPhase.ANALYSIS
    if (local.hour, local.minute) >= PREMARKET_AGGREGATION:
        return DayPhase.AGGREGATION
    return DayPhase.IDLE
