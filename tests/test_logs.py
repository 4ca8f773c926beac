"""JSON logs: one run file per start, stable keys, secrets hidden, human console."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from core.logs import get_logger, setup_logging
from core.settings import Secret


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_run_file_has_json_lines_with_stable_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_root_logging: None
) -> None:
    run_file = setup_logging("day_trader", log_dir=tmp_path)
    assert run_file is not None
    assert re.fullmatch(r"day_trader_run_\d{8}_\d{6}\.json", run_file.name)
    log = get_logger("day_trader")
    log.info("entry_decision", symbol="AAPL", rsi=55.2, decision="BUY", api_key=Secret("sk-x"))
    log.warning("stale_data", symbol="MSFT", age_s=float("inf"))
    for handler in logging.getLogger().handlers:
        handler.flush()

    lines = [json.loads(line) for line in run_file.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["entry_decision", "stale_data"]
    first = lines[0]
    assert {"ts", "level", "bot", "event"} <= set(first)
    assert (first["bot"], first["level"], first["symbol"], first["rsi"]) == (
        "day_trader",
        "INFO",
        "AAPL",
        55.2,
    )
    assert first["api_key"] == "***" and lines[1]["age_s"] is None
    assert "sk-x" not in run_file.read_text()
    console = capsys.readouterr().err
    assert "entry_decision symbol=AAPL" in console and "sk-x" not in console


def test_unwritable_log_dir_still_logs_to_console(
    capsys: pytest.CaptureFixture[str], restore_root_logging: None
) -> None:
    assert setup_logging("exit_manager", log_dir="/proc/no_logs_here") is None
    get_logger("exit_manager").info("started")
    assert "started" in capsys.readouterr().err
