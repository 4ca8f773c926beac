"""The one day-phase rule: pre-market, regular hours, entry cutoff, EOD flatten and sweep."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from core.clock import NEW_YORK, ManualTimeSource, MarketClock
from trading.phases import DayPhase, day_phase

EXIT_MINUTES = {"eod_flatten_minutes": 15.0, "eod_sweep_minutes": 5.0}
ALL_MINUTES = {"entry_cutoff_minutes": 20.0, **EXIT_MINUTES}


def _at(day: date, clock_time: str) -> datetime:
    hour, minute, second = map(int, clock_time.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=NEW_YORK)


def _session(day: date):
    return MarketClock(ManualTimeSource(_at(day, "12:00:00"))).session(day)


@pytest.mark.parametrize(
    ("trading_day", "clock_time", "phase"),
    [
        (date(2026, 11, 27), "12:44:59", DayPhase.REGULAR),  # half day: 13:00 close
        (date(2026, 11, 27), "12:45:00", DayPhase.FLATTEN),
        (date(2026, 11, 27), "12:55:00", DayPhase.SWEEP),
        (date(2026, 11, 27), "13:00:00", DayPhase.AFTER_CLOSE),
        (date(2026, 11, 25), "15:44:00", DayPhase.REGULAR),
        (date(2026, 11, 25), "15:45:00", DayPhase.FLATTEN),
        (date(2026, 11, 25), "09:29:00", DayPhase.ANALYSIS),
        (date(2026, 11, 25), "07:29:59", DayPhase.AGGREGATION),
        (date(2026, 11, 25), "06:59:59", DayPhase.IDLE),
    ],
)
def test_exit_side_phases_follow_the_exchange_calendar(trading_day, clock_time, phase) -> None:
    assert day_phase(_at(trading_day, clock_time), _session(trading_day), **EXIT_MINUTES) is phase


def test_no_session_is_closed_all_day() -> None:
    thanksgiving = date(2026, 11, 26)
    assert _session(thanksgiving) is None
    assert day_phase(_at(thanksgiving, "11:00:00"), None, **ALL_MINUTES) is DayPhase.CLOSED


@pytest.mark.parametrize(
    ("clock_time", "phase", "entries", "regular", "flattening"),
    [
        ("09:30:00", DayPhase.REGULAR, True, True, False),
        ("15:39:59", DayPhase.REGULAR, True, True, False),
        ("15:40:00", DayPhase.ENTRY_CUTOFF, False, True, False),
        ("15:45:00", DayPhase.FLATTEN, False, True, True),
        ("15:55:00", DayPhase.SWEEP, False, True, True),
        ("16:00:00", DayPhase.AFTER_CLOSE, False, False, False),
    ],
)
def test_entry_cutoff_comes_before_the_flatten_and_each_phase_says_what_it_allows(
    clock_time, phase, entries, regular, flattening
) -> None:
    day = date(2026, 11, 25)
    got = day_phase(_at(day, clock_time), _session(day), **ALL_MINUTES)
    assert got is phase
    assert (got.entries_allowed, got.regular_hours, got.flattening) == (
        entries,
        regular,
        flattening,
    )


def test_without_minutes_the_whole_session_is_regular() -> None:
    day = date(2026, 11, 25)
    assert day_phase(_at(day, "15:59:59"), _session(day)) is DayPhase.REGULAR
