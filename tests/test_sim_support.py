"""The shared gateway harness itself: one config for every kind of gateway test, honest waits."""

from __future__ import annotations

import re
from datetime import time as dtime
from pathlib import Path

import pytest
from sim_support import CLOCK_FILE, IBSIM_SYMBOLS, SIM_DATE, gateway_config, wait_for


def test_gateway_config_takes_a_count_or_names_and_publishes_its_clock_in_tmp_path(
    tmp_path: Path,
) -> None:
    counted = gateway_config(tmp_path, symbols=3, start=dtime(9, 30), speed=60, no_shorting=False)
    assert (counted.symbols, counted.symbol_names, counted.start, counted.speed) == (
        3, None, dtime(9, 30), 60
    )  # fmt: skip
    assert counted.clock_file == str(tmp_path / CLOCK_FILE) and not counted.no_shorting
    assert (counted.port, counted.trading_date, counted.seed) == (0, SIM_DATE, 7)
    named = gateway_config(symbols=IBSIM_SYMBOLS, clock_file=str(tmp_path / "clock.json"))
    assert named.symbol_names == IBSIM_SYMBOLS and named.clock_file.endswith("clock.json")
    assert gateway_config().clock_file is None


def test_wait_for_returns_the_value_and_names_what_it_waited_for() -> None:
    calls = iter([0, [], "ready"])
    assert wait_for(lambda: next(calls), 5, "a value") == "ready"
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for the fill"):
        wait_for(lambda: None, 0.05, "the fill")


# The harness's helpers: a second definition anywhere in tests/ or bench/ is a copy that drifts.
HARNESS_HELPER = re.compile(
    r"^\s*(?:async\s+)?def\s+_?(gateway|start_gateway|wait\w*|until\w*|sim_db|buy\w*)\s*\(", re.M
)


def test_gateway_wait_database_and_buy_helpers_live_only_in_sim_support() -> None:
    root = Path(__file__).resolve().parents[1]
    copies = [
        f"{path.relative_to(root)}: def {match.group(1)}"
        for folder in ("tests", "bench")
        for path in sorted((root / folder).glob("*.py"))
        if path.name != "sim_support.py"
        for match in HARNESS_HELPER.finditer(path.read_text())
    ]
    assert not copies, f"use tests/sim_support.py instead of these copies: {copies}"
