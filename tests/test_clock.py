"""The one clock: calendar facts, close-minus-N, and the simulated clock shared through a file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

import pytest

import core.clock as clock_module
from core.clock import (
    NEW_YORK,
    CalendarRangeError,
    ClockError,
    FileTimeSource,
    ManualTimeSource,
    MarketClock,
    SimulatedTimeSource,
    read_sim_clock_file,
    write_sim_clock_file,
)
from core.settings import PROJECT_ROOT


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK)


def test_day_after_thanksgiving_closes_at_13() -> None:
    clock = MarketClock(ManualTimeSource(at(2026, 11, 27, 12, 0)))
    session = clock.session(date(2026, 11, 27))
    assert session is not None and session.is_half_day
    assert (session.open.hour, session.open.minute) == (9, 30)
    assert (session.close.hour, session.close.minute) == (13, 0)
    assert not clock.is_market_open(at(2026, 11, 27, 13, 0))


def test_christmas_and_thanksgiving_are_closed() -> None:
    clock = MarketClock(ManualTimeSource(at(2026, 12, 25, 10, 0)))
    assert clock.session() is None
    assert not clock.is_trading_day()
    assert not clock.is_market_open()
    assert not clock.is_trading_day(date(2026, 11, 26))


def test_regular_day_hours_and_neighbouring_sessions() -> None:
    clock = MarketClock(ManualTimeSource(at(2026, 11, 25, 9, 29, 59)))
    assert not clock.is_market_open()
    assert clock.is_market_open(at(2026, 11, 25, 9, 30))
    assert clock.is_market_open(at(2026, 11, 25, 15, 59, 59))
    assert not clock.is_market_open(at(2026, 11, 25, 16, 0))
    assert clock.next_session().trading_date == date(2026, 11, 27)  # skips Thanksgiving
    assert clock.previous_session().trading_date == date(2026, 11, 24)


def test_simulated_clock_runs_at_its_speed() -> None:
    source = SimulatedTimeSource(
        real_anchor=time.time(), sim_anchor=at(2026, 11, 25, 9, 30).timestamp(), speed_factor=60
    )
    clock = MarketClock(source)
    real_start = time.time()
    first = clock.epoch()
    time.sleep(0.2)
    elapsed_real = time.time() - real_start
    elapsed_sim = clock.epoch() - first
    assert elapsed_sim == pytest.approx(elapsed_real * 60, rel=0.2)
    assert clock.real_seconds(60) == pytest.approx(1.0)


def test_clock_file_is_followed_by_other_readers_and_updates(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    write_sim_clock_file(path, SimulatedTimeSource.starting_at(at(2026, 11, 25, 9, 30), speed=1))
    follower = MarketClock(FileTimeSource(path))
    assert follower.now().strftime("%H:%M") == "09:30"
    # The simulator restarts at another time: the follower picks it up.
    write_sim_clock_file(path, SimulatedTimeSource.starting_at(at(2026, 11, 27, 12, 50), speed=1))
    deadline = time.monotonic() + 5
    while follower.today() != date(2026, 11, 27) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert follower.today() == date(2026, 11, 27)
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_malformed_or_missing_clock_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(ClockError, match=r"absent\.json"):
        read_sim_clock_file(missing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"real_anchor": 1}))
    with pytest.raises(ClockError, match="malformed"):
        read_sim_clock_file(bad)
    bad.write_text(json.dumps({"real_anchor": 1, "sim_anchor": 2, "speed": 0}))
    with pytest.raises(ClockError, match="speed"):
        read_sim_clock_file(bad)


def test_naive_simulated_start_is_refused() -> None:
    with pytest.raises(ClockError, match="timezone-aware"):
        SimulatedTimeSource.starting_at(datetime(2026, 11, 25, 9, 30))


def test_calendar_sessions_equal_exchange_calendars_over_the_whole_range() -> None:
    """The session table (read from its cache file) says what the library says, every day."""
    import exchange_calendars as xcals
    import pandas as pd

    table = clock_module._calendar()
    library = xcals.get_calendar("XNYS", start=str(table.first), end=str(table.last))
    clock = MarketClock()

    sessions = [clock.session(day.date()) for day in library.sessions]

    assert len(sessions) == len(table.days)
    for stamp, session in zip(library.sessions, sessions, strict=True):
        assert session is not None
        assert session.open == library.session_open(stamp).to_pydatetime()
        assert session.close == library.session_close(stamp).to_pydatetime()
    closed = [d.date() for d in pd.date_range(table.first, table.last) if d not in library.sessions]
    assert not any(clock.is_trading_day(day) for day in closed)


def test_a_process_with_the_cached_calendar_loads_neither_pandas_nor_exchange_calendars() -> None:
    """Every process (the supervisor too) imported pandas and exchange_calendars for the
    calendar: a second per start and tens of MiB each. Once cached, the table is plain JSON."""
    MarketClock().is_trading_day()  # builds the cache file when this checkout has none
    probe = (
        "import sys\n"
        "from core.clock import MarketClock\n"
        "c = MarketClock()\n"
        "c.is_trading_day(); c.session(); c.next_session(); c.previous_session()\n"
        "print(','.join(m for m in ('pandas', 'exchange_calendars') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"loaded for the calendar: {done.stdout.strip()}"


def test_a_damaged_calendar_cache_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-written or damaged cache file must not become the calendar."""
    monkeypatch.setattr(clock_module, "CALENDAR_CACHE_DIR", tmp_path)
    clock_module._build_calendar.cache_clear()
    try:
        first = clock_module._calendar()
        (cache,) = tmp_path.glob("XNYS_*.json")
        cache.write_text('{"days": [3, 2, 1], "opens": [1')  # cut off mid-write
        clock_module._build_calendar.cache_clear()
        again = clock_module._calendar()
    finally:
        clock_module._build_calendar.cache_clear()
    assert again == first
    assert json.loads(cache.read_text())["days"] == list(first.days)  # written whole again


def test_a_session_more_than_three_years_back_is_in_the_calendar() -> None:
    clock = MarketClock(ManualTimeSource(at(2026, 11, 25, 10, 0)))
    session = clock.session(date(2022, 5, 19))
    assert session is not None and session.open == at(2022, 5, 19, 9, 30)
    assert clock.is_trading_day(date(2001, 9, 10)) and not clock.is_trading_day(date(2001, 9, 11))
    assert clock.previous_session(date(2022, 5, 19)).trading_date == date(2022, 5, 18)


def test_a_date_outside_the_calendar_is_one_line_naming_the_range() -> None:
    clock = MarketClock(ManualTimeSource(at(2026, 11, 25, 10, 0)))
    with pytest.raises(CalendarRangeError, match="outside the XNYS calendar") as error:
        clock.session(date(1980, 5, 19))
    assert "1990-01-02" in str(error.value) and "\n" not in str(error.value)
