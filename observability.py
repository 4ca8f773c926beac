"""The shared state: one SQLite database (WAL) the bots and the supervisor coordinate through.

    from observability import get_database
    db = get_database()
    db.get_active_positions()

This module owns the schema and every query (nothing else writes SQL). Rules that keep
"database is locked" away (failure mode 9): WAL, busy_timeout, one connection per thread,
every read-then-write inside BEGIN IMMEDIATE, and no transaction held across a broker call.
"Today" is the exchange's trading date in New York, from core.clock.

Run `python observability.py --self-check` to create/check the database and print a summary.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

from core import cli
from core.clock import NEW_YORK, MarketClock, get_clock
from core.money import pnl_dollars, pnl_percent
from core.money import profit_target_price as _target_price
from core.money import stop_loss_price as _stop_price
from trading.model import (
    CLOSED_TODAY,
    ENTRY_WORKING,
    EXIT_REASONS,
    KILL_SWITCH,
    MAX_OPEN_POSITIONS,
    POSITION_ACTIVE,
    FillRecord,
)

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 10_000
# A write waiting for another process's write lock looks again this often (then, after
# WRITE_LOCK_SLOW_AFTER_S of waiting, every WRITE_LOCK_SLOW_POLL_S). SQLite's own busy handler
# sleeps 1, 2, 5 ... 50, then 100 ms between tries: behind a 2-ms write a waiter slept on for
# up to 100 ms after the lock was free, and with two writers single writes stalled 631 ms.
WRITE_LOCK_POLL_S = 0.0005
WRITE_LOCK_SLOW_AFTER_S = 0.25
WRITE_LOCK_SLOW_POLL_S = 0.005
_pause = time.sleep  # the write-lock poll's sleep (a test sees each pause through it)
# What opening a path without a database file does: "warn" creates it and warns once, naming
# the path (an empty answer must not pass for "no positions"); "create" creates it quietly (a
# run that makes a fresh database on purpose); "refuse" raises DatabaseError (tools that only read).
IfMissing = Literal["warn", "create", "refuse"]
# quick_check / integrity_check stop after this many problems (SQLite's default is 100).
CHECK_MAX_PROBLEMS = 1000

# Order intent states and the moves allowed between them. A cancelled order can still
# fill (the cancel raced the fill), and IB can report a fill before the submit ack.
PENDING_SUBMIT = "PENDING_SUBMIT"
SUBMITTED = "SUBMITTED"
FILLED = "FILLED"
CANCELLED = "CANCELLED"
REJECTED = "REJECTED"
INTENT_STATES = frozenset({PENDING_SUBMIT, SUBMITTED, FILLED, CANCELLED, REJECTED})
OPEN_INTENT_STATES = frozenset({PENDING_SUBMIT, SUBMITTED})
INTENT_TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING_SUBMIT: frozenset({SUBMITTED, FILLED, CANCELLED, REJECTED}),
    SUBMITTED: frozenset({SUBMITTED, FILLED, CANCELLED, REJECTED}),
    CANCELLED: frozenset({FILLED}),
    FILLED: frozenset(),
    REJECTED: frozenset(),
}

# Any value halts new entries (exits go on); liquidate_all sets it, its --resume lifts it.
KILL_SWITCH_FLAG = "kill_switch"
# A flag per symbol a person asked to sell now (the dashboard's "flatten"); the exit manager,
# which owns every exit and the symbol's protective orders, takes it and sells (MANUAL).
EXIT_REQUEST_PREFIX = "exit_request:"
RESUME_ENTRIES = "python liquidate_all.py --resume"


# Migration N brings a database from user_version N-1 to N. A database made by the seed
# system is at user_version 0 with tables of its own shape; _migrate rebuilds those first.
_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS active_positions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        symbol TEXT NOT NULL UNIQUE,
        quantity INTEGER NOT NULL,
        entry_price REAL NOT NULL,
        entry_time TEXT NOT NULL,
        profit_target_price REAL,
        stop_loss_price REAL,
        agent TEXT NOT NULL DEFAULT 'day_trader'
    );
    CREATE TABLE IF NOT EXISTS closed_positions_today (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        symbol TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        entry_price REAL NOT NULL,
        exit_price REAL NOT NULL,
        entry_time TEXT,
        exit_time TEXT NOT NULL,
        pnl_pct REAL NOT NULL,
        exit_reason TEXT NOT NULL,
        agent TEXT,
        close_date TEXT NOT NULL,
        UNIQUE(symbol, close_date)
    );
    """,
    2: """
    ALTER TABLE active_positions ADD COLUMN order_ref TEXT;
    ALTER TABLE active_positions ADD COLUMN trade_date TEXT;
    ALTER TABLE closed_positions_today ADD COLUMN pnl REAL;
    CREATE TABLE trades (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('BUY', 'SELL')),
        quantity REAL NOT NULL CHECK (quantity > 0),
        price REAL NOT NULL,
        trade_time TEXT NOT NULL,
        trade_date TEXT NOT NULL,
        order_ref TEXT,
        agent TEXT NOT NULL,
        pnl REAL,
        commission REAL,
        exec_id TEXT UNIQUE
    );
    CREATE INDEX idx_trades_date ON trades(trade_date);
    CREATE INDEX idx_trades_symbol_date ON trades(symbol, trade_date);
    CREATE INDEX idx_trades_order_ref ON trades(order_ref);
    CREATE INDEX idx_trades_agent_date ON trades(agent, trade_date);
    CREATE TABLE order_intents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_ref TEXT NOT NULL UNIQUE,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('BUY', 'SELL')),
        quantity REAL NOT NULL CHECK (quantity > 0),
        order_type TEXT NOT NULL,
        limit_price REAL,
        stop_price REAL,
        purpose TEXT,
        agent TEXT NOT NULL,
        parent_ref TEXT,
        oca_group TEXT,
        state TEXT NOT NULL CHECK (state IN
            ('PENDING_SUBMIT', 'SUBMITTED', 'FILLED', 'CANCELLED', 'REJECTED')),
        ib_order_id INTEGER,
        perm_id INTEGER,
        filled_quantity REAL NOT NULL DEFAULT 0,
        avg_fill_price REAL,
        trade_date TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        note TEXT
    );
    CREATE INDEX idx_intents_symbol_state ON order_intents(symbol, state);
    CREATE INDEX idx_intents_state ON order_intents(state);
    CREATE TABLE intent_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_ref TEXT NOT NULL,
        at TEXT NOT NULL,
        state TEXT NOT NULL,
        note TEXT
    );
    CREATE INDEX idx_intent_log_ref ON intent_log(order_ref);
    CREATE TABLE heartbeats (
        bot TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        beat_at REAL NOT NULL,
        beat_time TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT
    );
    CREATE TABLE flags (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    3: """
    ALTER TABLE active_positions ADD COLUMN metadata TEXT;
    """,
    4: """
    CREATE TABLE operator_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        outcome TEXT
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        delivery TEXT NOT NULL
    );
    CREATE TABLE marks (
        symbol TEXT PRIMARY KEY,
        last REAL NOT NULL,
        quote_at REAL NOT NULL,
        data_type INTEGER NOT NULL DEFAULT 1,
        bot TEXT NOT NULL
    );
    """,
}

# The seed system (orelmeister/Shamir) named these columns differently: seed name -> ours.
# Its tables are rebuilt into ours keeping every row and value, and the rows we return carry
# the seed's names too, so the seed guide's snippets keep working.
SEED_COLUMN_NAMES: dict[str, dict[str, str]] = {
    "active_positions": {"entry_timestamp": "entry_time", "agent_name": "agent"},
    "closed_positions_today": {
        "profit_loss_pct": "pnl_pct",
        "agent_name": "agent",
        "timestamp": "exit_time",
    },
    "trades": {
        "timestamp": "trade_time",
        "action": "side",
        "agent_name": "agent",
        "profit_loss": "pnl",
    },
}
_SEED_TABLE_PREFIX = "_seed_"


class DatabaseError(cli.SetupError):
    """The database cannot be used; the message names the file and what to do."""


class DatabaseLocked(DatabaseError):
    """Another process held the write lock past busy_timeout: temporary, worth riding out."""


class ReentryBlocked(RuntimeError):
    """An entry was refused: entries are halted, or the symbol is active, closed today, or has
    an open entry order. `reason` is the entry rules' code for it (trading.entries)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class IntentTransitionError(RuntimeError):
    """An order intent was asked to move to a state its current state cannot reach."""


class Mark(NamedTuple):
    """The last price the exit manager saw for a held symbol, and when (exchange time)."""

    symbol: str
    last: float
    quote_at: float  # epoch seconds, exchange (simulated) time
    data_type: int = 1  # IB's market data type: 1 live, 3 delayed


@dataclass(frozen=True)
class IntegrityReport:
    """What SQLite's quick_check or integrity_check (`check`) answered, row by row."""

    ok: bool
    messages: tuple[str, ...]
    check: str = "integrity_check"

    @property
    def problems(self) -> tuple[str, ...]:
        """One entry per problem: SQLite packs several lines, under a header, into one row."""
        lines = (line.strip() for message in self.messages for line in message.splitlines())
        return tuple(line for line in lines if line and not _is_check_header(line))


def _is_check_header(line: str) -> bool:
    return line.startswith("*** ") and line.endswith(" ***")  # "*** in database main ***"


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [dict(row) for row in cursor.fetchall()]


def _with_seed_names(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """`row` with the seed's names for our known values added (agent_name beside agent, ...)."""
    for seed, ours in SEED_COLUMN_NAMES[table].items():
        if row.get(ours) is not None:
            row.setdefault(seed, row[ours])
    return row


def _with_trade_pnl_pct(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trade rows with the seed's names, and `profit_loss_pct` on exit fills of known P&L.

    An exit fill's share of its closed trade's P&L %: 100 x its P&L / the cost of every share
    of the symbol sold in these rows, so the fills of one closed trade add up to its P&L %
    (the seed guide sums this key over a day). Entries carry no `profit_loss_pct`. A row
    migrated from the seed keeps the seed's own value.
    """
    cost: dict[str, float] = defaultdict(float)
    for trade in trades:
        if trade.get("profit_loss_pct") is None:
            trade.pop("profit_loss_pct", None)
            if trade["side"] == "SELL" and trade["pnl"] is not None:
                cost[trade["symbol"]] += trade["price"] * trade["quantity"] - trade["pnl"]
    for trade in trades:
        basis = cost.get(trade["symbol"], 0.0)
        derive = "profit_loss_pct" not in trade and trade["side"] == "SELL"
        if derive and trade["pnl"] is not None and basis > 0:
            trade["profit_loss_pct"] = pnl_percent(basis, basis + trade["pnl"])
        _with_seed_names("trades", trade)
    return trades


def _run_check(conn: sqlite3.Connection, check: str) -> IntegrityReport:
    """PRAGMA quick_check or integrity_check, up to CHECK_MAX_PROBLEMS problems."""
    rows = conn.execute(f"PRAGMA {check}({CHECK_MAX_PROBLEMS})").fetchall()
    messages = tuple(str(row[0]) for row in rows)
    return IntegrityReport(ok=messages == ("ok",), messages=messages, check=check)


def _apply_migration(conn: sqlite3.Connection, target: int) -> None:
    for statement in _MIGRATIONS[target].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {target}")


@functools.cache
def _schema_at(version: int) -> dict[str, tuple[str, ...]]:
    """Each table's CREATE statements (the table's, then its indexes') at schema `version`."""
    scratch = sqlite3.connect(":memory:")
    try:
        for target in range(1, version + 1):
            _apply_migration(scratch, target)
        schema: dict[str, list[str]] = {}
        for table, sql in scratch.execute(
            "SELECT tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"
            " AND name NOT LIKE 'sqlite_%' ORDER BY type = 'index', name"
        ):
            schema.setdefault(table, []).append(sql)
    finally:
        scratch.close()
    return {table: tuple(statements) for table, statements in schema.items()}


def _order_side(side: str) -> str | None:
    """BUY or SELL for IB's and our spellings (BOT/SLD, any case); None for anything else."""
    upper = side.upper()
    upper = {"BOT": "BUY", "SLD": "SELL"}.get(upper, upper)
    return upper if upper in {"BUY", "SELL"} else None


def _same_value(name: str, value: Any, seed_name: str, seed_value: Any) -> Any:
    """The argument given under our name or the seed's; ValueError when both differ."""
    if value is not None and seed_value is not None and value != seed_value:
        raise ValueError(f"{name}={value!r} and {seed_name}={seed_value!r} disagree; give one")
    return seed_value if value is None else value


def _trading_date_of(stamp: Any) -> str | None:
    """The New York date of an ISO time ('YYYY-MM-DD'); a time without a zone keeps its date."""
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(NEW_YORK)
    return moment.date().isoformat()


def _seed_active_position(row: dict[str, Any]) -> dict[str, Any]:
    status = row.get("status")
    if status is not None and str(status).upper() != "OPEN":
        # The seed ignored such rows; as ours they would become positions to protect.
        raise ValueError(f"its status is {status!r}, not 'OPEN'")
    if row.get("trade_date") is None:
        row["trade_date"] = _trading_date_of(row.get("entry_time"))
    return row


def _seed_closed_position(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("quantity") is None:
        row["quantity"] = 0  # the seed never recorded how many shares were closed
    exit_price, pct = row.get("exit_price"), row.get("pnl_pct")
    if row.get("entry_price") is None and exit_price is not None and pct is not None and pct > -100:
        # The seed stored pnl_pct = (exit - entry) / entry * 100 only; this is its inverse.
        row["entry_price"] = round(exit_price / (1 + pct / 100), 6)
    return row


def _seed_trade(row: dict[str, Any]) -> dict[str, Any]:
    side = _order_side(str(row.get("side") or ""))
    if side is None:
        raise ValueError(f"its action is {row.get('side')!r}, neither BUY nor SELL")
    row["side"] = side
    if row.get("trade_date") is None:
        row["trade_date"] = _trading_date_of(row.get("trade_time"))
    return row


# Fill in what ours needs and the seed never had; ValueError for a row that cannot move.
_SEED_ROW_FIXES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "active_positions": _seed_active_position,
    "closed_positions_today": _seed_closed_position,
    "trades": _seed_trade,
}


class TradingDatabase:
    """The trading state in one SQLite file; safe to share between processes and threads."""

    def __init__(
        self,
        path: str | Path,
        clock: MarketClock | None = None,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        *,
        if_missing: IfMissing = "warn",
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.clock = clock or get_clock()
        self.busy_timeout_ms = busy_timeout_ms
        self.if_missing = if_missing
        self._local = threading.local()
        self._checked = False
        self._check_lock = threading.Lock()
        # IB's commission reports that came before their fill's row (execId -> commission),
        # read and written only inside a write transaction: record_fill attaches them.
        self._early_commissions: dict[str, float] = {}

    # -- connection ---------------------------------------------------------
    @property
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._open()
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, for queries by hand (the seed guide's `db.conn`).

        It is in autocommit mode: each statement commits by itself and `commit()` is harmless.
        """
        return self._conn

    @property
    def cursor(self) -> sqlite3.Cursor:
        """A cursor on this thread's connection (the seed guide's `db.cursor`)."""
        conn = self._conn
        cursor: sqlite3.Cursor | None = getattr(self._local, "cursor", None)
        if cursor is None or cursor.connection is not conn:
            cursor = self._local.cursor = conn.cursor()
        return cursor

    def _open(self) -> sqlite3.Connection:
        existed = self._check_location()
        # mode=rw: SQLite itself never creates the file, even if it vanished since the check.
        target = f"{self.path.as_uri()}?mode=rw" if self.if_missing == "refuse" else self.path
        try:
            conn = sqlite3.connect(
                target,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                uri=self.if_missing == "refuse",
            )
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            # FULL: an order intent must be on disk before its order is sent (a power loss
            # after placeOrder must not forget the orderRef). NORMAL could lose that commit.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # Check and migrate before switching to WAL: a file refused here is left
            # byte for byte as it was, whatever its journal mode. This thread switches a new
            # file to WAL before any other thread of ours opens it.
            with self._check_lock:
                if not self._checked:
                    self._verify(conn)
                    self._migrate(conn)
                    self._use_wal(conn)
                    self._checked = True
                    if not existed and self.if_missing == "warn":
                        _warn_new_database(self.path)
            self._use_wal(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error | UnicodeDecodeError):
                raise self._explain(exc) from exc
            raise
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Put the file in WAL mode (a no-op once it is).

        Two connections converting a new file at once both hold a read lock and want the
        write lock; SQLite fails one at once ("locked") rather than wait into a deadlock, so
        that one retries until busy_timeout.
        """
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                busy = getattr(exc, "sqlite_errorname", "") == "SQLITE_BUSY"
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise DatabaseError(
                f"database {self.path} could not switch to WAL mode (got {mode}): "
                "put it on a local disk, not a network share"
            )

    def _check_location(self) -> bool:
        """True when the database file exists. Refuse a folder as the path, a missing file
        when told to (`if_missing="refuse"`), or a folder we cannot create the database in.

        The file itself is only ever opened through SQLite: closing any other handle on it
        drops every POSIX lock this process holds on it, and the next program to close the
        database would then delete the -wal and -shm files under our running connections.
        """
        if self.path.is_dir():
            raise DatabaseError(
                f"database path {self.path} is a folder: set DATABASE_PATH to a file path"
            )
        if self.path.exists():
            return True
        if self.if_missing == "refuse":
            raise self._missing_error()
        folder = self.path.parent
        if not folder.exists():
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create folder {folder} for database {self.path} ({exc.strerror}): "
                    "set DATABASE_PATH to a writable location"
                ) from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DatabaseError(
                f"cannot create database {self.path}: folder {folder} is not writable; "
                "set DATABASE_PATH to a writable location"
            )
        return False

    def _missing_error(self) -> DatabaseError:
        return DatabaseError(
            f"database {self.path} does not exist: pass --db with the path of an existing "
            "trading_history.db (or set DATABASE_PATH), or start the bots once to create it"
        )

    def _verify(self, conn: sqlite3.Connection) -> None:
        report = _run_check(conn, "quick_check")
        if not report.ok:
            raise self.corruption_error(report)

    def corruption_error(self, report: IntegrityReport) -> DatabaseError:
        """The one-line refusal of a damaged file: how many problems, the first, and where the
        full report was written (beside the database, which is never touched)."""
        problems = report.problems or report.messages
        count = f"{len(problems)}{'+' if len(problems) >= CHECK_MAX_PROBLEMS else ''} problem"
        count += "" if len(problems) == 1 else "s"
        try:
            where = f"full report in {self._write_integrity_report(report)}"
        except OSError as exc:
            where = (
                f"full report not written: folder {self.path.parent} is not writable "
                f"({exc.strerror or exc})"
            )
        return DatabaseError(
            f"database {self.path} is corrupt ({report.check} found {count}, first: "
            f"{problems[0]}; {where}): stop the bots, restore the newest file from the archive "
            "folder (or move it aside) and start again"
        )

    def _write_integrity_report(self, report: IntegrityReport) -> Path:
        """Write `<db>.integrity-YYYYMMDD-HHMMSS.txt` beside the database; never overwrites one.

        Raises OSError when the folder cannot be written.
        """
        now = self.clock.now()
        text = "\n".join(
            (
                f"database: {self.path}",
                f"check: PRAGMA {report.check} (New York time {now:%Y-%m-%d %H:%M:%S})",
                f"problems: {len(report.problems)}",
                "",
                *report.messages,
                "",
            )
        )
        stem = f"{self.path.name}.integrity-{now:%Y%m%d-%H%M%S}"
        for attempt in range(1, 100):
            target = self.path.with_name(f"{stem}.txt" if attempt == 1 else f"{stem}-{attempt}.txt")
            try:
                with open(target, "x", encoding="utf-8") as out:
                    out.write(text)
            except FileExistsError:
                continue
            return target
        raise FileExistsError(f"{stem}.txt and 98 more already exist")

    def _explain(self, exc: sqlite3.Error | UnicodeDecodeError) -> DatabaseError:
        text = str(exc)
        if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
            # Python decodes SQLite's error text as UTF-8; a damaged schema quotes raw bytes.
            text = exc.object.decode(errors="replace")
        lowered = text.lower()
        if isinstance(exc, DatabaseError):
            return exc
        if self.if_missing == "refuse" and not self.path.exists():
            return self._missing_error()  # removed between the check and the open
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
            return DatabaseError(
                f"database {self.path} is not a SQLite database: move it aside "
                f"(e.g. rename it to {self.path.name}.bad) and start again; it was not changed"
            )
        if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
            return DatabaseError(
                f"database {self.path} is corrupt ({text}): stop the bots, restore the newest file "
                "from the archive folder (or move it aside) and start again"
            )
        if "locked" in lowered or "busy" in lowered:
            return DatabaseLocked(
                f"database {self.path} stayed locked for {self.busy_timeout_ms / 1000:g} s ({text}): "
                "another program holds a long write; close it (e.g. a DB browser) and retry"
            )
        if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
            return DatabaseError(
                f"database {self.path} cannot be written ({text}): the file and its folder must be "
                "writable (SQLite WAL needs -wal and -shm files beside it)"
            )
        return DatabaseError(f"database {self.path} failed: {text}")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION in one transaction: all of it, or nothing changed.

        Tables still in the seed system's shape (at any version: an earlier migration stamped
        such files without converting them) are moved aside, recreated as ours and refilled.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DatabaseError(
                    f"database {self.path} has schema version {version}, newer than this program's "
                    f"{SCHEMA_VERSION}: update the program"
                )
            seed_tables = self._seed_tables(conn)
            for name in seed_tables:
                conn.execute(f"ALTER TABLE {name} RENAME TO {_SEED_TABLE_PREFIX}{name}")
                for statement in _schema_at(version).get(name, ()):
                    conn.execute(statement)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _apply_migration(conn, target)
            for name in seed_tables:
                self._refill_from_seed(conn, name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _seed_tables(self, conn: sqlite3.Connection) -> list[str]:
        """Our tables that still have the seed's columns; DatabaseError for any other shape."""
        found = []
        for name, renames in SEED_COLUMN_NAMES.items():
            columns = {row["name"] for row in conn.execute(f"PRAGMA table_info({name})")}
            ours, seed = set(renames.values()), set(renames)
            if not columns or ours <= columns:
                continue
            if seed <= columns and not ours & columns:
                found.append(name)
                continue
            raise DatabaseError(
                f"database {self.path}: table {name} ({', '.join(sorted(columns))}) is neither "
                "this program's nor the seed system's, so it cannot be migrated; the file was not "
                f"changed: move it aside (e.g. rename it to {self.path.name}.old) and start again"
            )
        return found

    def _refill_from_seed(self, conn: sqlite3.Connection, name: str) -> None:
        """Copy every row of the moved-aside seed table into ours, then drop it.

        Seed columns renamed in SEED_COLUMN_NAMES land in ours; any other seed column is
        added to ours as it was, so no value is lost.
        """
        source = f"{_SEED_TABLE_PREFIX}{name}"
        renames = SEED_COLUMN_NAMES[name]
        columns = {row["name"] for row in conn.execute(f"PRAGMA table_info({name})")}
        for row in conn.execute(f"PRAGMA table_info({source})").fetchall():
            column = renames.get(row["name"], row["name"])
            if column not in columns:
                conn.execute(f'ALTER TABLE {name} ADD COLUMN "{column}" {row["type"]}')
                columns.add(column)
        fix = _SEED_ROW_FIXES[name]
        for seed_row in conn.execute(f"SELECT * FROM {source}").fetchall():
            values = {renames.get(key, key): value for key, value in dict(seed_row).items()}
            try:
                values = fix(values)
                names = ", ".join(f'"{column}"' for column in values)
                conn.execute(
                    f"INSERT INTO {name} ({names}) VALUES ({', '.join('?' * len(values))})",
                    tuple(values.values()),
                )
            except (ValueError, sqlite3.IntegrityError) as exc:
                raise DatabaseError(
                    f"database {self.path}: the seed's {name} row for {values.get('symbol')!r} "
                    f"cannot be migrated ({exc}); the file was not changed: correct or delete "
                    "that row (e.g. with a SQLite browser) or move the file aside, then start again"
                ) from exc
        conn.execute(f"DROP TABLE {source}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A BEGIN IMMEDIATE transaction: takes the write lock up front so it never upgrades."""
        conn = self._conn
        self._begin_immediate(conn)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise self._explain(exc) from exc

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting up to busy_timeout for the write lock, polled every
        WRITE_LOCK_POLL_S instead of SQLite's coarse back-off (see WRITE_LOCK_POLL_S).
        Raises DatabaseLocked when the lock stays taken past busy_timeout."""
        # Only this statement waits in Python; reads and COMMIT keep SQLite's busy_timeout.
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            started: float | None = None
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if not getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                        raise self._explain(exc) from exc
                    now = time.monotonic()
                    started = now if started is None else started
                    waited = now - started
                    if waited >= self.busy_timeout_ms / 1000:
                        raise self._explain(exc) from exc
                    slow = waited >= WRITE_LOCK_SLOW_AFTER_S
                    _pause(WRITE_LOCK_SLOW_POLL_S if slow else WRITE_LOCK_POLL_S)
                except sqlite3.Error as exc:
                    raise self._explain(exc) from exc
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = self._local.cursor = None

    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version").fetchone()[0])

    # -- time ---------------------------------------------------------------
    def _today(self) -> str:
        return self.clock.today_str()

    def _now_iso(self) -> str:
        return self.clock.now().isoformat(timespec="seconds")

    # -- positions ------------------------------------------------------------
    def is_position_active(self, symbol: str) -> bool:
        row = self._read("SELECT 1 FROM active_positions WHERE symbol = ?", (symbol,)).fetchone()
        return row is not None

    def was_closed_today(self, symbol: str) -> bool:
        row = self._read(
            "SELECT 1 FROM closed_positions_today WHERE symbol = ? AND close_date = ?",
            (symbol, self._today()),
        ).fetchone()
        return row is not None

    def add_active_position(
        self,
        symbol: str,
        quantity: int,
        entry_price: float,
        profit_target_price: float | None = None,
        stop_loss_price: float | None = None,
        agent: str | None = None,
        order_ref: str | None = None,
        entry_time: str | None = None,
        *,
        profit_target_pct: float | None = None,
        stop_loss_pct: float | None = None,
        tick: float = 0.01,
        agent_name: str | None = None,
        profit_target: float | None = None,
        stop_loss: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a new open position; False if the symbol is already active (nothing changed).

        Target and stop are the caller's: the prices, or percentages from the entry price
        (rounded onto `tick`). One not given stays unset (NULL), and the exit manager then
        protects at its configured percentage: the store reads no settings.
        The seed system's keywords work too: `agent_name` (agent, default day_trader),
        `profit_target` / `stop_loss` (the prices) and `metadata` (kept as JSON).
        Raises TypeError for a price that is not a number (e.g. the seed's positional order).
        """
        agent = _same_value("agent", agent, "agent_name", agent_name) or "day_trader"
        profit_target_price = _same_value(
            "profit_target_price", profit_target_price, "profit_target", profit_target
        )
        stop_loss_price = _same_value("stop_loss_price", stop_loss_price, "stop_loss", stop_loss)
        for name, price in (
            ("profit_target_price", profit_target_price),
            ("stop_loss_price", stop_loss_price),
        ):
            if price is not None and not isinstance(price, int | float):
                raise TypeError(
                    f"{symbol}: {name} must be a price, got {price!r}; the seed's order (symbol, "
                    "quantity, entry_price, agent_name, profit_target, stop_loss) works by keyword"
                )
        if quantity <= 0 or entry_price <= 0:
            raise ValueError(f"{symbol}: quantity and entry price must be > 0 for a long position")
        for price, pct, what in (
            (profit_target_price, profit_target_pct, "profit target"),
            (stop_loss_price, stop_loss_pct, "stop loss"),
        ):
            if price is not None and pct is not None:
                raise ValueError(f"{symbol}: give the {what} as a price or a percentage, not both")
        if profit_target_price is None and profit_target_pct is not None:
            profit_target_price = _target_price(entry_price, profit_target_pct, tick)
        if stop_loss_price is None and stop_loss_pct is not None:
            stop_loss_price = _stop_price(entry_price, stop_loss_pct, tick)
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO active_positions (symbol, quantity, entry_price, entry_time,"
                " profit_target_price, stop_loss_price, agent, order_ref, trade_date, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    symbol,
                    int(quantity),
                    float(entry_price),
                    entry_time or self._now_iso(),
                    profit_target_price,
                    stop_loss_price,
                    agent,
                    order_ref,
                    self._today(),
                    None if metadata is None else json.dumps(dict(metadata)),
                ),
            )
            return cursor.rowcount == 1

    def update_active_position(self, symbol: str, **changes: Any) -> bool:
        """Change quantity / prices of an open position; False if it is not active."""
        allowed = {"quantity", "entry_price", "profit_target_price", "stop_loss_price", "agent"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}; allowed: {sorted(allowed)}")
        if not changes:
            return self.is_position_active(symbol)
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE active_positions SET {assignments} WHERE symbol = ?",
                (*changes.values(), symbol),
            )
            return cursor.rowcount == 1

    def remove_active_position(
        self,
        symbol: str,
        exit_price: float,
        exit_reason: str,
        exit_time: str | None = None,
    ) -> dict[str, Any] | None:
        """Atomically move an open position to today's closed list with its P&L.

        Returns the closed row, or None when the symbol was not active (nothing changed).
        """
        reason = exit_reason.upper()
        if reason not in EXIT_REASONS:
            raise ValueError(
                f"exit reason {exit_reason!r} unknown; use one of {sorted(EXIT_REASONS)}"
            )
        today = self._today()
        with self._write() as conn:
            row = conn.execute(
                "SELECT * FROM active_positions WHERE symbol = ?", (symbol,)
            ).fetchone()
            if row is None:
                return None
            closed = {
                "symbol": symbol,
                "quantity": row["quantity"],
                "entry_price": row["entry_price"],
                "exit_price": float(exit_price),
                "entry_time": row["entry_time"],
                "exit_time": exit_time or self._now_iso(),
                "pnl_pct": pnl_percent(row["entry_price"], exit_price),
                "pnl": pnl_dollars(row["entry_price"], exit_price, row["quantity"]),
                "exit_reason": reason,
                "agent": row["agent"],
                "close_date": today,
            }
            conn.execute("DELETE FROM active_positions WHERE symbol = ?", (symbol,))
            # A second close of one symbol in a day (e.g. an adopted manual re-buy) updates
            # the day's row, adding the P&L, rather than failing on UNIQUE(symbol, close_date).
            conn.execute(
                "INSERT INTO closed_positions_today (symbol, quantity, entry_price, exit_price,"
                " entry_time, exit_time, pnl_pct, pnl, exit_reason, agent, close_date)"
                " VALUES (:symbol, :quantity, :entry_price, :exit_price, :entry_time, :exit_time,"
                " :pnl_pct, :pnl, :exit_reason, :agent, :close_date)"
                " ON CONFLICT(symbol, close_date) DO UPDATE SET"
                " quantity = quantity + excluded.quantity, exit_price = excluded.exit_price,"
                " exit_time = excluded.exit_time, pnl = coalesce(pnl, 0) + excluded.pnl,"
                " pnl_pct = excluded.pnl_pct, exit_reason = excluded.exit_reason",
                closed,
            )
            return _with_seed_names("closed_positions_today", closed)

    def clear_closed_today(self, include_today: bool = False) -> int:
        """Start a new trading day: drop closed rows of earlier dates; returns rows removed.

        Today's rows stay unless `include_today` (a deliberate manual reset that re-allows
        entries): a supervisor restarted mid-day must not re-open today's closed symbols.
        Trades stay in `trades` for history either way.
        """
        with self._write() as conn:
            if include_today:
                cursor = conn.execute("DELETE FROM closed_positions_today")
            else:
                cursor = conn.execute(
                    "DELETE FROM closed_positions_today WHERE close_date < ?", (self._today(),)
                )
            return cursor.rowcount

    def get_active_positions(self) -> list[dict[str, Any]]:
        """Open positions, oldest first, with the seed's names too (agent_name, ...)."""
        rows = _rows(self._read("SELECT * FROM active_positions ORDER BY entry_time, symbol"))
        return [_with_seed_names("active_positions", row) for row in rows]

    def get_active_position(self, symbol: str) -> dict[str, Any] | None:
        row = self._read("SELECT * FROM active_positions WHERE symbol = ?", (symbol,)).fetchone()
        return _with_seed_names("active_positions", dict(row)) if row else None

    def get_closed_today(self) -> list[dict[str, Any]]:
        """Today's closed positions with their P&L; rows carry the seed's names too."""
        rows = _rows(
            self._read(
                "SELECT * FROM closed_positions_today WHERE close_date = ? ORDER BY exit_time",
                (self._today(),),
            )
        )
        return [_with_seed_names("closed_positions_today", row) for row in rows]

    # -- trades ---------------------------------------------------------------
    def record_fill(self, fill: FillRecord, agent: str) -> bool:
        """Record one execution and, when known, IB's commission for it; True when it is new.

        The one way a fill reaches the trades table. Keyed by execId: applying a fill twice
        writes one row, and a commission known only the second time is attached then. A
        commission reported before its fill (record_commission returned False) is attached
        when the fill comes. A SELL's P&L is against the active position's entry price at
        that moment (none without a position). Raises ValueError for an unknown side, no
        execId, or a quantity or price that is not positive.
        """
        if not fill.exec_id:
            raise ValueError(f"{fill.symbol}: a fill needs IB's execId (its key)")
        if not (fill.shares > 0 and fill.price > 0):
            raise ValueError(f"{fill.symbol}: fill quantity and price must be > 0")
        return self._insert_trade(
            fill.symbol, fill.side, fill.shares, fill.price, agent, fill.order_ref or None, None,
            fill.commission, fill.exec_id, fill.time, pnl_from_position=True,
        )  # fmt: skip

    def record_trade(
        self,
        symbol: str,
        side: str,
        quantity: float,
        price: float,
        agent: str,
        order_ref: str | None = None,
        pnl: float | None = None,
        commission: float | None = None,
        exec_id: str | None = None,
        trade_time: datetime | None = None,
    ) -> bool:
        """Record one trade row as given (the seed's call; a fill goes through record_fill);
        False when `exec_id` was already recorded (applying twice is harmless).

        `trade_time` (default: now) is stored in New York time; its date is the trading date.
        """
        return self._insert_trade(
            symbol, side, quantity, price, agent, order_ref, pnl, commission, exec_id,
            trade_time, pnl_from_position=False,
        )  # fmt: skip

    def _insert_trade(
        self,
        symbol: str,
        side: str,
        quantity: float,
        price: float,
        agent: str,
        order_ref: str | None,
        pnl: float | None,
        commission: float | None,
        exec_id: str | None,
        trade_time: datetime | None,
        *,
        pnl_from_position: bool,
    ) -> bool:
        normal_side = _order_side(side)
        if normal_side is None:
            raise ValueError(f"trade side {side!r} unknown; use BUY or SELL")
        when = (trade_time or self.clock.now()).astimezone(NEW_YORK)
        with self._write() as conn:
            if exec_id and commission is None:
                commission = self._early_commissions.get(exec_id)
            if pnl_from_position and normal_side == "SELL":
                row = conn.execute(
                    "SELECT entry_price FROM active_positions WHERE symbol = ?", (symbol,)
                ).fetchone()
                pnl = pnl_dollars(row["entry_price"], price, quantity) if row else None
            cursor = conn.execute(
                "INSERT OR IGNORE INTO trades (symbol, side, quantity, price, trade_time,"
                " trade_date, order_ref, agent, pnl, commission, exec_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    symbol,
                    normal_side,
                    float(quantity),
                    float(price),
                    when.isoformat(timespec="seconds"),
                    when.date().isoformat(),
                    order_ref,
                    agent,
                    pnl,
                    None if commission is None else float(commission),
                    exec_id,
                ),
            )
            new = cursor.rowcount == 1
            if exec_id and commission is not None:
                if not new:  # recorded before its commission was known
                    conn.execute(
                        "UPDATE trades SET commission = ? WHERE exec_id = ?",
                        (float(commission), exec_id),
                    )
                self._early_commissions.pop(exec_id, None)
            return new

    def record_commission(self, exec_id: str, commission: float) -> bool:
        """Attach IB's commission report to its fill; False when the fill is not recorded yet
        (then the fill takes it when record_fill or record_trade writes it)."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE trades SET commission = ? WHERE exec_id = ?", (float(commission), exec_id)
            )
            if cursor.rowcount == 1:
                return True
            self._early_commissions[exec_id] = float(commission)
            return False

    def has_execution(self, exec_id: str) -> bool:
        return (
            self._read("SELECT 1 FROM trades WHERE exec_id = ?", (exec_id,)).fetchone() is not None
        )

    def get_trades_by_date(self, trade_date: str) -> list[dict[str, Any]]:
        """Every fill of a trading date 'YYYY-MM-DD' (New York), oldest first.

        Rows carry the seed's names too, and exit fills their share of the closed trade's
        P&L % as `profit_loss_pct` (see _with_trade_pnl_pct).
        """
        try:
            date.fromisoformat(trade_date)
        except ValueError:
            raise ValueError(f"date {trade_date!r} is not YYYY-MM-DD") from None
        return _with_trade_pnl_pct(
            _rows(
                self._read(
                    "SELECT * FROM trades WHERE trade_date = ? ORDER BY trade_time, id",
                    (trade_date,),
                )
            )
        )

    # -- order intents ------------------------------------------------------------
    def new_order_ref(self, agent: str, symbol: str) -> str:
        """A unique orderRef, readable in IB's order list: agent-symbol-time-random."""
        stamp = self.clock.now().strftime("%Y%m%d%H%M%S")
        return f"{agent}-{symbol}-{stamp}-{uuid.uuid4().hex[:8]}"

    def create_order_intent(
        self,
        symbol: str,
        side: str,
        quantity: float,
        order_type: str,
        agent: str,
        *,
        limit_price: float | None = None,
        stop_price: float | None = None,
        purpose: str | None = None,
        parent_ref: str | None = None,
        oca_group: str | None = None,
        order_ref: str | None = None,
        guard_entry: bool = False,
        max_open_positions: int | None = None,
    ) -> str:
        """Record an order before it is sent; returns its unique orderRef.

        With `guard_entry`, refuse (ReentryBlocked) in the same transaction when entries are
        halted (the kill-switch flag), the symbol is active, was closed today, or already has an
        open BUY intent, so two racing processes cannot enter one symbol twice. With `max_open_positions` too, also refuse when active
        positions plus working entry orders already fill every slot (one free slot is never
        filled twice, even by racing processes).
        """
        side = side.upper()
        if side not in {"BUY", "SELL"}:
            raise ValueError(f"order side {side!r} unknown; use BUY or SELL")
        if quantity <= 0:
            raise ValueError(f"{symbol}: order quantity must be > 0, got {quantity}")
        order_ref = order_ref or self.new_order_ref(agent, symbol)
        now, today = self._now_iso(), self._today()
        with self._write() as conn:
            if guard_entry:
                # The halt is read in this transaction: once halt_entries() has committed,
                # no entry intent can be written (and so no entry order sent).
                refusal = self._entries_halted_reason(conn)
                refusal = refusal or self._entry_block_reason(conn, symbol, today)
                if refusal is None and max_open_positions is not None:
                    refusal = self._slots_full_reason(conn, max_open_positions)
                if refusal:
                    code, why = refusal
                    raise ReentryBlocked(f"{symbol}: entry refused, {why}", code)
            conn.execute(
                "INSERT INTO order_intents (order_ref, symbol, side, quantity, order_type,"
                " limit_price, stop_price, purpose, agent, parent_ref, oca_group, state,"
                " trade_date, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    order_ref,
                    symbol,
                    side,
                    quantity,
                    order_type,
                    limit_price,
                    stop_price,
                    purpose,
                    agent,
                    parent_ref,
                    oca_group,
                    PENDING_SUBMIT,
                    today,
                    now,
                    now,
                ),
            )
            conn.execute(
                "INSERT INTO intent_log (order_ref, at, state, note) VALUES (?, ?, ?, ?)",
                (order_ref, now, PENDING_SUBMIT, purpose),
            )
        return order_ref

    @staticmethod
    def _entry_block_reason(
        conn: sqlite3.Connection, symbol: str, today: str
    ) -> tuple[str, str] | None:
        """(reason code, text) when this symbol may not be entered, else None."""
        if conn.execute("SELECT 1 FROM active_positions WHERE symbol = ?", (symbol,)).fetchone():
            return POSITION_ACTIVE, "position is active"
        if conn.execute(
            "SELECT 1 FROM closed_positions_today WHERE symbol = ? AND close_date = ?",
            (symbol, today),
        ).fetchone():
            return CLOSED_TODAY, "position was closed today"
        if conn.execute(
            "SELECT 1 FROM order_intents WHERE symbol = ? AND side = 'BUY'"
            " AND state IN ('PENDING_SUBMIT', 'SUBMITTED')",
            (symbol,),
        ).fetchone():
            return ENTRY_WORKING, "an entry order is already working"
        return None

    @staticmethod
    def _slots_full_reason(
        conn: sqlite3.Connection, max_open_positions: int
    ) -> tuple[str, str] | None:
        used = conn.execute(
            "SELECT count(*) FROM (SELECT symbol FROM active_positions UNION"
            " SELECT symbol FROM order_intents WHERE side = 'BUY'"
            " AND state IN ('PENDING_SUBMIT', 'SUBMITTED'))"
        ).fetchone()[0]
        if used >= max_open_positions:
            return (
                MAX_OPEN_POSITIONS,
                f"max open positions reached ({used} of {max_open_positions} in use)",
            )
        return None

    def update_order_intent(
        self,
        order_ref: str,
        state: str,
        *,
        ib_order_id: int | None = None,
        perm_id: int | None = None,
        filled_quantity: float | None = None,
        avg_fill_price: float | None = None,
        note: str | None = None,
        stop_price: float | None = None,
        purpose: str | None = None,
    ) -> dict[str, Any]:
        """Move an intent to `state` (checked against INTENT_TRANSITIONS) and log the move.

        Repeating the current state only updates the details (`stop_price`: a working stop
        modified in place; `purpose`: that stop moved through the market to exit, so its
        fill is booked for the exit's reason). Returns the updated row;
        raises KeyError for an unknown orderRef and IntentTransitionError for an illegal move.
        """
        if state not in INTENT_STATES:
            raise ValueError(f"order state {state!r} unknown; use one of {sorted(INTENT_STATES)}")
        now = self._now_iso()
        with self._write() as conn:
            row = conn.execute(
                "SELECT * FROM order_intents WHERE order_ref = ?", (order_ref,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no order intent with orderRef {order_ref!r}")
            current = row["state"]
            if state != current and state not in INTENT_TRANSITIONS[current]:
                raise IntentTransitionError(
                    f"order {order_ref}: cannot move from {current} to {state}"
                )
            conn.execute(
                "UPDATE order_intents SET state = ?, ib_order_id = coalesce(?, ib_order_id),"
                " perm_id = coalesce(?, perm_id),"
                " filled_quantity = coalesce(?, filled_quantity),"
                " avg_fill_price = coalesce(?, avg_fill_price),"
                " stop_price = coalesce(?, stop_price), purpose = coalesce(?, purpose),"
                " note = coalesce(?, note), updated_at = ? WHERE order_ref = ?",
                (
                    state,
                    ib_order_id,
                    perm_id,
                    filled_quantity,
                    avg_fill_price,
                    stop_price,
                    purpose,
                    note,
                    now,
                    order_ref,
                ),
            )
            if state != current or note:
                conn.execute(
                    "INSERT INTO intent_log (order_ref, at, state, note) VALUES (?, ?, ?, ?)",
                    (order_ref, now, state, note),
                )
            updated = conn.execute(
                "SELECT * FROM order_intents WHERE order_ref = ?", (order_ref,)
            ).fetchone()
            return dict(updated)

    def get_order_intent(self, order_ref: str) -> dict[str, Any] | None:
        row = self._read("SELECT * FROM order_intents WHERE order_ref = ?", (order_ref,)).fetchone()
        return dict(row) if row else None

    def get_open_intents(
        self, symbol: str | None = None, agent: str | None = None
    ) -> list[dict[str, Any]]:
        """Intents not yet final (PENDING_SUBMIT or SUBMITTED), optionally for one symbol/agent."""
        sql = "SELECT * FROM order_intents WHERE state IN ('PENDING_SUBMIT', 'SUBMITTED')"
        params: list[Any] = []
        if symbol is not None:
            sql += " AND symbol = ?"
            params.append(symbol)
        if agent is not None:
            sql += " AND agent = ?"
            params.append(agent)
        return _rows(self._read(sql + " ORDER BY id", tuple(params)))

    def get_intents_by_date(self, trade_date: str) -> list[dict[str, Any]]:
        return _rows(
            self._read(
                "SELECT * FROM order_intents WHERE trade_date = ? ORDER BY id", (trade_date,)
            )
        )

    def get_intent_log(self, order_ref: str) -> list[dict[str, Any]]:
        return _rows(
            self._read("SELECT * FROM intent_log WHERE order_ref = ? ORDER BY id", (order_ref,))
        )

    # -- heartbeats and flags ---------------------------------------------------------
    def beat(
        self,
        bot: str,
        state: str,
        detail: str | None = None,
        pid: int | None = None,
        *,
        marks: Iterable[Mark] | None = None,
    ) -> None:
        """Record that `bot` is alive in `state` (real wall time: the supervisor's watchdog).

        `marks`, when given, replace the bot's published last prices in the same transaction
        (the dashboard's unrealised P&L): a symbol left out is no longer held.
        """
        with self._write() as conn:
            conn.execute(
                "INSERT INTO heartbeats (bot, pid, beat_at, beat_time, state, detail)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(bot) DO UPDATE SET pid = excluded.pid,"
                " beat_at = excluded.beat_at, beat_time = excluded.beat_time,"
                " state = excluded.state, detail = excluded.detail",
                (bot, pid or os.getpid(), time.time(), self._now_iso(), state, detail),
            )
            if marks is not None:
                conn.execute("DELETE FROM marks WHERE bot = ?", (bot,))
                conn.executemany(
                    "INSERT OR REPLACE INTO marks (symbol, last, quote_at, data_type, bot)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(m.symbol, m.last, m.quote_at, m.data_type, bot) for m in marks],
                )

    def get_marks(self) -> dict[str, Mark]:
        """symbol -> the last published price of each held symbol."""
        rows = _rows(self._read("SELECT symbol, last, quote_at, data_type FROM marks"))
        return {row["symbol"]: Mark(**row) for row in rows}

    def get_heartbeats(self) -> dict[str, dict[str, Any]]:
        return {row["bot"]: row for row in _rows(self._read("SELECT * FROM heartbeats"))}

    def set_flag(self, name: str, value: str | None) -> None:
        """Set (or with None, clear) a named flag such as the entries kill switch."""
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM flags WHERE name = ?", (name,))
            else:
                conn.execute(
                    "INSERT INTO flags (name, value, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = excluded.value,"
                    " updated_at = excluded.updated_at",
                    (name, value, self._now_iso()),
                )

    def get_flag(self, name: str) -> str | None:
        row = self._read("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def halt_entries(self, reason: str) -> list[dict[str, Any]]:
        """Halt new entries (the kill-switch flag, set to `reason`); exits go on.

        Returns the entry (BUY) intents still open when the halt committed: written before it,
        they may still reach IB, so whoever halts must watch them. Every later entry is refused
        by the guard in create_order_intent (same lock), so none is missing from the list.
        """
        with self._write() as conn:
            conn.execute(
                "INSERT INTO flags (name, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (KILL_SWITCH_FLAG, reason, self._now_iso()),
            )
            return _rows(
                conn.execute(
                    "SELECT * FROM order_intents WHERE side = 'BUY'"
                    " AND state IN ('PENDING_SUBMIT', 'SUBMITTED') ORDER BY id"
                )
            )

    def entries_halted(self) -> str | None:
        """Why new entries are halted (the kill-switch flag's value), or None."""
        return self.get_flag(KILL_SWITCH_FLAG)

    def resume_entries(self) -> str | None:
        """Lift the halt; returns the reason it held, or None when entries were not halted."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT value FROM flags WHERE name = ?", (KILL_SWITCH_FLAG,)
            ).fetchone()
            conn.execute("DELETE FROM flags WHERE name = ?", (KILL_SWITCH_FLAG,))
            return None if row is None else str(row[0])

    def request_exit(self, symbol: str, who: str) -> bool:
        """Ask the exit manager to sell `symbol` now; False when it is not an open position."""
        with self._write() as conn:
            if not conn.execute(
                "SELECT 1 FROM active_positions WHERE symbol = ?", (symbol,)
            ).fetchone():
                return False
            conn.execute(
                "INSERT INTO flags (name, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (EXIT_REQUEST_PREFIX + symbol, who, self._now_iso()),
            )
            return True

    def take_exit_requests(self) -> dict[str, str]:
        """symbol -> who asked, for every exit request, each handed out once (then cleared)."""
        pattern = EXIT_REQUEST_PREFIX.replace("_", "\\_") + "%"
        with self._write() as conn:
            rows = conn.execute(
                "SELECT name, value FROM flags WHERE name LIKE ? ESCAPE '\\'", (pattern,)
            ).fetchall()
            conn.executemany("DELETE FROM flags WHERE name = ?", [(r["name"],) for r in rows])
        return {str(r["name"])[len(EXIT_REQUEST_PREFIX) :]: str(r["value"]) for r in rows}

    def pending_exit_requests(self) -> dict[str, str]:
        """symbol -> who asked, for the requests the exit manager has not taken yet."""
        pattern = EXIT_REQUEST_PREFIX.replace("_", "\\_") + "%"
        rows = self._read(
            "SELECT name, value FROM flags WHERE name LIKE ? ESCAPE '\\'", (pattern,)
        ).fetchall()
        return {str(r["name"])[len(EXIT_REQUEST_PREFIX) :]: str(r["value"]) for r in rows}

    # -- operator actions and alerts ------------------------------------------------------
    def record_operator_action(
        self, who: str, action: str, target: str | None = None, outcome: str | None = None
    ) -> int:
        """Record what a person did (from the dashboard), by whom and when; returns its id."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO operator_actions (at, who, action, target, outcome)"
                " VALUES (?, ?, ?, ?, ?)",
                (self._now_iso(), who, action, target, outcome),
            )
            return int(cursor.lastrowid or 0)

    def set_operator_action_outcome(self, action_id: int, outcome: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE operator_actions SET outcome = ? WHERE id = ?", (outcome, action_id)
            )

    def get_operator_actions(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest operator actions, newest first."""
        return _rows(
            self._read("SELECT * FROM operator_actions ORDER BY id DESC LIMIT ?", (limit,))
        )

    def record_alert(self, kind: str, title: str, body: str, delivery: str) -> int:
        """Record an alert raised (`delivery`: queued, sent, failed, rate_limited, off)."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO alerts (at, kind, title, body, delivery) VALUES (?, ?, ?, ?, ?)",
                (self._now_iso(), kind, title, body, delivery),
            )
            return int(cursor.lastrowid or 0)

    def set_alert_delivery(self, alert_id: int, delivery: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE alerts SET delivery = ? WHERE id = ?", (delivery, alert_id))

    def get_alerts(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest alerts, newest first."""
        return _rows(self._read("SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (limit,)))

    @staticmethod
    def _entries_halted_reason(conn: sqlite3.Connection) -> tuple[str, str] | None:
        row = conn.execute("SELECT value FROM flags WHERE name = ?", (KILL_SWITCH_FLAG,)).fetchone()
        if row is None:
            return None
        return KILL_SWITCH, f"entries halted ({row[0]}; lift: {RESUME_ENTRIES})"

    # -- maintenance ---------------------------------------------------------------------
    def integrity_check(self) -> IntegrityReport:
        """SQLite's full integrity_check; ok is True only when it answers exactly 'ok'."""
        try:
            return _run_check(self._conn, "integrity_check")
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc

    def backup(self, dest_dir: str | Path, keep_days: int) -> Path:
        """Copy the live database with SQLite's online backup API; returns the backup file.

        The file is `<dest_dir>/<stem>_YYYY-MM-DD.db` (trading date); older backups beyond
        `keep_days` days are deleted. Safe while other processes write. The caller names the
        folder and the days (BACKUP_DIR, BACKUP_KEEP_DAYS): the store reads no settings.
        """
        dest = Path(dest_dir)
        keep = keep_days
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create backup folder {dest} ({exc.strerror}): set BACKUP_DIR to a "
                "writable folder"
            ) from exc
        target = dest / f"{self.path.stem}_{self._today()}.db"
        partial = target.with_suffix(".db.partial")
        try:
            with sqlite3.connect(partial) as out:
                self._conn.backup(out, pages=256)
            out.close()
            os.replace(partial, target)
        except sqlite3.Error as exc:
            partial.unlink(missing_ok=True)
            raise self._explain(exc) from exc
        self._prune_backups(dest, keep)
        return target

    def _prune_backups(self, dest: Path, keep_days: int) -> None:
        oldest = self.clock.today() - timedelta(days=keep_days)
        for old in dest.glob(f"{self.path.stem}_????-??-??.db"):
            try:
                stamp = date.fromisoformat(old.stem.rsplit("_", 1)[1])
            except ValueError:
                continue
            if stamp < oldest:
                old.unlink(missing_ok=True)


def _warn_new_database(path: Path) -> None:
    # The text also reaches a console with no logging set up (Python's last-resort handler).
    advice = (
        "if you expected existing positions, you are in the wrong folder or DATABASE_PATH "
        "points elsewhere"
    )
    logging.getLogger("observability").warning(
        "created a new empty database at %s: %s",
        path,
        advice,
        extra={"event": "database_created", "path": str(path), "action": advice},
    )


_databases: dict[tuple[int, Path], TradingDatabase] = {}
_databases_lock = threading.Lock()


def get_database(
    path: str | Path | None = None, *, if_missing: IfMissing = "warn"
) -> TradingDatabase:
    """The process's TradingDatabase for `path` (default: DATABASE_PATH from settings).

    A missing file is created with a warning naming it, created quietly, or refused, as
    `if_missing` says (see IfMissing). Raises DatabaseError (one line: file and what to do)
    when the file cannot be used.
    """
    if path is None:
        from core.settings import get_settings

        path = get_settings().database_path
    resolved = Path(path).expanduser().resolve()
    key = (os.getpid(), resolved)
    with _databases_lock:
        database = _databases.get(key)
        if database is None:
            database = TradingDatabase(resolved, if_missing=if_missing)
            database._conn  # open now so a bad file fails here, at startup  # noqa: B018
            _databases[key] = database
        return database


def _self_check(path: str | None) -> int:
    database = get_database(path)
    report = database.integrity_check()
    if not report.ok:  # quick_check at open passed; the full check found more
        raise database.corruption_error(report)
    print(f"database: {database.path}")
    print(f"schema version: {database.schema_version()}  integrity: ok")
    print(
        f"trading date (New York): {database.clock.today()}  now: {database.clock.now():%H:%M:%S}"
    )
    print(f"active positions: {len(database.get_active_positions())}")
    print(f"closed today: {len(database.get_closed_today())}")
    print(f"trades today: {len(database.get_trades_by_date(database.clock.today_str()))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from core.settings import SettingsError

    parser = cli.OneLineParser(description="Check or inspect the trading database.")
    parser.add_argument("--self-check", action="store_true", help="create/check the database")
    parser.add_argument("--db", help="database file (default: DATABASE_PATH)")
    parser.add_argument("--backup", action="store_true", help="write a backup into BACKUP_DIR")
    args = parser.parse_args(argv)
    try:
        if args.backup:  # a backup of nothing would hide a wrong path
            from core.settings import get_settings

            settings = get_settings()
            database = get_database(args.db, if_missing="refuse")
            written = database.backup(settings.backup_dir, settings.backup_keep_days)
            print(f"backup written: {written}")
            return 0
        return _self_check(args.db)
    except (DatabaseError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CANCELLED",
    "EXIT_REASONS",
    "EXIT_REQUEST_PREFIX",
    "FILLED",
    "INTENT_TRANSITIONS",
    "KILL_SWITCH_FLAG",
    "PENDING_SUBMIT",
    "REJECTED",
    "RESUME_ENTRIES",
    "SUBMITTED",
    "DatabaseError",
    "IfMissing",
    "IntegrityReport",
    "IntentTransitionError",
    "Mark",
    "ReentryBlocked",
    "TradingDatabase",
    "get_database",
]
