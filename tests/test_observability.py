"""The shared database: concurrency, re-entry semantics, intents, backup, bad files."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.clock import NEW_YORK, ManualTimeSource, MarketClock
from observability import (
    CANCELLED,
    FILLED,
    PENDING_SUBMIT,
    REJECTED,
    SCHEMA_VERSION,
    SUBMITTED,
    DatabaseError,
    DatabaseLocked,
    IntentTransitionError,
    ReentryBlocked,
    TradingDatabase,
    get_database,
)
from trading.entries import (
    CLOSED_TODAY,
    ENTRY_WORKING,
    MAX_OPEN_POSITIONS,
    POSITION_ACTIVE,
)

ROOT = Path(__file__).resolve().parents[1]
OPS_PER_PROCESS = 10_000
CONTESTED = 200


def _hammer(path: str, worker: int, ops: int, result_queue: mp.Queue) -> None:
    """One process's share of the stress test: read-then-write operations in a fixed mix."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from observability import DatabaseError as DbError
    from observability import ReentryBlocked as Blocked
    from observability import TradingDatabase as Db

    db = Db(path)
    locked = other_errors = blocked = won = 0
    closed = trades = 0
    for i in range(ops):
        symbol = f"W{worker}S{i // 5}"
        try:
            step = i % 5
            if step == 0:
                assert db.add_active_position(symbol, 10, 50.0, 51.0, 49.0, agent=f"w{worker}")
            elif step == 1:
                assert db.is_position_active(symbol)
            elif step == 2:
                assert db.remove_active_position(symbol, 50.5, "PROFIT_TARGET") is not None
                closed += 1
            elif step == 3:
                assert db.was_closed_today(symbol)
                assert db.record_trade(
                    symbol, "SELL", 10, 50.5, agent=f"w{worker}", exec_id=f"{worker}.{i}"
                )
                trades += 1
            else:
                # Both processes race for the same symbols; exactly one may win each.
                contested = f"C{(i // 5) % CONTESTED}"
                try:
                    db.create_order_intent(
                        contested, "BUY", 1, "LMT", f"w{worker}", guard_entry=True
                    )
                    won += 1
                except Blocked:
                    blocked += 1
        except DbError as exc:
            if "locked" in str(exc):
                locked += 1
            else:
                other_errors += 1
        except AssertionError:
            other_errors += 1
    result_queue.put(
        {"locked": locked, "errors": other_errors, "closed": closed, "trades": trades, "won": won}
    )


def test_two_processes_hammering_one_database_never_lock_lose_or_duplicate(tmp_path: Path) -> None:
    path = str(tmp_path / "stress.db")
    TradingDatabase(path).integrity_check()  # create the schema once
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(path, w, OPS_PER_PROCESS, queue)) for w in (1, 2)]
    for process in workers:
        process.start()
    results = [queue.get(timeout=240) for _ in workers]
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0

    assert sum(r["locked"] for r in results) == 0
    assert sum(r["errors"] for r in results) == 0
    db = TradingDatabase(path)
    expected_closed = sum(r["closed"] for r in results)
    assert expected_closed == 2 * OPS_PER_PROCESS // 5
    assert len(db.get_closed_today()) == expected_closed
    assert db.get_active_positions() == []
    trades = db.get_trades_by_date(db.clock.today_str())
    assert len(trades) == sum(r["trades"] for r in results)
    assert len({t["exec_id"] for t in trades}) == len(trades)
    intents = db.get_open_intents()
    assert len(intents) == CONTESTED  # one winner per contested symbol, never two
    assert len({i["symbol"] for i in intents}) == CONTESTED
    assert sum(r["won"] for r in results) == CONTESTED
    assert db.integrity_check().ok


def test_database_uses_wal_busy_timeout_and_full_sync(db: TradingDatabase) -> None:
    conn = db._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.schema_version() == SCHEMA_VERSION


def test_each_thread_gets_its_own_connection(db: TradingDatabase) -> None:
    seen: list[int] = []

    def use() -> None:
        db.is_position_active("X")
        seen.append(id(db._conn))

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 3 and id(db._conn) not in seen


def test_threads_and_instances_opening_a_new_database_at_once_never_see_it_locked(
    tmp_path: Path,
) -> None:
    # Converting a new file to WAL from two connections at once makes SQLite fail one of them
    # at once rather than wait; a bot's threads all start on a fresh database.
    failures: list[BaseException] = []

    def first_use(db: TradingDatabase) -> None:
        try:
            db.is_position_active("X")
        except BaseException as exc:
            failures.append(exc)

    for attempt in range(40):
        path = tmp_path / f"fresh{attempt}.db"
        shared = TradingDatabase(path)
        users = [shared, shared, shared, TradingDatabase(path)]
        threads = [threading.Thread(target=first_use, args=(db,)) for db in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == [], f"attempt {attempt}: {failures[0]}"


def test_remove_moves_position_to_closed_today_with_pnl(db: TradingDatabase) -> None:
    assert db.add_active_position("AAPL", 100, 200.0, 203.6, 198.2, agent="day_trader")
    assert not db.add_active_position("AAPL", 5, 1.0)  # already active: unchanged
    closed = db.remove_active_position("AAPL", 203.6, "profit_target")

    assert closed is not None
    assert closed["pnl_pct"] == pytest.approx(1.8)
    assert closed["pnl"] == pytest.approx(360.0)
    assert closed["exit_reason"] == "PROFIT_TARGET"
    assert not db.is_position_active("AAPL")
    assert db.was_closed_today("AAPL")
    assert [row["symbol"] for row in db.get_closed_today()] == ["AAPL"]
    assert db.remove_active_position("AAPL", 1.0, "MANUAL") is None


def test_add_position_computes_target_and_stop_from_settings(db: TradingDatabase) -> None:
    db.add_active_position("MSFT", 10, 100.0)
    row = db.get_active_position("MSFT")
    assert row["profit_target_price"] == pytest.approx(101.8)
    assert row["stop_loss_price"] == pytest.approx(99.1)


def test_unknown_exit_reason_is_refused_and_position_kept(db: TradingDatabase) -> None:
    db.add_active_position("AAPL", 1, 10.0)
    with pytest.raises(ValueError, match="exit reason"):
        db.remove_active_position("AAPL", 11.0, "because")
    assert db.is_position_active("AAPL")


def _close_at(db: TradingDatabase, manual: ManualTimeSource, moment: datetime, symbol: str) -> None:
    manual.set(moment)
    db.add_active_position(symbol, 1, 10.0, 10.2, 9.9)
    db.remove_active_position(symbol, 10.1, "PROFIT_TARGET")


def test_closed_today_ends_at_new_york_midnight_not_utc(
    db: TradingDatabase, manual_time: ManualTimeSource
) -> None:
    _close_at(db, manual_time, datetime(2026, 11, 24, 15, 0, tzinfo=NEW_YORK), "TSLA")
    manual_time.set(datetime(2026, 11, 24, 23, 59, tzinfo=NEW_YORK))  # 04:59 UTC next day
    assert db.was_closed_today("TSLA")
    manual_time.set(datetime(2026, 11, 25, 0, 0, 1, tzinfo=NEW_YORK))
    assert not db.was_closed_today("TSLA")


def test_closed_today_survives_daylight_saving_change_until_next_trading_date(
    db: TradingDatabase, manual_time: ManualTimeSource
) -> None:
    # DST ends 2026-11-01 02:00 EDT; close on Friday 2026-10-30.
    _close_at(db, manual_time, datetime(2026, 10, 30, 15, 30, tzinfo=NEW_YORK), "NVDA")
    manual_time.set(datetime(2026, 10, 30, 23, 59, 59, tzinfo=NEW_YORK))
    assert db.was_closed_today("NVDA")
    manual_time.set(datetime(2026, 11, 2, 9, 30, tzinfo=NEW_YORK))  # Monday, EST
    assert not db.was_closed_today("NVDA")
    # DST starts 2026-03-08: a close on the Friday before is gone by Monday's open.
    _close_at(db, manual_time, datetime(2026, 3, 6, 12, 0, tzinfo=NEW_YORK), "AMD")
    manual_time.set(datetime(2026, 3, 9, 9, 30, tzinfo=NEW_YORK))
    assert not db.was_closed_today("AMD")


def test_trading_date_ignores_machine_timezone(
    db: TradingDatabase, manual_time: ManualTimeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        _close_at(db, manual_time, datetime(2026, 11, 24, 20, 0, tzinfo=NEW_YORK), "AMZN")
        # 20:00 New York is already the 25th in Tokyo; the trading date is still the 24th.
        assert db.get_closed_today()[0]["close_date"] == "2026-11-24"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_clear_closed_today_keeps_todays_closes_unless_asked(
    db: TradingDatabase, manual_time: ManualTimeSource
) -> None:
    _close_at(db, manual_time, datetime(2026, 11, 24, 11, 0, tzinfo=NEW_YORK), "OLD")
    _close_at(db, manual_time, datetime(2026, 11, 25, 11, 0, tzinfo=NEW_YORK), "NEW")
    assert db.clear_closed_today() == 1
    assert db.was_closed_today("NEW")
    assert db.clear_closed_today(include_today=True) == 1
    assert not db.was_closed_today("NEW")


def test_record_trade_is_idempotent_on_exec_id(db: TradingDatabase) -> None:
    assert db.record_trade("AAPL", "BOT", 10, 100.0, agent="day_trader", exec_id="e1")
    assert not db.record_trade("AAPL", "BOT", 10, 100.0, agent="day_trader", exec_id="e1")
    trades = db.get_trades_by_date("2026-11-25")
    assert len(trades) == 1 and trades[0]["side"] == "BUY"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        db.get_trades_by_date("25/11/2026")


def test_entry_guard_blocks_active_closed_and_working_symbols(db: TradingDatabase) -> None:
    db.add_active_position("ACT", 1, 10.0)
    db.add_active_position("CLS", 1, 10.0)
    db.remove_active_position("CLS", 10.0, "STOP_LOSS")
    db.create_order_intent("WRK", "BUY", 5, "LMT", "day_trader", guard_entry=True)

    for symbol, reason, code in [
        ("ACT", "active", POSITION_ACTIVE),
        ("CLS", "closed today", CLOSED_TODAY),
        ("WRK", "already working", ENTRY_WORKING),
    ]:
        with pytest.raises(ReentryBlocked, match=reason) as refused:
            db.create_order_intent(symbol, "BUY", 1, "LMT", "day_trader", guard_entry=True)
        assert refused.value.reason == code  # the code travels, not the text
    assert len(db.get_open_intents()) == 1


def test_entry_guard_never_fills_one_free_slot_twice(db: TradingDatabase) -> None:
    db.add_active_position("HELD1", 1, 10.0)
    db.add_active_position("HELD2", 1, 10.0)
    db.create_order_intent(
        "NEW1", "BUY", 1, "LMT", "day_trader", guard_entry=True, max_open_positions=4
    )
    db.create_order_intent(
        "NEW2", "BUY", 1, "LMT", "day_trader", guard_entry=True, max_open_positions=4
    )
    with pytest.raises(ReentryBlocked, match="max open positions reached") as refused:
        db.create_order_intent(
            "NEW3", "BUY", 1, "LMT", "day_trader", guard_entry=True, max_open_positions=4
        )
    assert refused.value.reason == MAX_OPEN_POSITIONS
    # A filled entry (now an active row) and its intent count once, not twice.
    db.update_order_intent(db.get_open_intents(symbol="NEW1")[0]["order_ref"], FILLED)
    db.add_active_position("NEW1", 1, 10.0)
    with pytest.raises(ReentryBlocked, match="4 of 4"):
        db.create_order_intent(
            "NEW3", "BUY", 1, "LMT", "day_trader", guard_entry=True, max_open_positions=4
        )
    db.remove_active_position("HELD1", 10.0, "STOP_LOSS")
    assert db.create_order_intent(
        "NEW3", "BUY", 1, "LMT", "day_trader", guard_entry=True, max_open_positions=4
    )


def test_commission_attaches_to_its_fill(db: TradingDatabase) -> None:
    assert not db.record_commission("e9", 1.0)  # report before the fill: nothing to attach to
    db.record_trade("AAPL", "SELL", 10, 100.0, agent="exit_manager", exec_id="e9")
    assert db.record_commission("e9", 1.25)
    assert db.get_trades_by_date("2026-11-25")[0]["commission"] == 1.25


def test_intent_states_follow_the_transition_table(db: TradingDatabase) -> None:
    ref = db.create_order_intent("AAPL", "SELL", 10, "STP", "exit_manager", stop_price=99.1)
    assert db.get_order_intent(ref)["state"] == PENDING_SUBMIT
    db.update_order_intent(ref, SUBMITTED, ib_order_id=7, perm_id=1001)
    db.update_order_intent(ref, CANCELLED)
    # A cancel can race a fill: IB may still report the fill afterwards.
    row = db.update_order_intent(ref, FILLED, filled_quantity=10, avg_fill_price=99.05)
    assert (row["state"], row["ib_order_id"], row["perm_id"]) == (FILLED, 7, 1001)
    with pytest.raises(IntentTransitionError):
        db.update_order_intent(ref, SUBMITTED)
    assert [e["state"] for e in db.get_intent_log(ref)] == [
        PENDING_SUBMIT,
        SUBMITTED,
        CANCELLED,
        FILLED,
    ]
    rejected = db.create_order_intent("AAPL", "SELL", 10, "MKT", "exit_manager")
    db.update_order_intent(rejected, REJECTED, note="201 short sale")
    with pytest.raises(IntentTransitionError):
        db.update_order_intent(rejected, FILLED)
    with pytest.raises(KeyError):
        db.update_order_intent("nope", FILLED)


def test_order_refs_are_unique(db: TradingDatabase) -> None:
    refs = {db.new_order_ref("day_trader", "AAPL") for _ in range(1000)}
    assert len(refs) == 1000


def test_heartbeat_and_flags_round_trip(db: TradingDatabase) -> None:
    db.beat("exit_manager", "RECONCILED", detail="3 positions")
    beat = db.get_heartbeats()["exit_manager"]
    assert beat["state"] == "RECONCILED" and abs(beat["beat_at"] - time.time()) < 60
    db.set_flag("entries_halted", "daily loss limit")
    assert db.get_flag("entries_halted") == "daily loss limit"
    db.set_flag("entries_halted", None)
    assert db.get_flag("entries_halted") is None


def _enter_until_halted(path: str, worker: int, result_queue: mp.Queue) -> None:
    """Write guarded entry intents as fast as possible until the guard refuses for the halt."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from observability import ReentryBlocked as Blocked
    from observability import TradingDatabase as Db

    db = Db(path)
    written: list[str] = []
    refusal = None
    deadline = time.time() + 60
    while refusal is None and time.time() < deadline:
        try:
            ref = db.create_order_intent(
                f"W{worker}S{len(written)}", "BUY", 1, "LMT", f"w{worker}", guard_entry=True
            )
            written.append(ref)
        except Blocked as exc:
            refusal = str(exc)
    result_queue.put({"written": written, "refusal": refusal})


def test_halt_flag_lets_no_entry_be_written_after_it_even_by_racing_processes(
    tmp_path: Path,
) -> None:
    """Two processes write entry intents flat out while a third halts entries: the intents
    open at the halt are exactly those written, none is written after it (the guard reads
    the flag in the intent's own transaction), and each writer is refused for the halt."""
    path = str(tmp_path / "halt.db")
    db = TradingDatabase(path)
    db.integrity_check()  # create the schema once
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    workers = [ctx.Process(target=_enter_until_halted, args=(path, w, queue)) for w in (1, 2)]
    for process in workers:
        process.start()
    deadline = time.monotonic() + 60
    while {i["agent"] for i in db.get_open_intents()} != {"w1", "w2"}:
        assert time.monotonic() < deadline, "the writers never wrote"
        time.sleep(0.01)

    in_flight = db.halt_entries("MANUAL by test")

    results = [queue.get(timeout=90) for _ in workers]
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0
    written = {ref for r in results for ref in r["written"]}
    assert {i["order_ref"] for i in in_flight} == written
    assert {i["order_ref"] for i in db.get_open_intents()} == written
    for r in results:
        assert r["refusal"] is not None and "entries halted (MANUAL by test" in r["refusal"]
    assert db.entries_halted() == "MANUAL by test"


def _backup_writer(path: str, stop_at: float) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from observability import TradingDatabase as Db

    db = Db(path)
    i = 0
    while time.time() < stop_at:
        db.record_trade(f"S{i % 40}", "BUY", 1, 10.0, agent="writer", exec_id=f"x{i}")
        i += 1


def test_backup_while_another_process_writes_passes_integrity_check(
    tmp_path: Path, market_clock: MarketClock
) -> None:
    path = tmp_path / "live.db"
    db = TradingDatabase(path, clock=market_clock)
    for i in range(2000):
        db.record_trade("SEED", "BUY", 1, 1.0, agent="seed", exec_id=f"seed{i}")
    ctx = mp.get_context("spawn")
    writer = ctx.Process(target=_backup_writer, args=(str(path), time.time() + 4))
    writer.start()
    deadline = time.time() + 30
    while TradingDatabase(path).get_trades_by_date("2026-11-25") == [] and time.time() < deadline:
        time.sleep(0.05)  # wait until the writer is really writing (bounded)
    backups = [db.backup(tmp_path / "archive", keep_days=5) for _ in range(3)]
    writer.join(timeout=30)

    assert writer.exitcode == 0
    for backup in backups:
        copy = TradingDatabase(backup, clock=market_clock)
        assert copy.integrity_check().ok
        assert len(copy.get_trades_by_date("2026-11-25")) >= 2000
    assert backups[0].name == "live_2026-11-25.db"


def test_backup_prunes_files_older_than_keep_days(
    db: TradingDatabase, tmp_path: Path, manual_time: ManualTimeSource
) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "trading_history_2026-11-01.db").write_bytes(b"")
    (archive / "trading_history_2026-11-24.db").write_bytes(b"")
    db.backup(archive, keep_days=10)
    names = sorted(p.name for p in archive.iterdir())
    assert names == ["trading_history_2026-11-24.db", "trading_history_2026-11-25.db"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "trading_history.db"
    path.write_text("these are my notes, not a database\n" * 20)
    before = _digest(path)
    with pytest.raises(DatabaseError) as caught:
        TradingDatabase(path).is_position_active("AAPL")
    message = str(caught.value)
    assert str(path) in message and "not a SQLite database" in message and "\n" not in message
    assert _digest(path) == before


def test_corrupt_database_is_refused_not_recreated(tmp_path: Path) -> None:
    path = tmp_path / "trading_history.db"
    good = TradingDatabase(path)
    for i in range(3000):
        good.add_active_position(f"S{i}", 1, 10.0, 11.0, 9.0)
    good.close()
    raw = bytearray(path.read_bytes())
    raw[4096 * 3 : 4096 * 6] = b"\xff" * (4096 * 3)  # trash pages in the middle
    path.write_bytes(bytes(raw))
    before = _digest(path)

    with pytest.raises(DatabaseError) as caught:
        TradingDatabase(path).get_active_positions()
    assert "corrupt" in str(caught.value) and str(path) in str(caught.value)
    assert _digest(path) == before


def _database_with_a_corrupt_table_page(path: Path) -> None:
    """A database of 3000 positions, closed, then garbage written over the cell pointers and
    cells of its fullest table leaf page (its 8-byte header and first pointer kept)."""
    good = TradingDatabase(path)
    for i in range(3000):
        good.add_active_position(f"S{i}", 1, 10.0, 11.0, 9.0)
    good.close()
    raw = bytearray(path.read_bytes())
    size = int.from_bytes(raw[16:18], "big")
    leaves = [page for page in range(1, len(raw) // size) if raw[page * size] == 0x0D]
    page = max(leaves, key=lambda p: int.from_bytes(raw[p * size + 3 : p * size + 5], "big"))
    raw[page * size + 10 : (page + 1) * size] = b"\xff" * (size - 10)
    path.write_bytes(bytes(raw))


def _report_problems(report: Path) -> list[str]:
    lines = report.read_text().splitlines()
    dump = lines[lines.index("") + 1 :]
    return [line for line in dump if line and not line.startswith("*** ")]


def test_corrupt_page_is_one_line_with_the_problem_count_and_the_full_report_beside_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trading_history.db"
    _database_with_a_corrupt_table_page(path)
    before = _digest(path)
    # SQLite's own answer, read-only, to compare the report with.
    probe = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    expected = [
        line
        for row in probe.execute("PRAGMA quick_check(1000)")
        for line in row[0].splitlines()
        if not line.startswith("*** ")
    ]
    probe.close()
    assert len(expected) > 50  # many problems: the dump that once filled the console

    with pytest.raises(DatabaseError) as caught:
        get_database(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert f"quick_check found {len(expected)} problems, first: {expected[0]};" in message
    [report] = tmp_path.glob("trading_history.db.integrity-*.txt")
    assert f"full report in {report})" in message
    assert _report_problems(report) == expected
    assert _digest(path) == before

    for program in (["observability.py", "--self-check"], ["analyze_today.py", "--no-chart"]):
        done = _python(*program, "--db", str(path))
        assert done.returncode != 0, done.stdout
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"quick_check found {len(expected)} problems, first" in done.stderr
    reports = sorted(tmp_path.glob("trading_history.db.integrity-*.txt"))
    assert len(reports) == 3  # one per refusal, none overwritten
    assert all(_report_problems(report) == expected for report in reports)
    assert _digest(path) == before


def test_corrupt_page_in_an_unwritable_folder_says_the_report_was_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import observability

    path = tmp_path / "trading_history.db"
    _database_with_a_corrupt_table_page(path)

    def unwritable(*args: Any, **kwargs: Any) -> Any:
        # As root every folder is writable; this is the error a user's read-only folder gives.
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(observability, "open", unwritable, raising=False)
    with pytest.raises(DatabaseError) as caught:
        TradingDatabase(path).get_active_positions()
    message = str(caught.value)
    assert "\n" not in message and "quick_check found" in message
    assert (
        f"full report not written: folder {tmp_path} is not writable (Permission denied)" in message
    )
    assert not list(tmp_path.glob("*.integrity-*"))


def test_damaged_schema_page_is_one_line_not_a_unicode_traceback(tmp_path: Path) -> None:
    """SQLite quotes the raw bytes of a damaged schema in its error; Python cannot decode them."""
    path = tmp_path / "trading_history.db"
    good = TradingDatabase(path)
    good.add_active_position("AAPL", 1, 10.0, 11.0, 9.0)
    good.close()
    raw = bytearray(path.read_bytes())
    size = int.from_bytes(raw[16:18], "big")
    # The first schema leaf page holding our CREATE TABLE statements (the schema may span
    # more than one): garbage over most of it.
    page = next(
        p for p in range(len(raw) // size) if b"CREATE TABLE" in raw[p * size : (p + 1) * size]
    )
    raw[page * size + 100 : (page + 1) * size] = b"\xff" * (size - 100)
    path.write_bytes(bytes(raw))
    before = _digest(path)
    done = _python("observability.py", "--self-check", "--db", str(path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is corrupt" in done.stderr and str(path) in done.stderr
    assert _digest(path) == before


def test_unwritable_location_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError) as caught:
        TradingDatabase("/proc/trading_history.db").is_position_active("AAPL")
    assert "/proc/trading_history.db" in str(caught.value)
    assert "writable" in str(caught.value)


def test_database_locked_by_another_program_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "trading_history.db"
    TradingDatabase(path).is_position_active("X")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseError, match="locked") as caught:
            TradingDatabase(path, busy_timeout_ms=200).add_active_position("A", 1, 1.0, 1.1, 0.9)
        assert str(path) in str(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_write_waiting_for_the_lock_looks_again_at_fine_steps_and_proceeds_once_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own busy handler slept 1, 2, 5 ... 100 ms between tries: a write behind
    another process's short write slept on long after the lock was free (two writers stalled
    single writes for 631 ms). The wait now looks again every half millisecond, and the try
    right after the other writer commits takes the lock."""
    import observability

    path = tmp_path / "trading_history.db"
    db = TradingDatabase(path, busy_timeout_ms=3000)
    db.is_position_active("X")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the other writer, mid-write
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 20:
            holder.execute("COMMIT")  # the other writer is done
        time.sleep(seconds)

    # raising=False: without the fine-grained wait there is nothing to patch, and the write
    # waits in SQLite's handler for the lock that is never released (DatabaseLocked).
    monkeypatch.setattr(observability, "_pause", pause, raising=False)
    try:
        db.add_active_position("A", 1, 10.0, 10.18, 9.91)
    finally:
        holder.close()

    assert db.is_position_active("A")
    assert len(pauses) == 20  # the first try after the commit took the lock
    assert max(pauses) <= 0.001
    assert db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 3000  # reads still wait


def test_a_lock_held_past_busy_timeout_fails_the_write_instead_of_hanging(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trading_history.db"
    TradingDatabase(path).is_position_active("X")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    db = TradingDatabase(path, busy_timeout_ms=300)
    try:
        began = time.monotonic()
        with pytest.raises(DatabaseLocked):
            db.record_trade("A", "BUY", 1, 10.0, agent="test", exec_id="e1")
        waited = time.monotonic() - began
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert 0.3 <= waited < 5.0  # the whole busy_timeout, then an error (generous: a loaded CI)
    db.record_trade("A", "BUY", 1, 10.0, agent="test", exec_id="e1")  # free again: it writes


def test_unstamped_database_with_our_first_tables_is_upgraded_keeping_rows(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    seed = sqlite3.connect(path)
    seed.executescript(
        """
        CREATE TABLE active_positions (
            id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT NOT NULL UNIQUE,
            quantity INTEGER NOT NULL, entry_price REAL NOT NULL, entry_time TEXT NOT NULL,
            profit_target_price REAL, stop_loss_price REAL,
            agent TEXT NOT NULL DEFAULT 'day_trader');
        CREATE TABLE closed_positions_today (
            id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT NOT NULL, quantity INTEGER NOT NULL,
            entry_price REAL NOT NULL, exit_price REAL NOT NULL, entry_time TEXT,
            exit_time TEXT NOT NULL, pnl_pct REAL NOT NULL, exit_reason TEXT NOT NULL,
            agent TEXT, close_date TEXT NOT NULL, UNIQUE(symbol, close_date));
        INSERT INTO active_positions (symbol, quantity, entry_price, entry_time)
            VALUES ('BYND', 100, 7.5, '2026-11-24T10:00:00');
        """
    )
    seed.close()

    db = TradingDatabase(path)
    assert db.schema_version() == SCHEMA_VERSION
    assert db.is_position_active("BYND")
    assert db.record_trade("BYND", "BUY", 100, 7.5, agent="seed")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseError, match="newer than this program"):
        TradingDatabase(path).is_position_active("X")


def test_get_database_uses_settings_path_and_one_instance_per_process(
    _isolated_settings,
) -> None:
    first = get_database()
    assert first is get_database()
    assert first.path == _isolated_settings.database_path.resolve()


def test_self_check_command_reports_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("garbage")
    done = _python("observability.py", "--self-check", "--db", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and str(bad) in done.stderr


def test_self_check_with_a_bad_setting_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import observability
    from core import settings

    # The program reads the project's `.env`: here a file of the test's.
    (tmp_path / ".env").write_text("IB_PORT=abc\n")
    monkeypatch.setattr(settings, "DOTENV_PATH", tmp_path / ".env")
    settings.set_settings(None)
    assert observability.main(["--self-check"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: setting IB_PORT='abc' is invalid: expected a whole number from 1 to 65535\n"
    )
    # A real process, the same bad value from the environment.
    done = subprocess.run(
        [sys.executable, "observability.py", "--self-check"], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
        env={**os.environ, "IB_PORT": "abc", "DATABASE_PATH": str(tmp_path / "t.db")},
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (2, err)
    assert not (tmp_path / "t.db").exists()


def _creation_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "database_created"]


def test_new_database_file_is_warned_once_naming_it_and_an_existing_one_never(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trading_history.db"
    caplog.set_level(logging.WARNING)
    first = get_database(path)
    assert first.get_active_positions() == [] and path.exists()
    [warning] = _creation_warnings(caplog)
    assert warning.levelno == logging.WARNING and warning.path == str(path)  # type: ignore[attr-defined]
    assert warning.getMessage() == (
        f"created a new empty database at {path}: if you expected existing positions, you are "
        "in the wrong folder or DATABASE_PATH points elsewhere"
    )
    # Other threads' connections, the cached instance, a new instance: the file exists now.
    worker = threading.Thread(target=first.get_active_positions)
    worker.start()
    worker.join()
    assert get_database(path) is first
    TradingDatabase(path).get_active_positions()
    assert len(_creation_warnings(caplog)) == 1
    # A database made on purpose (a simulated run's) is created quietly.
    TradingDatabase(tmp_path / "sim.db", if_missing="create").get_active_positions()
    assert len(_creation_warnings(caplog)) == 1 and (tmp_path / "sim.db").exists()


def test_database_that_must_exist_is_refused_in_one_line_and_never_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nonexist.db"
    with pytest.raises(DatabaseError) as caught:
        get_database(missing, if_missing="refuse")
    assert str(caught.value) == (
        f"database {missing} does not exist: pass --db with the path of an existing "
        "trading_history.db (or set DATABASE_PATH), or start the bots once to create it"
    )
    assert not list(tmp_path.iterdir()) and not _creation_warnings(caplog)
    TradingDatabase(missing).schema_version()  # once it exists, it opens
    assert get_database(missing, if_missing="refuse").get_active_positions() == []


def test_ad_hoc_query_in_the_wrong_folder_says_on_stderr_that_the_database_is_new(
    tmp_path: Path,
) -> None:
    """The README's query snippet run where no database is: [] must not pass for 'flat'."""
    done = subprocess.run(
        [sys.executable, "-c", "from observability import get_database\n"
         "print(get_database().get_active_positions())"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_PATH": str(tmp_path / "t.db")},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
    assert done.stderr == (
        f"created a new empty database at {tmp_path / 't.db'}: if you expected existing "
        "positions, you are in the wrong folder or DATABASE_PATH points elsewhere\n"
    )
    again = subprocess.run(
        [sys.executable, "observability.py", "--self-check", "--db", str(tmp_path / "t.db")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (again.returncode, again.stderr) == (0, "")  # an existing file: no warning


def test_backup_of_a_missing_database_is_refused_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nonexist.db"
    done = _python("observability.py", "--backup", "--db", str(missing))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"database {missing} does not exist" in done.stderr
    assert not list(tmp_path.iterdir())


# Process A of the lock-loss scenario: a bot that writes, touches the database from a worker
# thread (a new per-thread connection), then waits for the test to say "write the flag".
_RUNNING_BOT = """
import sys, threading
from observability import get_database
db = get_database(sys.argv[1])
db.set_flag("before", "1")
worker = threading.Thread(target=db.get_flag, args=("before",))
worker.start()
worker.join()
print("ready", flush=True)
sys.stdin.readline()
db.set_flag("after", "written by the running bot")
print("written", flush=True)
sys.stdin.readline()
"""


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_running_bots_writes_stay_visible_after_another_process_opens_and_closes_the_database(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "trading_history.db")
    bot = subprocess.Popen(
        [sys.executable, "-c", _RUNNING_BOT, path],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bot.stdout.readline().strip() == "ready"
        # Another program opens the database and exits: while the bot runs it is not the last
        # user, so it must leave the bot's -wal and -shm alone.
        opened = _python(
            "-c", "import sys; from observability import get_database; "
            "get_database(sys.argv[1]).close()", path,
        )  # fmt: skip
        assert opened.returncode == 0, opened.stderr
        checked = _python("observability.py", "--self-check", "--db", path)
        assert checked.returncode == 0, checked.stderr
        bot.stdin.write("write\n")
        bot.stdin.flush()
        assert bot.stdout.readline().strip() == "written"

        seen = _python(
            "-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("
            "\"SELECT value FROM flags WHERE name = 'after'\").fetchone())", path,
        )  # fmt: skip
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.strip() == "('written by the running bot',)"
    finally:
        bot.stdin.close()
        bot.wait(timeout=30)


# The seed system's schema, statement for statement (orelmeister/Shamir observability.py:
# TradingDatabase._init_database and _optimize_database).
_SEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    symbol TEXT NOT NULL,
    action TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    price REAL NOT NULL,
    agent_name TEXT NOT NULL,
    reason TEXT,
    profit_loss REAL,
    profit_loss_pct REAL,
    capital_at_trade REAL,
    position_size_pct REAL,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS daily_metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    date TEXT NOT NULL UNIQUE,
    total_trades INTEGER DEFAULT 0,
    winning_trades INTEGER DEFAULT 0,
    losing_trades INTEGER DEFAULT 0,
    total_profit_loss REAL DEFAULT 0,
    total_profit_loss_pct REAL DEFAULT 0,
    max_drawdown REAL DEFAULT 0,
    sharpe_ratio REAL,
    avg_trade_duration_minutes REAL,
    capital_start REAL,
    capital_end REAL,
    positions_held_eod INTEGER DEFAULT 0,
    errors_count INTEGER DEFAULT 0,
    agent_name TEXT NOT NULL,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS agent_health (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    health_status TEXT NOT NULL,
    cpu_percent REAL,
    memory_mb REAL,
    ibkr_connected INTEGER,
    last_error TEXT,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS parameter_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    parameter_name TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT NOT NULL,
    reason TEXT,
    approved_by TEXT,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    date_range_start TEXT NOT NULL,
    date_range_end TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    evaluation_type TEXT NOT NULL,
    score REAL,
    insights TEXT,
    recommendations TEXT,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS active_positions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol TEXT NOT NULL UNIQUE,
    quantity REAL NOT NULL,
    entry_price REAL NOT NULL,
    entry_timestamp TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    profit_target_price REAL,
    stop_loss_price REAL,
    status TEXT DEFAULT 'OPEN',
    last_updated TEXT NOT NULL,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS closed_positions_today (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol TEXT NOT NULL,
    close_date TEXT NOT NULL,
    exit_price REAL NOT NULL,
    exit_reason TEXT NOT NULL,
    profit_loss_pct REAL,
    agent_name TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    UNIQUE(symbol, close_date)
);
CREATE INDEX IF NOT EXISTS idx_trades_symbol_timestamp ON trades(symbol, timestamp);
CREATE INDEX IF NOT EXISTS idx_trades_timestamp ON trades(timestamp);
CREATE INDEX IF NOT EXISTS idx_daily_metrics_date ON daily_metrics(date);
CREATE INDEX IF NOT EXISTS idx_agent_health_timestamp ON agent_health(timestamp);
"""

# Rows as the seed's methods wrote them (UTC isoformat stamps, JSON metadata), on the test
# clock's day 2026-11-25 (10:00 New York = 15:00 UTC).
_AAPL_PCT = (203.6 - 200.0) / 200.0 * 100
_SEED_ROWS: dict[str, list[tuple[Any, ...]]] = {
    "active_positions": [
        (1, "BYND", 100.0, 7.5, "2026-11-25T14:35:12.123456+00:00", "day_trader", 7.64, 7.43,
         "OPEN", "2026-11-25T14:35:12.123456+00:00", '{"strategy": "gap_and_go"}'),
        (2, "SOFI", 250.0, 14.2, "2026-11-25T14:50:00.000001+00:00", "day_trader", 14.46, 14.08,
         "OPEN", "2026-11-25T14:51:00+00:00", "{}"),
    ],
    "closed_positions_today": [
        (1, "AAPL", "2026-11-25", 203.6, "PROFIT_TARGET", _AAPL_PCT, "exit_manager",
         "2026-11-25T14:40:00.500000+00:00"),
        (2, "TSLA", "2026-11-24", 247.77, "STOP_LOSS", -0.9, "exit_manager",
         "2026-11-24T19:00:00+00:00"),
    ],
    "trades": [
        (1, "2026-11-25T14:20:00+00:00", "AAPL", "BUY", 10, 200.0, "day_trader", "gap entry",
         None, None, 25000.0, 8.0, "{}"),
        (2, "2026-11-25T14:35:12.123456+00:00", "BYND", "BUY", 100, 7.5, "day_trader",
         "VWAP entry", None, None, 25000.0, 3.0, "{}"),
        (3, "2026-11-25T14:40:00.500000+00:00", "AAPL", "SELL", 10, 203.6, "exit_manager",
         "PROFIT_TARGET", 36.0, _AAPL_PCT, 25036.0, None, '{"order_id": 17}'),
        # 21:30 New York on the 25th is already the 26th in UTC: the trading date is the 25th.
        (4, "2026-11-26T02:30:00+00:00", "SOFI", "buy", 5, 14.0, "manual", None,
         None, None, None, None, None),
    ],
    "daily_metrics": [
        (1, "2026-11-24", 6, 4, 2, 120.5, 0.48, -0.3, 1.2, 17.5, 25000.0, 25120.5, 0, 1,
         "day_trader", '{"note": "first day"}'),
    ],
    "agent_health": [
        (1, "2026-11-25T14:00:00+00:00", "exit_manager", "HEALTHY", 3.5, 120.0, 1, None, "{}"),
    ],
    "parameter_changes": [
        (1, "2026-11-24T21:00:00+00:00", "day_trader", "stop_loss_pct", "0.01", "0.009",
         "tighter stop", "AUTO", "{}"),
    ],
    "evaluations": [
        (1, "2026-11-24T21:05:00+00:00", "2026-11-24", "2026-11-24", "day_trader", "daily",
         0.7, "ok", "keep", "{}"),
    ],
}  # fmt: skip

# Where each seed column's value must land in our schema (same name unless listed).
_SEED_TO_OURS = {
    "active_positions": {"entry_timestamp": "entry_time", "agent_name": "agent"},
    "closed_positions_today": {
        "profit_loss_pct": "pnl_pct",
        "agent_name": "agent",
        "timestamp": "exit_time",
    },
    "trades": {"timestamp": "trade_time", "action": "side", "agent_name": "agent",
               "profit_loss": "pnl"},
}  # fmt: skip


def _build_seed_database(
    path: Path, rows: dict[str, list[tuple[Any, ...]]] | None = None, journal_mode: str = "WAL"
) -> dict[str, list[dict[str, Any]]]:
    """A database as the seed system left it; returns its rows per table, as dicts."""
    rows = _SEED_ROWS if rows is None else rows
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.executescript(_SEED_SCHEMA)
    for table, values in rows.items():
        for row in values:
            conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    conn.commit()
    seeded = {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY id")] for t in rows}
    conn.close()
    return seeded


def _table(path: Path, table: str, key: str = "id") -> dict[Any, dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return {row[key]: dict(row) for row in conn.execute(f"SELECT * FROM {table}")}
    finally:
        conn.close()


def _assert_every_seed_value_kept(
    path: Path, seeded: dict[str, list[dict[str, Any]]], key: str = "id"
) -> None:
    for table, rows in seeded.items():
        migrated = _table(path, table, key)
        assert len(migrated) == len(rows), table
        renames = _SEED_TO_OURS.get(table, {})
        for row in rows:
            now = migrated[row[key]]
            for column, value in row.items():
                ours = renames.get(column, column)
                if column == "action":
                    assert now["side"] == value.upper(), (table, row[key])
                else:
                    assert now[ours] == value, (table, row[key], column)


def test_seed_database_is_migrated_in_place_keeping_every_row_and_value(
    tmp_path: Path, market_clock: MarketClock
) -> None:
    path = tmp_path / "trading_history.db"
    seeded = _build_seed_database(path)

    db = TradingDatabase(path, clock=market_clock)

    assert db.schema_version() == SCHEMA_VERSION
    _assert_every_seed_value_kept(path, seeded)
    assert db.integrity_check().ok
    # What ours needs and the seed never stored: trading dates in New York, the entry price
    # behind the seed's P&L %; shares of a seed close were never recorded.
    trades = _table(path, "trades")
    assert [trades[i]["trade_date"] for i in (1, 2, 3, 4)] == ["2026-11-25"] * 4
    assert _table(path, "active_positions")[1]["trade_date"] == "2026-11-25"
    aapl = _table(path, "closed_positions_today")[1]
    assert aapl["entry_price"] == pytest.approx(200.0) and aapl["quantity"] == 0
    assert aapl["pnl"] is None  # unknown, not zero
    # A second open finds nothing left to migrate and changes nothing.
    before = {t: _table(path, t) for t in seeded}
    assert TradingDatabase(path, clock=market_clock).get_active_position("BYND") is not None
    assert {t: _table(path, t) for t in seeded} == before


def test_bots_database_calls_work_on_a_migrated_seed_database(
    tmp_path: Path, market_clock: MarketClock
) -> None:
    path = tmp_path / "trading_history.db"
    _build_seed_database(path)
    db = TradingDatabase(path, clock=market_clock)

    # The exit manager: reads the open positions, records its sell fill, closes the row.
    held = {p["symbol"]: p for p in db.get_active_positions()}
    assert set(held) == {"BYND", "SOFI"}
    assert (held["BYND"]["quantity"], held["BYND"]["entry_price"]) == (100, 7.5)
    assert held["BYND"]["stop_loss_price"] == 7.43
    assert db.update_active_position("BYND", quantity=100)
    assert db.record_trade("BYND", "SLD", 100, 7.64, "exit_manager", pnl=14.0, exec_id="x1")
    closed = db.remove_active_position("BYND", 7.64, "PROFIT_TARGET")
    assert closed is not None and closed["pnl"] == pytest.approx(14.0)
    assert db.was_closed_today("BYND") and not db.is_position_active("BYND")

    # The day trader's entry guard: the seed's open position and today's seed close block
    # re-entry; a new symbol enters, fills and is recorded.
    for symbol, reason in [("SOFI", "active"), ("AAPL", "closed today")]:
        with pytest.raises(ReentryBlocked, match=reason):
            db.create_order_intent(symbol, "BUY", 1, "LMT", "day_trader", guard_entry=True)
    ref = db.create_order_intent(
        "NVDA", "BUY", 5, "LMT", "day_trader", guard_entry=True, max_open_positions=4
    )
    db.update_order_intent(ref, FILLED, filled_quantity=5, avg_fill_price=150.0)
    assert db.record_trade("NVDA", "BUY", 5, 150.0, "day_trader", order_ref=ref, exec_id="x2")
    assert db.add_active_position("NVDA", 5, 150.0, agent="day_trader", order_ref=ref)

    assert {p["symbol"] for p in db.get_active_positions()} == {"SOFI", "NVDA"}
    assert {c["symbol"] for c in db.get_closed_today()} == {"AAPL", "BYND"}
    assert len(db.get_trades_by_date("2026-11-25")) == 6
    # The supervisor's start of day drops the seed's close of an earlier date.
    assert db.clear_closed_today() == 1


def test_programs_start_on_a_seed_database(tmp_path: Path) -> None:
    path = tmp_path / "trading_history.db"
    _build_seed_database(path)

    checked = _python("observability.py", "--self-check", "--db", str(path))
    assert checked.returncode == 0, checked.stderr
    assert f"schema version: {SCHEMA_VERSION}" in checked.stdout
    assert "active positions: 2" in checked.stdout
    report = _python("analyze_today.py", "--db", str(path), "--date", "2026-11-25", "--no-chart")
    assert report.returncode == 0, report.stderr
    assert "AAPL" in report.stdout


# The seed guide's DDL (docs/PRODUCTION_GUIDE.md): files made from it have no trades table,
# so the old migration went through on them and stamped them version 2.
_SEED_GUIDE_SCHEMA = """
CREATE TABLE active_positions (
    symbol TEXT UNIQUE,
    quantity INTEGER,
    entry_price REAL,
    entry_timestamp TEXT,
    agent_name TEXT,
    profit_target_price REAL,
    stop_loss_price REAL,
    status TEXT DEFAULT 'OPEN',
    last_updated TEXT,
    metadata TEXT
);
CREATE TABLE closed_positions_today (
    symbol TEXT,
    close_date TEXT,
    exit_price REAL,
    exit_reason TEXT,
    profit_loss_pct REAL,
    agent_name TEXT,
    timestamp TEXT,
    UNIQUE(symbol, close_date)
);
"""


def test_database_stamped_by_the_old_seed_migration_is_repaired(
    tmp_path: Path, market_clock: MarketClock
) -> None:
    import observability

    path = tmp_path / "trading_history.db"
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SEED_GUIDE_SCHEMA)
    for table in ("active_positions", "closed_positions_today"):
        for row in _SEED_ROWS[table]:  # the same values, without the id the guide lacks
            conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * (len(row) - 1))})", row[1:])
    seeded = {
        t: [dict(r) for r in conn.execute(f"SELECT * FROM {t}")]
        for t in ("active_positions", "closed_positions_today")
    }
    # What the old migration did to such a file: CREATE TABLE IF NOT EXISTS kept the seed's
    # tables, the ALTERs added our columns to them, and the file was stamped version 2.
    for version in (1, 2):
        conn.executescript(observability._MIGRATIONS[version])
    conn.execute("PRAGMA user_version = 2")
    # Our own tables worked on such a file: a fill recorded then must survive the repair.
    conn.execute(
        "INSERT INTO trades (symbol, side, quantity, price, trade_time, trade_date, agent,"
        " exec_id) VALUES ('SOFI', 'BUY', 250, 14.2, '2026-11-25T09:50:00-05:00', '2026-11-25',"
        " 'day_trader', 'e-broken')"
    )
    conn.commit()
    conn.close()

    db = TradingDatabase(path, clock=market_clock)

    assert db.schema_version() == SCHEMA_VERSION
    _assert_every_seed_value_kept(path, seeded, key="symbol")
    assert [p["symbol"] for p in db.get_active_positions()] == ["BYND", "SOFI"]
    assert db.was_closed_today("AAPL")
    assert db.has_execution("e-broken")
    assert db.add_active_position("NVDA", 5, 150.0)
    assert db.remove_active_position("SOFI", 14.46, "PROFIT_TARGET") is not None
    assert db.integrity_check().ok


def _unknown_shape(path: Path) -> None:
    conn = sqlite3.connect(path)  # a rollback-journal file: refusing must not make it WAL
    conn.executescript(
        "CREATE TABLE active_positions (symbol TEXT, qty INTEGER, price REAL);"
        "INSERT INTO active_positions VALUES ('BYND', 100, 7.5);"
    )
    conn.close()


def _seed_row_not_open(path: Path) -> None:
    rows = dict(_SEED_ROWS)
    rows["active_positions"] = [(3, "GME", 10.0, 20.0, "2026-11-24T15:00:00+00:00", "day_trader",
                                 20.36, 19.82, "CLOSED", "2026-11-24T16:00:00+00:00", "{}")]  # fmt: skip
    _build_seed_database(path, rows)


def _seed_trade_neither_buy_nor_sell(path: Path) -> None:
    rows = dict(_SEED_ROWS)
    rows["trades"] = [(9, "2026-11-24T15:00:00+00:00", "GME", "SHORT", 10, 20.0, "day_trader",
                       None, None, None, None, None, None)]  # fmt: skip
    _build_seed_database(path, rows)


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (_unknown_shape, "neither this program's nor the seed system's"),
        (_seed_row_not_open, "status is 'CLOSED'"),
        (_seed_trade_neither_buy_nor_sell, "neither BUY nor SELL"),
    ],
)
def test_database_that_cannot_be_migrated_is_refused_in_one_line_and_left_unchanged(
    tmp_path: Path, build: Callable[[Path], None], problem: str
) -> None:
    path = tmp_path / "trading_history.db"
    build(path)
    before = _digest(path)

    with pytest.raises(DatabaseError) as caught:
        TradingDatabase(path).get_active_positions()
    message = str(caught.value)
    assert problem in message and str(path) in message and "\n" not in message
    assert "not changed" in message
    assert _digest(path) == before
    checked = _python("observability.py", "--self-check", "--db", str(path))
    assert checked.returncode == 2
    assert checked.stderr.strip().count("\n") == 0 and problem in checked.stderr
    assert _digest(path) == before


# The seed guide's snippets (orelmeister/Shamir docs/PRODUCTION_GUIDE.md), exactly as users
# copy them: "Database Queries" (three blocks run one after the other), "Manual Recovery",
# "Testing" and "Common Issues".
_GUIDE_DATABASE_QUERIES = (
    """\
from observability import get_database
db = get_database()

positions = db.get_active_positions()
for pos in positions:
    print(f"{pos['symbol']}: {pos['quantity']} @ ${pos['entry_price']:.2f}")
""",
    """\
closed = db.get_closed_today()
for pos in closed:
    print(f"{pos['symbol']}: {pos['exit_reason']} - {pos['profit_loss_pct']:+.2f}%")
""",
    """\
trades = db.get_trades_by_date('2025-10-29')
total_pnl = sum(t.get('profit_loss_pct', 0) for t in trades)
print(f"Total P&L: {total_pnl:+.2f}%")
""",
)
_GUIDE_MANUAL_RECOVERY = (
    "from observability import get_database; db = get_database(); print(db.get_active_positions())"
)
_GUIDE_INTEGRITY_CHECK = ["sqlite3", "trading_history.db", "PRAGMA integrity_check;"]
_GUIDE_TESTING = (
    "from observability import get_database; db = get_database();"
    " print('Active:', len(db.get_active_positions()))"
)
_GUIDE_MANUAL_CLEAR = """\
# Exit Manager automatically syncs on startup
# Or manually clear:
from observability import get_database
db = get_database()
db.cursor.execute("DELETE FROM active_positions")
db.conn.commit()
"""
_GUIDE_BLOCKED_SYMBOLS = """\
from observability import get_database
db = get_database()
print(db.get_closed_today())  # Should show blocked symbols
"""


@pytest.fixture
def guide_day(_isolated_settings) -> TradingDatabase:
    """The guide's day 2025-10-29 as the bots record it: AAPL hit its target (+1.80%), MSFT
    its stop (-0.90%, sold in two fills), NVDA is still open. get_database() finds it."""
    from core.clock import set_clock

    manual = ManualTimeSource(datetime(2025, 10, 29, 9, 45, tzinfo=NEW_YORK))
    set_clock(MarketClock(manual))
    db = get_database()
    for symbol, shares, entry in [("AAPL", 10, 200.0), ("MSFT", 20, 400.0), ("NVDA", 5, 150.0)]:
        db.record_trade(symbol, "BUY", shares, entry, "day_trader", exec_id=f"b-{symbol}")
        db.add_active_position(symbol, shares, entry, agent="day_trader")
        manual.advance(60)
    exits = [("AAPL", 10, 203.6, "PROFIT_TARGET"), ("MSFT", 5, 396.4, None),
             ("MSFT", 15, 396.4, "STOP_LOSS")]  # fmt: skip
    for symbol, shares, price, closes in exits:
        entry = db.get_active_position(symbol)["entry_price"]
        pnl = (price - entry) * shares  # as the exit manager records its fills
        db.record_trade(symbol, "SELL", shares, price, "exit_manager", pnl=pnl,
                        exec_id=f"s-{symbol}-{shares}")  # fmt: skip
        if closes:
            db.remove_active_position(symbol, price, closes)
        manual.advance(60)
    return db


def test_seed_guide_database_queries_print_positions_closes_and_total_pnl(
    guide_day: TradingDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    session: dict[str, Any] = {}
    for block in _GUIDE_DATABASE_QUERIES:
        exec(block, session)
    assert capsys.readouterr().out.splitlines() == [
        "NVDA: 5 @ $150.00",
        "AAPL: PROFIT_TARGET - +1.80%",
        "MSFT: STOP_LOSS - -0.90%",
        "Total P&L: +0.90%",
    ]


def _guide_env(db: TradingDatabase) -> dict[str, str]:
    return {**os.environ, "DATABASE_PATH": str(db.path)}


def test_seed_guide_manual_recovery_and_testing_one_liners_run_as_written(
    guide_day: TradingDatabase,
) -> None:
    recovery = subprocess.run(
        [sys.executable, "-c", _GUIDE_MANUAL_RECOVERY], cwd=ROOT, env=_guide_env(guide_day),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert recovery.returncode == 0, recovery.stderr
    assert "'symbol': 'NVDA'" in recovery.stdout and "'agent_name': 'day_trader'" in recovery.stdout
    testing = subprocess.run(
        [sys.executable, "-c", _GUIDE_TESTING], cwd=ROOT, env=_guide_env(guide_day),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (testing.returncode, testing.stdout) == (0, "Active: 1\n"), testing.stderr
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command line shell is not installed")
    integrity = subprocess.run(
        _GUIDE_INTEGRITY_CHECK, cwd=guide_day.path.parent, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert (integrity.returncode, integrity.stdout) == (0, "ok\n")


def test_seed_guide_manual_clear_empties_active_positions_for_every_process(
    guide_day: TradingDatabase,
) -> None:
    exec(_GUIDE_MANUAL_CLEAR, {})
    other = sqlite3.connect(guide_day.path)
    assert other.execute("SELECT count(*) FROM active_positions").fetchone() == (0,)
    other.close()
    assert guide_day.get_active_positions() == []


def test_seed_guide_closed_today_check_shows_the_blocked_symbols(
    guide_day: TradingDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    exec(_GUIDE_BLOCKED_SYMBOLS, {})
    out = capsys.readouterr().out
    assert "'symbol': 'AAPL'" in out and "'symbol': 'MSFT'" in out
    assert "'profit_loss_pct': " in out


def test_rows_carry_the_seed_names_and_exit_fills_add_up_to_their_trades_pnl_pct(
    guide_day: TradingDatabase,
) -> None:
    active = guide_day.get_active_position("NVDA")
    assert (active["agent_name"], active["entry_timestamp"]) == (
        active["agent"],
        active["entry_time"],
    )
    closed = {c["symbol"]: c for c in guide_day.get_closed_today()}
    assert closed["MSFT"]["profit_loss_pct"] == closed["MSFT"]["pnl_pct"] == pytest.approx(-0.9)
    assert closed["AAPL"]["timestamp"] == closed["AAPL"]["exit_time"]
    assert closed["AAPL"]["agent_name"] == "day_trader"

    trades = guide_day.get_trades_by_date("2025-10-29")
    assert all(t["action"] == t["side"] and t["agent_name"] == t["agent"] for t in trades)
    assert all("profit_loss_pct" not in t for t in trades if t["side"] == "BUY")
    msft = [t["profit_loss_pct"] for t in trades if t["symbol"] == "MSFT" and t["side"] == "SELL"]
    assert msft == [pytest.approx(-0.9 * 5 / 20), pytest.approx(-0.9 * 15 / 20)]
    assert sum(msft) == pytest.approx(closed["MSFT"]["pnl_pct"])


def test_add_active_position_takes_the_seed_keywords_and_refuses_its_positional_order(
    db: TradingDatabase,
) -> None:
    assert db.add_active_position(
        "AAPL", 10, 200.0, agent_name="exit_manager", profit_target=203.6, stop_loss=198.2,
        metadata={"strategy": "gap_and_go"},
    )  # fmt: skip
    row = db.get_active_position("AAPL")
    assert (row["agent"], row["profit_target_price"], row["stop_loss_price"]) == (
        "exit_manager",
        203.6,
        198.2,
    )
    assert json.loads(row["metadata"]) == {"strategy": "gap_and_go"}

    # The seed's positional order would put the agent where our target price goes.
    with pytest.raises(TypeError, match="by keyword"):
        db.add_active_position("MSFT", 5, 400.0, "day_trader", 407.2, 396.4)
    with pytest.raises(ValueError, match="disagree"):
        db.add_active_position("MSFT", 5, 400.0, agent="day_trader", agent_name="exit_manager")
    assert not db.is_position_active("MSFT")
