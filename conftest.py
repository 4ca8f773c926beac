"""Project-wide pytest setup: the project root on sys.path and isolated settings per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No test reads the developer's .env or writes into the project folder."""
    from core import clock, settings

    for key in settings.env_keys():
        monkeypatch.delenv(key, raising=False)
    # A program's main() loads its settings itself: never from the developer's .env.
    monkeypatch.setattr(settings, "DOTENV_PATH", tmp_path / "no.env")
    isolated = settings.load_settings(
        environ={},
        dotenv_path=tmp_path / "no.env",
        database_path=tmp_path / "trading_history.db",
        backup_dir=tmp_path / "archive",
        log_dir=tmp_path / "logs",
        kill_switch_file=tmp_path / "KILL_SWITCH",
        watchlist_path=tmp_path / "day_trading_watchlist.json",
    )
    settings.set_settings(isolated)
    yield isolated
    settings.set_settings(None)
    clock.set_clock(None)
