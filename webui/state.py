"""What the dashboard shows, read from the database, the supervisor's lock file and the logs.

`build_snapshot` returns one JSON-ready dict (the page, the SSE stream and /api/* all serve
parts of it); `health_of` judges a snapshot for `GET /health`. Nothing here writes or talks
to IB: the bots own the broker, the dashboard reads what they record.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core.clock import NEW_YORK
from core.heartbeats import EXIT_MANAGER, exit_manager_problem, process_alive
from core.settings import Settings
from observability import TradingDatabase
from reports import build_day_report
from supervision import (
    DAY_TRADER,
    GAVE_UP,
    STOPPED,
    WatchdogPolicy,
    _process_matches,
    read_lock,
    standby_record_name,
)
from trading.exits import ExitConfig, exit_phase, quote_fault
from trading.model import DELAYED_DATA_TYPES, Quote
from trading.phases import DayPhase
from view_logs import Follower, record_time

BOTS = (EXIT_MANAGER, DAY_TRADER)
STANDBY_RECORD = standby_record_name(EXIT_MANAGER)
REFUSALS_KEPT = 50
FIRST_READ_BYTES = 4 * 1024 * 1024  # of each run file, when the dashboard starts
OLD_LOG_S = 18 * 3600.0  # a run file untouched this long is an earlier day's
# A new position has this many real seconds to get its protective set before /health says so.
PROTECTION_GRACE_REAL_S = 15.0
# 1100 lost, 1101/1102 restored (the gateway's link to IB's servers).
CONNECTIVITY_CODES = {1100: False, 1101: True, 1102: True}


@dataclass
class LogWatch:
    """What only the bots' JSON logs say: entries refused and why, each bot's connection to
    the gateway, and the market data type. Fed by following the log folder."""

    log_dir: Path
    refusals: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REFUSALS_KEPT))
    connection: dict[str, dict[str, Any]] = field(default_factory=dict)
    market_data: dict[str, int] = field(default_factory=dict)  # symbol -> IB data type
    _follower: Follower | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def poll(self) -> None:
        """Read what the logs gained since the last call (first: the recent tail only)."""
        with self._lock:
            if not self.log_dir.is_dir():
                return
            if self._follower is None:
                self._follower = Follower(self.log_dir)
                self._follower.offsets.update(_recent_tails(self.log_dir))
            for record in self._follower.poll():
                self.apply(record)

    def apply(self, record: dict[str, Any]) -> None:
        event, bot = record.get("event"), str(record.get("bot", ""))
        when = record_time(record)
        stamp = when.astimezone(NEW_YORK).isoformat(timespec="seconds") if when else None
        if event == "entry_decision" and record.get("decision") == "skip":
            self.refusals.appendleft(
                {
                    "time": stamp,
                    "symbol": record.get("symbol"),
                    "reason": record.get("reason"),
                    "detail": record.get("detail"),
                }
            )
        elif event in {"connected", "connectivity_restored"}:
            self.connection[bot] = {"connected": True, "since": stamp, "event": event}
        elif event == "disconnected":
            self.connection[bot] = {"connected": False, "since": stamp, "event": event}
        elif event in {"ib_message", "ib_alert"} and record.get("code") in CONNECTIVITY_CODES:
            code = int(record["code"])
            self.connection[bot] = {
                "connected": CONNECTIVITY_CODES[code],
                "since": stamp,
                "event": f"IB {code}",
            }
        elif event in {"delayed_market_data", "market_data_stale"} and record.get("symbol"):
            if event == "delayed_market_data":
                self.market_data[str(record["symbol"])] = 3
        elif event == "market_data_live" and record.get("symbol"):
            self.market_data[str(record["symbol"])] = int(record.get("data_type") or 1)


def _recent_tails(log_dir: Path) -> dict[Path, int]:
    """Where to start reading each run file: its last FIRST_READ_BYTES when it was written
    today, its end when older (a log folder holds weeks of runs)."""
    offsets = {}
    cutoff = time.time() - OLD_LOG_S
    for path in log_dir.glob("*_run_*.json"):
        try:
            stat = path.stat()
        except OSError:
            continue
        old = stat.st_mtime < cutoff
        offsets[path] = stat.st_size if old else max(0, stat.st_size - FIRST_READ_BYTES)
    return offsets


@dataclass(frozen=True)
class Sources:
    """Where the dashboard reads from."""

    db: TradingDatabase
    settings: Settings
    lock_file: Path
    logs: LogWatch


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 1)


def _bots(sources: Sources, wall: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each bot's row (lock file + heartbeat) and the supervisor's."""
    lock = read_lock(sources.lock_file)
    supervisor = {"pid": None, "running": False}
    records: dict[str, Any] = {}
    if lock is not None:
        running = _process_matches(int(lock.get("pid", -1)), lock.get("create_time"))
        supervisor = {"pid": lock.get("pid"), "running": running}
        records = lock.get("bots") or {}
    beats = sources.db.get_heartbeats()
    rows = []
    for name in BOTS:
        record = records.get(name) or {}
        beat = beats.get(name)
        pid = record.get("pid") or (beat or {}).get("pid")
        if record:
            alive = bool(record.get("pid")) and _process_matches(
                int(record["pid"]), record.get("create_time")
            )
        else:  # no supervisor: the heartbeat's process
            alive = bool(pid) and process_alive(int(pid))
        started = record.get("started_at") if alive else None
        rows.append(
            {
                "name": name,
                "state": record.get("state")
                or ("RUNNING" if alive else ("STOPPED" if beat else "NEVER RAN")),
                "alive": alive,
                "gave_up": record.get("state") == GAVE_UP,
                "pid": pid if alive else None,
                "uptime_s": _age(wall, started),
                "restarts": record.get("restarts", 0),
                "last_exit": record.get("last_exit"),
                "heartbeat_state": (beat or {}).get("state"),
                "heartbeat_age_s": _age(wall, (beat or {}).get("beat_at")),
                "detail": (beat or {}).get("detail"),
                "connection": sources.logs.connection.get(name),
            }
        )
    standby = records.get(STANDBY_RECORD)
    if standby is not None:
        rows.insert(1, _standby_row(standby, wall))
    return rows, supervisor


def _standby_row(record: dict[str, Any], wall: float) -> dict[str, Any]:
    """The exit manager's hot standby (supervisor only): no heartbeat and no IB connection
    of its own until it takes over."""
    alive = bool(record.get("pid")) and _process_matches(
        int(record["pid"]), record.get("create_time")
    )
    return {
        "name": STANDBY_RECORD,
        "state": record.get("state") if alive else STOPPED,
        "alive": alive,
        "gave_up": record.get("state") == GAVE_UP,
        "pid": record.get("pid") if alive else None,
        "uptime_s": _age(wall, record.get("started_at")) if alive else None,
        "restarts": record.get("restarts", 0),
        "last_exit": record.get("last_exit"),
        "heartbeat_state": None,
        "heartbeat_age_s": None,
        "detail": "takes over the moment the exit manager dies" if alive else None,
        "connection": None,
    }


def _market(sources: Sources) -> dict[str, Any]:
    """Phase of the trading day and minutes to the close, from the exchange calendar."""
    clock = sources.db.clock
    now = clock.now()
    session = clock.session(now.date())
    if session is None:
        return {"phase": "closed (no session today)", "minutes_to_close": None, "half_day": False}
    phase = exit_phase(now, session, ExitConfig.from_settings(sources.settings))
    if now < session.open:
        name = "pre-market"
    elif now >= session.close:
        name = "after the close"
    else:
        name = {
            DayPhase.REGULAR: "regular session",
            DayPhase.FLATTEN: "end-of-day flatten",
            DayPhase.SWEEP: "end-of-day sweep",
        }.get(phase, "closed")
    minutes = (session.close - now).total_seconds() / 60
    return {
        "phase": name,
        "minutes_to_close": round(minutes, 1) if minutes > 0 else None,
        "close": session.close.strftime("%H:%M"),
        "open": session.open.strftime("%H:%M"),
        "half_day": session.is_half_day,
        "market_open": session.open <= now < session.close,
    }


def _protection(intents: list[dict[str, Any]]) -> dict[str, Any]:
    """The symbol's working sells at IB (acknowledged intents): stop, target, exit."""
    working = [i for i in intents if i["side"] == "SELL" and i["state"] == "SUBMITTED"]
    stop = any(i["order_type"] in {"STP", "STP LMT"} for i in working)
    target = any(i["order_type"] == "LMT" and i.get("purpose") == "PROTECT_TARGET" for i in working)
    exiting = any(
        i["side"] == "SELL" and i.get("purpose") not in {"PROTECT_TARGET", "PROTECT_STOP"}
        for i in intents
    )
    words = (
        "stop + target working"
        if stop and target
        else "stop working"
        if stop
        else "exit being worked"
        if exiting
        else "NOT PROTECTED"
    )
    return {"protected": stop or exiting, "stop": stop, "target": target, "text": words}


def _positions(sources: Sources, wall: float) -> list[dict[str, Any]]:
    db = sources.db
    now = db.clock.epoch()
    marks = db.get_marks()
    # Marks are as fresh as the exit manager's last beat: judge them as of that beat (at a
    # simulated 200x, two real seconds between beats are 400 market seconds).
    as_of = _beat_exchange_time(db) or now
    requests = db.pending_exit_requests()
    config = ExitConfig.from_settings(sources.settings)
    rows = []
    for pos in db.get_active_positions():
        symbol = pos["symbol"]
        entry = float(pos["entry_price"])
        quantity = int(pos["quantity"])
        mark = marks.get(symbol)
        last = mark.last if mark is not None else None
        try:
            opened = datetime.fromisoformat(str(pos["entry_time"])).timestamp()
        except ValueError:
            opened = None
        target, stop = pos.get("profit_target_price"), pos.get("stop_loss_price")
        quote = (
            Quote(symbol, mark.last, math.nan, math.nan, mark.quote_at, mark.data_type)
            if mark is not None
            else None
        )
        data_type = mark.data_type if mark is not None else sources.logs.market_data.get(symbol)
        rows.append(
            {
                "symbol": symbol,
                "quantity": quantity,
                "entry_price": entry,
                "entry_time": pos["entry_time"],
                "age_s": _age(now, opened),
                "last": last,
                "quote_age_s": _age(as_of, mark.quote_at) if mark is not None else None,
                "data": "delayed" if data_type in DELAYED_DATA_TYPES else "live" if mark else "-",
                "data_fault": quote_fault(quote, as_of, config),
                "target": target,
                "stop": stop,
                "to_target_pct": _pct(last, target),
                "to_stop_pct": _pct(last, stop),
                "unrealized_pnl": round((last - entry) * quantity, 2) if last is not None else None,
                "protection": _protection(db.get_open_intents(symbol=symbol)),
                "exit_requested_by": requests.get(symbol),
            }
        )
    return rows


def _beat_exchange_time(db: TradingDatabase) -> float | None:
    beat = db.get_heartbeats().get(EXIT_MANAGER)
    try:
        return datetime.fromisoformat(str(beat["beat_time"])).timestamp() if beat else None
    except ValueError:
        return None


def _pct(last: float | None, level: float | None) -> float | None:
    if last is None or level is None or not last:
        return None
    return round((float(level) - last) / last * 100, 2)


def _day(sources: Sources) -> dict[str, Any]:
    """Today's closed round trips (net of commissions) and the net P&L curve."""
    report = build_day_report(sources.db, sources.db.clock.today_str())
    curve, running = [], 0.0
    closed = []
    for trip in report.round_trips:
        running += trip.pnl
        curve.append([trip.exit_time.astimezone(NEW_YORK).isoformat(), round(running, 2)])
        closed.append(
            {
                "symbol": trip.symbol,
                "quantity": trip.quantity,
                "entry_price": round(trip.entry_price, 4),
                "exit_price": round(trip.exit_price, 4),
                "exit_time": trip.exit_time.astimezone(NEW_YORK).isoformat(timespec="seconds"),
                "exit_reason": trip.exit_reason,
                "net_pnl": round(trip.pnl, 2),
            }
        )
    return {
        "net_pnl": round(report.total_pnl, 2),
        "gross_pnl": round(report.gross_pnl, 2),
        "commissions": round(report.commissions, 2),
        "round_trips": len(report.round_trips),
        "curve": curve,
        "closed": closed[::-1],
    }


def build_snapshot(sources: Sources, wall: float | None = None) -> dict[str, Any]:
    """Everything the page shows, JSON-ready. `wall`: real time (heartbeats are wall time)."""
    wall = time.time() if wall is None else wall
    sources.logs.poll()
    db = sources.db
    bots, supervisor = _bots(sources, wall)
    positions = _positions(sources, wall)
    day = _day(sources)
    unrealized = sum(p["unrealized_pnl"] or 0.0 for p in positions)
    types = {p["data"] for p in positions if p["data"] != "-"}
    types |= {
        "delayed" if t in DELAYED_DATA_TYPES else "live" for t in sources.logs.market_data.values()
    }
    snapshot = {
        "mode": sources.settings.trading_mode,
        "now": db.clock.now().isoformat(timespec="seconds"),
        "clock_speed": db.clock.speed,
        "market": _market(sources),
        "supervisor": supervisor,
        "bots": bots,
        "gateway": {
            "connection": sources.logs.connection.get(EXIT_MANAGER)
            or sources.logs.connection.get(DAY_TRADER),
            "exit_manager": next(
                (b["heartbeat_state"] for b in bots if b["name"] == EXIT_MANAGER), None
            ),
            "market_data": "delayed" if "delayed" in types else ("live" if types else "unknown"),
        },
        "entries_halted": db.entries_halted(),
        "positions": positions,
        "unrealized_pnl": round(unrealized, 2),
        "day": day,
        "refusals": list(sources.logs.refusals),
        "alerts": db.get_alerts(20),
        "actions": db.get_operator_actions(20),
    }
    snapshot["health"] = health_of(snapshot, sources, wall)
    return snapshot


def health_of(snapshot: dict[str, Any], sources: Sources, wall: float) -> dict[str, Any]:
    """What a monitor must hear: a bot down, a stale heartbeat, a position without its stop,
    stale data on a held symbol. `ok` False means GET /health answers 503."""
    problems: list[str] = []
    beats = sources.db.get_heartbeats()
    stale_after = WatchdogPolicy().stale_after_s
    for bot in snapshot["bots"]:
        if bot["gave_up"]:
            problems.append(f"{bot['name']}: the supervisor gave up on it (crash loop)")
        elif not bot["alive"]:
            problems.append(f"{bot['name']}: not running")
        elif bot["name"] == EXIT_MANAGER:
            problem = exit_manager_problem(beats.get(EXIT_MANAGER), wall)
            if problem is not None:
                problems.append(f"{EXIT_MANAGER}: {problem}")
        elif bot["heartbeat_age_s"] is None or bot["heartbeat_age_s"] > stale_after:
            problems.append(f"{bot['name']}: heartbeat stale ({bot['heartbeat_age_s']} s)")
    grace = PROTECTION_GRACE_REAL_S * max(1.0, sources.db.clock.speed)
    market_open = bool(snapshot["market"].get("market_open"))
    for pos in snapshot["positions"]:
        young = pos["age_s"] is not None and pos["age_s"] < grace
        if not pos["protection"]["protected"] and not young:
            problems.append(f"{pos['symbol']}: position without a working stop at IB")
        if market_open and pos["data_fault"] and not young:
            problems.append(f"{pos['symbol']}: market data {pos['data_fault']}")
    return {"ok": not problems, "problems": problems, "checked_at": snapshot["now"]}
