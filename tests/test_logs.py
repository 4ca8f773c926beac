"""JSON logs: one run file per start, stable keys, secrets hidden, human console."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from core.logs import get_logger, setup_logging
from core.settings import Secret


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


def test_configured_secret_echoed_by_a_server_is_scrubbed_from_file_and_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_root_logging: None
) -> None:
    from core import settings as settings_module

    configured = settings_module.load_settings(
        environ={"MASSIVE_API_KEY": "mk-live-7f3a9c"}, dotenv_path=tmp_path / "no.env"
    )
    settings_module.set_settings(configured)
    run_file = setup_logging("scanner", log_dir=tmp_path)
    assert run_file is not None
    # A server that echoes the request back into its error body.
    echoed = "bad request: Authorization=Bearer mk-live-7f3a9c url=/v2?apiKey=mk-live-7f3a9c"
    get_logger("scanner").warning("scan_failed", error=echoed)
    logging.getLogger("urllib3").warning("retrying %s", "GET /v3?apiKey=other-key-99 HTTP/1.1")
    for handler in logging.getLogger().handlers:
        handler.flush()

    written = run_file.read_text()
    console = capsys.readouterr().err
    for text in (written, console):
        assert "scan_failed" in text and "retrying" in text
        assert "mk-live-7f3a9c" not in text and "other-key-99" not in text
        assert "Bearer ***" in text and "apiKey=***" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ('{"api_key": "qq11zz"}', '{"api_key": "***"}'),
        ("GET /x?apikey=K1&limit=5", "GET /x?apikey=***&limit=5"),
        ("password=hunter2 next", "password=*** next"),
        ("symbol=AAPL qty=10 order_ref=dt-AAPL-1", "symbol=AAPL qty=10 order_ref=dt-AAPL-1"),
    ],
)
def test_credential_patterns_are_scrubbed_and_ordinary_fields_kept(text: str, expected: str):
    from core.logs import scrub

    assert scrub(text) == expected


def test_console_line_escapes_control_characters_so_a_value_cannot_forge_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_root_logging: None
) -> None:
    setup_logging("day_trader", log_dir=tmp_path)
    forged = "AAPL\n12:00:00 CRITICAL exit_manager naked_position\r"
    get_logger("day_trader").warning("symbol_rejected", symbol=forged)

    console = capsys.readouterr().err
    assert console.count("\n") == 1  # one line, ended by its own newline
    assert "AAPL\\n12:00:00 CRITICAL" in console


def test_file_and_console_carry_the_exchange_time_of_the_process_clock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_root_logging: None
) -> None:
    """Bug pinned: console lines were in the machine's zone and the file had only wall time,
    so a simulated 09:31 showed as 20:55 and `view_logs --since 09:30` found nothing."""
    from datetime import datetime

    from core.clock import NEW_YORK, ManualTimeSource, MarketClock, set_clock

    simulated = datetime(2026, 11, 24, 9, 31, 5, tzinfo=NEW_YORK)
    set_clock(MarketClock(ManualTimeSource(simulated)))
    try:
        run_file = setup_logging("day_trader", log_dir=tmp_path)
        get_logger("day_trader").info("entry_sent", symbol="AAPL")
        for handler in logging.getLogger().handlers:
            handler.flush()
    finally:
        set_clock(None)
    assert run_file is not None
    [line] = [json.loads(text) for text in run_file.read_text().splitlines()]
    assert line["exchange_time"] == "2026-11-24T09:31:05.000-05:00"
    assert line["ts"].endswith("+00:00")  # wall time stays, for the order of real events
    assert capsys.readouterr().err.startswith("09:31:05 INFO    day_trader entry_sent")
