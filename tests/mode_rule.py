"""The paper/live combinations every program that can send an order is tested on.

Each program's start-up must refuse exactly what `check_trading_mode` refuses, with its message,
and accept the rest in the mode the rule gives; test_settings tests the rule itself row by row.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

import pytest

from core import settings as settings_module
from core.settings import SettingsError, check_trading_mode, load_settings

TRADING_MODES = (None, "paper", "live", "LIVE", "garbage")  # None: TRADING_MODE unset
PORTS = (4002, 7497, 4001, 7496, 5000)  # paper, paper, live, live, neither (a forwarded port)
COMBOS = list(product((False, True), TRADING_MODES, PORTS))  # (--live given, TRADING_MODE, port)


def combo_id(combo: tuple[bool, str | None, int]) -> str:
    flag, mode, port = combo
    return f"{'--live' if flag else 'no-flag'}-{mode or 'unset'}-{port}"


def set_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str | None, port: int
) -> None:
    """TRADING_MODE and IB_PORT as a user would set them; the cached settings are dropped so the
    program loads its own (from this environment, never the developer's .env)."""
    if mode is None:
        monkeypatch.delenv("TRADING_MODE", raising=False)
    else:
        monkeypatch.setenv("TRADING_MODE", mode)
    monkeypatch.setenv("IB_PORT", str(port))
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "trading_history.db"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    settings_module.set_settings(None)


def rule_refusal(flag: bool, mode: str | None, port: int) -> str | None:
    """What the one rule says at start-up (before connecting): its refusal, or None."""
    environ = {"IB_PORT": str(port), **({"TRADING_MODE": mode} if mode is not None else {})}
    try:
        check_trading_mode(load_settings(environ=environ, dotenv_path=Path("/nonexistent")), flag)
    except SettingsError as exc:
        return str(exc)
    return None
