"""The shared database: concurrency, re-entry semantics, intents, backup, bad files."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import sqlite3
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

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
    IntentTransitionError,
    ReentryBlocked,
    TradingDatabase,
    get_database,
)

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

    for symbol, reason in [("ACT", "active"), ("CLS", "closed today"), ("WRK", "already working")]:
        with pytest.raises(ReentryBlocked, match=reason):
            db.create_order_intent(symbol, "BUY", 1, "LMT", "day_trader", guard_entry=True)
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
    with pytest.raises(ReentryBlocked, match="max open positions reached"):
        db.create_order_intent(
            "NEW3", "BUY", 1, "LMT", "day_trader", guard_entry=True, max_open_positions=4
        )
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


def test_seed_database_is_migrated_in_place_keeping_rows(tmp_path: Path) -> None:
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
    import subprocess

    bad = tmp_path / "bad.db"
    bad.write_text("garbage")
    done = subprocess.run(
        [sys.executable, "observability.py", "--self-check", "--db", str(bad)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and str(bad) in done.stderr
