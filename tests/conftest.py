"""Shared fixtures: a clock that moves only when told, and a fresh database per test."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest

from core.clock import NEW_YORK, ManualTimeSource, MarketClock
from observability import TradingDatabase


@pytest.fixture
def manual_time() -> ManualTimeSource:
    """Wednesday 2026-11-25 10:00 New York; tests move it with .set() / .advance()."""
    return ManualTimeSource(datetime(2026, 11, 25, 10, 0, tzinfo=NEW_YORK))


@pytest.fixture
def market_clock(manual_time: ManualTimeSource) -> MarketClock:
    return MarketClock(manual_time)


@pytest.fixture
def db(tmp_path: Path, market_clock: MarketClock) -> TradingDatabase:
    database = TradingDatabase(tmp_path / "trading_history.db", clock=market_clock)
    yield database
    database.close()


@pytest.fixture
def restore_root_logging():
    """Whatever a test does to the root logger (setup_logging), it is undone after it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
