"""The trade journal: one row per round trip with its entry rule, indicator values at entry,
the LLM's verdict, exit and P&L; `analyze_today.py --export` writes it as CSV or Parquet."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from core.clock import NEW_YORK, ManualTimeSource, MarketClock
from core.settings import PROJECT_ROOT
from journal import JOURNAL_COLUMNS, JournalRow, journal_rows
from observability import TradingDatabase
from reports import round_trips_from_fills


def _at(day: int, hh: int, mm: int) -> datetime:
    return datetime(2026, 11, day, hh, mm, tzinfo=NEW_YORK)


def _log(day: int, hh: int, mm: int, event: str, **fields) -> dict:
    moment = _at(day, hh, mm)
    return {"ts": moment.astimezone(UTC).isoformat(), "exchange_time": moment.isoformat(),
            "level": "INFO", "bot": "day_trader", "event": event, **fields}  # fmt: skip


def _decision(day: int, hh: int, mm: int, symbol: str, decision: str, **values) -> dict:
    return _log(day, hh, mm, "entry_decision", symbol=symbol, decision=decision, **values)


def _fill(i, symbol, side, qty, price, day, hhmm, ref, commission=1.0):
    return {"id": i, "symbol": symbol, "side": side, "quantity": qty, "price": price,
            "trade_time": f"2026-11-{day}T{hhmm}:00-05:00", "order_ref": ref, "exec_id": f"e{i}",
            "commission": commission}  # fmt: skip


def test_journal_row_carries_the_entry_rule_the_indicators_at_entry_and_the_llm_verdict():
    fills = [
        _fill(1, "AAA", "BUY", 100, 10.00, 24, "09:40", "day_trader-AAA-1"),
        _fill(2, "AAA", "SELL", 100, 9.91, 24, "10:10", "exit_manager-AAA-2"),
    ]
    trips, _ = round_trips_from_fills(fills, {"exit_manager-AAA-2": "STOP_LOSS"})
    decisions = [
        _decision(24, 9, 35, "AAA", "enter", rule="standard", vwap=9.0, rsi=50.0, atr_pct=0.5),
        # The last 'enter' before the fill is the one that led to it; a later one does not count.
        _decision(24, 9, 39, "AAA", "enter", rule="standard", vwap=9.95, rsi=61.5, atr_pct=0.8),
        _decision(24, 9, 39, "BBB", "enter", rule="gap_and_go", vwap=1.0, rsi=1.0, atr_pct=1.0),
        _log(24, 9, 39, "entry_approved", symbol="AAA", source="deepseek"),
        _decision(24, 9, 50, "AAA", "enter", rule="standard", vwap=99.0, rsi=99.0, atr_pct=9.0),
    ]
    purposes = {"day_trader-AAA-1": "entry:standard", "exit_manager-AAA-2": "PROTECT_STOP"}

    [row] = journal_rows("2026-11-24", trips, purposes, decisions)

    assert row == JournalRow(
        trading_date="2026-11-24", symbol="AAA",
        entry_time="2026-11-24T09:40:00-05:00", entry_price=10.0, entry_rule="standard",
        entry_vwap=9.95, entry_rsi=61.5, entry_atr_pct=0.8, llm_verdict="approved",
        exit_time="2026-11-24T10:10:00-05:00", exit_price=9.91, exit_reason="STOP_LOSS",
        quantity=100, gross_pnl=-9.0, commissions=2.0, net_pnl=-11.0, hold_seconds=1800.0,
        entry_order_ref="day_trader-AAA-1", exit_order_ref="exit_manager-AAA-2",
    )  # fmt: skip


def test_journal_row_of_an_entry_the_day_trader_did_not_decide_has_no_indicators_or_verdict():
    fills = [
        _fill(1, "AAA", "BUY", 10, 10.00, 24, "09:40", None),  # a manual buy, adopted
        _fill(2, "AAA", "SELL", 10, 10.10, 24, "10:10", "liquidate_all-AAA-1"),
    ]
    trips, _ = round_trips_from_fills(fills, {"liquidate_all-AAA-1": "MANUAL"})

    [row] = journal_rows("2026-11-24", trips, {}, [])

    assert (row.entry_rule, row.entry_vwap, row.llm_verdict) == (None, None, None)
    assert row.exit_reason == "MANUAL" and row.net_pnl == pytest.approx(-1.0)


def _database_of_two_days(tmp_path: Path) -> Path:
    """A database with one round trip on the 24th and one on the 25th, and its decision log."""
    source = ManualTimeSource(_at(24, 9, 30))
    db = TradingDatabase(
        tmp_path / "trading_history.db", clock=MarketClock(source), if_missing="create"
    )
    for day, symbol, entry, exit_, purpose in (
        (24, "AAA", 10.0, 10.18, "PROTECT_TARGET"),
        (25, "BBB", 20.0, 19.82, "PROTECT_STOP"),
    ):
        source.set(_at(day, 9, 40))
        buy = db.create_order_intent(
            symbol, "BUY", 50, "LMT", "day_trader", purpose="entry:standard"
        )
        sell = db.create_order_intent(symbol, "SELL", 50, "STP", "exit_manager", purpose=purpose)
        db.record_trade(
            symbol,
            "BUY",
            50,
            entry,
            "day_trader",
            order_ref=buy,
            commission=1.0,
            exec_id=f"b{day}",
            trade_time=_at(day, 9, 40),
        )
        db.record_trade(symbol, "SELL", 50, exit_, "exit_manager", order_ref=sell,
                        commission=1.0, exec_id=f"s{day}", trade_time=_at(day, 11, 0))  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "day_trader_run_20261124_090000.json").write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in (
                _decision(
                    24, 9, 39, "AAA", "enter", rule="standard", vwap=9.9, rsi=55.0, atr_pct=0.6
                ),
                _decision(
                    25, 9, 39, "BBB", "enter", rule="standard", vwap=19.9, rsi=58.0, atr_pct=0.7
                ),
            )
        )
    )
    return db.path


def _analyze(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "analyze_today.py", "--db", str(tmp_path / "trading_history.db"),
         "--logs", str(tmp_path / "logs"), *argv],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_export_writes_one_csv_row_per_round_trip_over_a_date_range_in_the_journal_columns(
    tmp_path,
):
    _database_of_two_days(tmp_path)
    out = tmp_path / "journal.csv"

    result = _analyze(tmp_path, "--export", str(out), "--from", "2026-11-24", "--to", "2026-11-25")

    assert result.returncode == 0, result.stderr
    assert "2 round trips" in result.stdout and str(out) in result.stdout
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == JOURNAL_COLUMNS
    assert [(r["trading_date"], r["symbol"], r["exit_reason"]) for r in rows] == [
        ("2026-11-24", "AAA", "PROFIT_TARGET"),
        ("2026-11-25", "BBB", "STOP_LOSS"),
    ]
    assert (rows[0]["entry_rule"], rows[0]["entry_rsi"], rows[1]["entry_vwap"]) == (
        "standard", "55.0", "19.9",
    )  # fmt: skip
    assert float(rows[0]["net_pnl"]) == pytest.approx(50 * 0.18 - 2.0)


def test_export_to_parquet_of_one_date_reads_back_with_the_same_columns(tmp_path):
    _database_of_two_days(tmp_path)
    out = tmp_path / "journal.parquet"

    result = _analyze(tmp_path, "--export", str(out), "--date", "2026-11-25")

    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out)
    assert tuple(frame.columns) == JOURNAL_COLUMNS
    assert frame["symbol"].tolist() == ["BBB"]
    assert frame["hold_seconds"].tolist() == [80 * 60.0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--export", "journal.xlsx"], "name the file .csv or .parquet"),
        (["--export", "j.csv", "--from", "2026-11-25", "--to", "2026-11-24"], "swap them"),
        (["--export", "j.csv", "--from", "24.11.2026"], "--from '24.11.2026' is not a date"),
        (["--from", "2026-11-24"], "--from/--to go with --export"),
    ],
)
def test_export_with_a_bad_format_or_range_is_one_line_naming_the_fix(tmp_path, argv, message):
    _database_of_two_days(tmp_path)

    result = _analyze(tmp_path, *argv)

    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
