"""Chaos benchmark: simulated days under the supervisor, hundreds of faults, nothing lost.

    python bench/bench_chaos.py                          # 3 days, 200 faults (about 12 min)
    python bench/bench_chaos.py --trials 30 --seeds 7    # one short day
    python bench/bench_chaos.py --speed 150 --symbols 30 --seeds 7,11,13,17

Each seed is one `supervisor.py --sim` day on a margin account (`--allow-shorting`: a cash
account would reject a sell below zero and so hide an accidental short) with the crash-loop
limit raised, so the run measures faults rather than the give-up; the give-up has its own case
at the end (the exit manager killed until the supervisor gives up, default limits).

`--trials N` faults are spread over the days. About two thirds land at random moments of the
session, the rest (as the bots give occasion: entries and exits are a dozen or two a day) at
the worst moments, found by tailing the bots' own JSON logs: 0-5 ms after `entry_sent`,
`entry_filled` or `exit_triggered`, right after the first order of a protective set (before
the second), at `eod_flatten`, and 0-50 ms into a restarted exit manager's reconciliation
(after its `connected`); at least 1.5 s apart. The faults: kill -9 of either bot, SIGSTOP for longer than the heartbeat limit
(a hung bot), a dropped client, 1100 then 1101/1102, a gateway restart, a 201 reject of the
next order, a 162 on the next history request, a held symbol that stops ticking, and the
database locked by another process holding BEGIN EXCLUSIVE for several seconds.

A poller reads the gateway's state through its control interface every `--poll-ms` (<= 100)
and measures, per position, each interval with no working server-side stop for the full
quantity; the same intervals are computed exactly from the gateway's own order and execution
log at the day's end. Each day ends with one table; any violation makes the exit code 1.

What bounds the figures:
- Unprotected intervals from the gateway's log are exact in simulated time (order receipt,
  completion and fill times are stamped by the engine, which steps 50 times a simulated
  second at most); shown in real seconds as simulated / speed. The poller's are sampled: each
  is within one poll period plus one state request (a few ms) of the truth, and an interval
  shorter than a period may be missed; the poller also sees gaps the log cannot (none is
  expected: it is a cross-check).
- Restart times run from the bench's kill (its wall clock) to the supervisor's `bot_started`
  and to the new process's first reconciliation in its log (`reconciliation_report` for the
  exit manager, `reconciled` for the day trader); log stamps have millisecond resolution and
  the supervisor polls its children every 0.25 s, which is in the figure. The exit manager's
  successor is usually its hot standby: its "new process" is the supervisor's
  `standby_promoted`, and it holds the lock, connects and reconciles as soon as the kernel
  frees the lock, often before that poll, so its "to reconciled" can be the shorter one.
  Kills always hit the active exit manager (the holder of its lock file), never the
  standby. A kill that lands before the previous restart reconciled counts only once (the
  first).
- An aimed kill lands a few ms later than aimed (the logs are tailed every 2 ms); the
  table shows how much later. Every figure is for this machine's load: 2 shared
  cores slow every process alike, so compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXIT_MANAGER, DAY_TRADER = "exit_manager", "day_trader"
CLIENT_IDS = {EXIT_MANAGER: 10, DAY_TRADER: 2}
WORKING = frozenset({"PRE_SUBMITTED", "SUBMITTED", "PENDING_CANCEL"})
DEFAULT_DATE = date(2026, 11, 24)  # a Tuesday, a full session
DEFAULT_SEEDS = (7, 11, 13)
STALE_AFTER_S = (
    20.0  # the supervisor's heartbeat limit for the run (the day trader beats every 10 s)
)
HEALTHY_AFTER_S = 20.0  # real seconds alive and ready before a bot's restart backoff resets
FAR_LIMIT = 1_000_000  # the crash-loop limit during the fault days
READY_EVENTS = {EXIT_MANAGER: "reconciliation_report", DAY_TRADER: "reconciled"}
AIMED_SPACING_S = 1.5  # real seconds between two aimed faults (one outage at a time)
WATCHED = (
    "entry_sent", "exit_triggered", "order_sent", "eod_flatten", "connected",
    "reconciliation_report", "reconciled", "bot_started", "bot_hung", "bot_failed",
    "crash_loop_gave_up", "protection_placed", "exit_sent", "sell_rejected", "entries_paused",
    "entries_resumed", "standby_promoted",
)  # fmt: skip


# -- pure checks ------------------------------------------------------------------------------
class Sample(NamedTuple):
    """One look at the account: positions and the stop quantity working for each symbol."""

    t: float
    positions: Mapping[str, float]
    stop_cover: Mapping[str, float]


@dataclass(frozen=True)
class Interval:
    """A time a position had no working server-side stop for its full quantity."""

    symbol: str
    start: float
    end: float
    quantity: float
    open_at_end: bool = False  # still unprotected at the last sample

    @property
    def seconds(self) -> float:
        return self.end - self.start


def stop_cover(orders: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Symbol -> shares still to sell by working SELL STP orders (the server-side stops)."""
    cover: dict[str, float] = defaultdict(float)
    for o in orders:
        if o["action"] == "SELL" and o["order_type"] == "STP" and o["state"] in WORKING:
            cover[o["symbol"]] += float(o["quantity"]) - float(o.get("filled") or 0.0)
    return dict(cover)


def sample_of(state: Mapping[str, Any], t: float) -> Sample:
    positions = {p["symbol"]: float(p["quantity"]) for p in state["positions"] if p["quantity"]}
    return Sample(t, positions, stop_cover(state["open_orders"]))


def unprotected_intervals(samples: Iterable[Sample]) -> list[Interval]:
    """Every interval in which a long position's stops covered less than its quantity.

    An interval opens at the first sample that shows it and closes at the first that does not
    (covered, flat or short); one still open at the last sample ends there, marked open.
    """
    opened: dict[str, tuple[float, float]] = {}
    found: list[Interval] = []
    last_t: float | None = None
    for sample in samples:
        last_t = sample.t
        naked = {
            s: q
            for s, q in sample.positions.items()
            if q > 0 and sample.stop_cover.get(s, 0.0) + 1e-9 < q
        }
        for symbol in list(opened):
            if symbol not in naked:
                start, quantity = opened.pop(symbol)
                found.append(Interval(symbol, start, sample.t, quantity))
        for symbol, quantity in naked.items():
            if symbol not in opened:
                opened[symbol] = (sample.t, quantity)
    for symbol, (start, quantity) in opened.items():
        assert last_t is not None
        found.append(Interval(symbol, start, last_t, quantity, open_at_end=True))
    return sorted(found, key=lambda i: (i.start, i.symbol))


def timeline_samples(state: Mapping[str, Any]) -> list[Sample]:
    """Exact samples from the gateway's own log (simulated time): one after each instant at
    which an order arrived or finished or a fill happened, so `unprotected_intervals` of them
    is exact."""
    orders = [*state["open_orders"], *state["completed_orders"]]
    executions = sorted(state["executions"], key=lambda e: float(e["time"]))
    moments = sorted(
        {float(e["time"]) for e in executions}
        | {float(o["received_time"]) for o in orders if o.get("received_time") is not None}
        | {float(o["completed_time"]) for o in orders if o.get("completed_time") is not None}
    )
    # Order ids are per client (the day trader's 116 is not the exit manager's 116): a fill
    # belongs to the order of its client and id.
    fills_of: dict[tuple[Any, int], list[tuple[float, float]]] = defaultdict(list)
    for e in executions:
        fills_of[_order_key(e)].append((float(e["time"]), float(e["shares"])))
    stops = [o for o in orders if o["action"] == "SELL" and o["order_type"] == "STP"]
    samples = []
    position: dict[str, float] = defaultdict(float)
    index = 0
    for t in moments:
        while index < len(executions) and float(executions[index]["time"]) <= t:
            e = executions[index]
            position[e["symbol"]] += float(e["shares"]) * (1 if e["side"] == "BOT" else -1)
            index += 1
        cover: dict[str, float] = defaultdict(float)
        for o in stops:
            received, done = o.get("received_time"), o.get("completed_time")
            if received is None or float(received) > t or (done is not None and float(done) <= t):
                continue
            filled = sum(q for when, q in fills_of[_order_key(o)] if when <= t)
            cover[o["symbol"]] += float(o["quantity"]) - filled
        samples.append(Sample(t, {s: q for s, q in position.items() if q}, dict(cover)))
    return samples


def random_faults_due(due: float, aimed: int, aimed_share: float, flattening: bool) -> float:
    """How many random faults should have been injected by now, when `due` faults in all
    should have been and `aimed` aimed kills have landed. Aimed kills wait for moments that
    may be rare (an exit, a fill), so random faults make up whatever they lag behind their
    share by more than half of it, and from the flatten on all of it: a day spends its whole
    budget however few worst moments it has."""
    if flattening:
        return due - aimed
    return due - aimed_share * due + max(0.0, aimed_share * due / 2 - aimed)


def _order_key(order_or_execution: Mapping[str, Any]) -> tuple[Any, int]:
    return order_or_execution.get("client_id"), int(order_or_execution["order_id"])


def orders_of(state: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*state["open_orders"], *state["completed_orders"]]


def order_refs_sent_twice(orders: Iterable[Mapping[str, Any]]) -> list[str]:
    """orderRefs carried by more than one order id (a modification keeps its id)."""
    ids: dict[str, set[int]] = defaultdict(set)
    for o in orders:
        if o.get("order_ref"):
            ids[o["order_ref"]].add(int(o["order_id"]))
    return sorted(f"{ref} on orders {sorted(n)}" for ref, n in ids.items() if len(n) > 1)


def double_entries(executions: Iterable[Mapping[str, Any]]) -> list[str]:
    """Symbols bought by more than one order in the day (one entry per symbol and day)."""
    refs: dict[str, set[str]] = defaultdict(set)
    for e in executions:
        if e["side"] == "BOT":
            refs[e["symbol"]].add(str(e.get("order_ref") or e["order_id"]))
    return sorted(f"{s}: {sorted(r)}" for s, r in refs.items() if len(r) > 1)


def protective_set_overlaps(orders: Iterable[Mapping[str, Any]]) -> list[str]:
    """Symbols with two protective sets working at once (exact, from the gateway's log): a
    SELL STP working while another STP, or a SELL of another OCA group, was working."""
    legs: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for o in orders:
        if o["action"] == "SELL" and o.get("oca_group") and o.get("received_time") is not None:
            legs[o["symbol"]].append(o)
    found = []
    for symbol, group in legs.items():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a["oca_group"] == b["oca_group"]:
                    continue
                if _overlap(a, b) > 0:
                    found.append(f"{symbol}: {a['order_ref']} and {b['order_ref']}")
    return sorted(set(found))


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    end_a = a["completed_time"] if a.get("completed_time") is not None else math.inf
    end_b = b["completed_time"] if b.get("completed_time") is not None else math.inf
    return min(end_a, end_b) - max(float(a["received_time"]), float(b["received_time"]))


def working_set_problems(open_orders: Iterable[Mapping[str, Any]]) -> list[str]:
    """One look: symbols with more than one working STP or sells of two OCA groups."""
    by_symbol: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for o in open_orders:
        if o["action"] == "SELL" and o["state"] in WORKING:
            by_symbol[o["symbol"]].append(o)
    problems = []
    for symbol, sells in by_symbol.items():
        stops = [o for o in sells if o["order_type"] == "STP"]
        groups = {o["oca_group"] for o in sells if o.get("oca_group")}
        if len(stops) > 1 or len(groups) > 1:
            problems.append(f"{symbol}: {len(stops)} stops, OCA groups {sorted(groups)}")
    return problems


def position_violations(executions: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(shorts, oversells) from the executions in time order: a symbol whose position went
    below zero, and each sell of more shares than were held when it filled."""
    held: dict[str, float] = defaultdict(float)
    shorts, oversells = [], []
    ordered = sorted(executions, key=lambda e: (float(e["time"]), str(e["exec_id"])))
    for e in ordered:
        shares = float(e["shares"])
        if e["side"] == "SLD":
            if shares > held[e["symbol"]] + 1e-9:
                oversells.append(f"{e['symbol']}: sold {shares:g} holding {held[e['symbol']]:g}")
            held[e["symbol"]] -= shares
            if held[e["symbol"]] < -1e-9 and e["symbol"] not in shorts:
                shorts.append(e["symbol"])
        else:
            held[e["symbol"]] += shares
    return shorts, oversells


def positions_disagree(
    db_rows: Iterable[Mapping[str, Any]], gateway_positions: Iterable[Mapping[str, Any]]
) -> list[str]:
    """How the database's active positions differ from the gateway's (symbol: db vs gateway)."""
    ours = {r["symbol"]: float(r["quantity"]) for r in db_rows}
    theirs = {p["symbol"]: float(p["quantity"]) for p in gateway_positions if p["quantity"]}
    return sorted(
        f"{s}: database {ours.get(s, 0):g}, gateway {theirs.get(s, 0):g}"
        for s in ours.keys() | theirs.keys()
        if abs(ours.get(s, 0.0) - theirs.get(s, 0.0)) > 1e-9
    )


def percentiles(values: Sequence[float]) -> str:
    """'p50 / p90 / max (n)' in seconds, or '-' without values."""
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return f"{statistics.median(ordered):.2f} / {p90:.2f} / {ordered[-1]:.2f} s (n={len(ordered)})"


@dataclass(frozen=True)
class Restart:
    bot: str
    failed_at: float  # the kill (or the supervisor's hung verdict)
    to_process: float | None  # seconds to the supervisor's bot_started (or standby_promoted)
    to_ready: float | None  # seconds to the new process's first reconciliation
    in_loop: bool = False  # the supervisor counted it as a repeat failure (backoff grows)
    by_standby: bool = False  # the successor was the promoted hot standby


def restart_times(
    bot: str,
    failures: Sequence[float],
    starts: Sequence[float],
    ready: Sequence[float],
    promotions: Sequence[float] = (),
) -> list[Restart]:
    """For each failure of `bot`: the time to its successor (the next process start, or the
    standby's promotion) and to that process's first ready event (a promoted standby's may
    come before its promotion: it took over when the lock was freed). A failure followed by
    another before the restart was ready is merged into the first (one outage)."""
    failures, ready = sorted(failures), sorted(ready)
    successors = sorted([(s, False) for s in starts] + [(p, True) for p in promotions])
    found: list[Restart] = []
    outage_until = -math.inf
    for failed in failures:
        if failed < outage_until:
            continue
        start, by_standby = next(((s, b) for s, b in successors if s > failed), (None, False))
        after = failed if by_standby else start
        done = next((r for r in ready if after is not None and r > after), None)
        outage_until = done if done is not None else math.inf
        found.append(
            Restart(
                bot,
                failed,
                None if start is None else start - failed,
                None if done is None else done - failed,
                by_standby=by_standby,
            )
        )
    return found


@dataclass
class Fault:
    """One injected fault: what, when (wall clock), on whom, and what it found."""

    kind: str
    at: float
    target: str = ""
    moment: str = "random"  # or the log event it was aimed at
    lag_ms: float | None = None  # how much later than aimed it landed
    until: float | None = None  # end of a fault that lasts (stop, lock, restart, ...)
    note: str = ""

    def span(self) -> tuple[float, float]:
        return self.at, self.until if self.until is not None else self.at


def cause_of(
    interval: Interval, faults: Sequence[Fault], events: Sequence[Mapping[str, Any]]
) -> str:
    """The likely cause of an unprotected interval (wall times): the faults active in it or
    within 3 s before it, and what the bots logged for the symbol around its start."""
    near = [
        f for f in faults if f.span()[1] >= interval.start - 3.0 and f.span()[0] <= interval.end
    ]
    told = []
    for f in near:
        rel = f.at - interval.start
        where = "during" if rel >= 0 else f"{-rel:.2f} s before"
        told.append(f"{f.kind}{'@' + f.moment if f.moment != 'random' else ''} {where}")
    said = sorted(
        {
            e["event"]
            for e in events
            if e.get("symbol") == interval.symbol
            and interval.start - 1.0 <= e["_t"] <= interval.end
            and e["event"] in {"exit_triggered", "exit_sent", "sell_rejected", "entry_sent"}
        }
    )
    parts = [*told, *(f"log: {', '.join(said)}" for _ in [0] if said)]
    return "; ".join(parts) or "no fault nearby"


# -- the run ----------------------------------------------------------------------------------
class LogTail:
    """Follows every JSON log of a run folder; keeps the watched events, fires triggers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.events: list[dict[str, Any]] = []
        self.triggers: list[Trigger] = []
        self.pids: dict[str, int] = {}  # bot -> pid of its latest start (the supervisor's log)
        self.last_fired = 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._last_glob = 0.0
        self.thread = threading.Thread(target=self._run, name="log-tail", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def arm(self, trigger: Trigger) -> None:
        with self.lock:
            self.triggers.append(trigger)

    def armed(self, name: str | None = None) -> int:
        with self.lock:
            return sum(name is None or t.name == name for t in self.triggers)

    def disarm(self) -> None:
        with self.lock:
            self.triggers.clear()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.read_once()
            time.sleep(0.002)
        self.read_once()

    def read_once(self) -> None:
        now = time.time()
        if now - self._last_glob > 0.1:
            self._last_glob = now
            for path in self.folder.glob("*_run_*.json"):
                self.offsets.setdefault(path, 0)
        for path, offset in list(self.offsets.items()):
            try:
                size = path.stat().st_size
                if size <= offset:
                    continue
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read(size - offset)
            except OSError:
                continue
            self.offsets[path] = offset + len(chunk)
            text = self.partial.pop(path, "") + chunk.decode("utf-8", errors="replace")
            lines = text.split("\n")
            if lines[-1]:
                self.partial[path] = lines[-1]
            for line in lines[:-1]:
                self._line(path, line)

    def _line(self, path: Path, line: str) -> None:
        if not any(f'"{name}"' in line for name in WATCHED):
            return
        try:
            record = json.loads(line)
        except ValueError:
            return
        if record.get("event") not in WATCHED:
            return
        record["_t"] = _ts(record["ts"])
        record["_seen"] = time.time()
        record["_bot"] = path.name.split("_run_")[0]
        self.events.append(record)
        if record["event"] in ("bot_started", "standby_promoted"):
            self.pids[record["child"]] = int(record["pid"])
        with self.lock:
            fired = None
            if time.time() - self.last_fired >= AIMED_SPACING_S:
                fired = next((t for t in self.triggers if t.matches(record)), None)
            if fired is not None:
                self.triggers.remove(fired)
                self.last_fired = time.time()
        if fired is not None:
            fired.fire(record)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class Trigger:
    """Fire `action` `delay_s` after the next log event that `matches`."""

    name: str  # one of each is armed at a time
    event: str
    bot: str
    action: Callable[[str, float], None]  # (moment, ms late beyond delay_s)
    delay_s: float = 0.0
    where: Callable[[Mapping[str, Any]], bool] = lambda record: True

    def matches(self, record: Mapping[str, Any]) -> bool:
        return record["event"] == self.event and record["_bot"] == self.bot and self.where(record)

    def fire(self, record: Mapping[str, Any]) -> None:
        target = record["_t"] + self.delay_s
        while (wait := target - time.time()) > 0:
            time.sleep(min(wait, 0.001))
        self.action(self.event, (time.time() - target) * 1000)


class Poller:
    """Reads the gateway's state every `period_s` in a process of its own (decoding the
    state must not hold up the log tail that times the aimed kills): samples, the
    problems seen, how long the database's positions differed from the gateway's, and the
    last state. `stop()` ends it and loads what it found."""

    def __init__(self, control_port: int, period_s: float, info: Mapping[str, Any],
                 folder: Path) -> None:  # fmt: skip
        import multiprocessing

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self.process = context.Process(
            target=_poll_loop,
            args=(control_port, period_s, info["database"], info["clock_file"], str(folder),
                  self._stop),
            name="chaos-poller", daemon=True,
        )  # fmt: skip
        self.samples: list[Sample] = []
        self.last_state: dict[str, Any] | None = None
        self.set_problems: list[tuple[float, str]] = []
        self.negative: list[tuple[float, str]] = []
        self.longest_drift = (0.0, "")

    def start(self) -> None:
        self.process.start()

    def latest(self) -> Sample | None:
        """The newest sample, read while the poller runs."""
        with contextlib.suppress(OSError, ValueError):
            t, positions, cover = json.loads((self.folder / "latest.json").read_text())
            return Sample(t, positions, cover)
        return None

    def stop(self) -> None:
        self._stop.set()
        self.process.join(30)
        with contextlib.suppress(OSError):
            for line in (self.folder / "samples.jsonl").read_text().splitlines():
                with contextlib.suppress(ValueError):
                    t, positions, cover = json.loads(line)
                    self.samples.append(Sample(t, positions, cover))
        with contextlib.suppress(OSError, ValueError):
            found = json.loads((self.folder / "found.json").read_text())
            self.last_state = found["last_state"]
            self.set_problems = [tuple(x) for x in found["set_problems"]]
            self.negative = [tuple(x) for x in found["negative"]]
            self.longest_drift = tuple(found["longest_drift"])


def _poll_loop(port: int, period_s: float, database: str, clock_file: str, folder: str,
               stop: Any) -> None:  # fmt: skip
    """The poller process: one state request per period until `stop` is set."""
    sys.path.insert(0, str(ROOT))
    from core.clock import FileTimeSource, MarketClock
    from ibsim.ctl import call
    from observability import TradingDatabase

    out = Path(folder)
    db = TradingDatabase(database, clock=MarketClock(FileTimeSource(clock_file)))
    found: dict[str, Any] = {"last_state": None, "set_problems": [], "negative": [],
                             "longest_drift": (0.0, "")}  # fmt: skip
    drift: dict[str, float] = {}  # symbol -> since (wall) while the database differs
    next_at = time.monotonic()
    next_db = 0.0
    with (out / "samples.jsonl").open("a") as samples:
        while not stop.is_set():
            t = time.time()
            try:
                reply = call(port, "state", {}, timeout=2.0)
            except OSError:
                reply = {"ok": False}
            if reply.get("ok"):
                state = reply["result"]
                found["last_state"] = state
                sample = sample_of(state, t)
                line = json.dumps([t, sample.positions, sample.stop_cover])
                samples.write(line + "\n")
                samples.flush()
                tmp = out / "latest.json.tmp"
                tmp.write_text(line)
                os.replace(tmp, out / "latest.json")
                found["set_problems"] += [
                    (t, p) for p in working_set_problems(state["open_orders"])
                ]
                found["negative"] += [(t, f"{p['symbol']} {p['quantity']}")
                                      for p in state["positions"] if float(p["quantity"]) < 0]  # fmt: skip
                if t >= next_db:
                    next_db = t + 1.0
                    _compare_db(db, state, t, drift, found)
            next_at += period_s
            time.sleep(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic() - period_s:
                next_at = time.monotonic()
    (out / "found.json").write_text(json.dumps(found, default=str))


def _compare_db(db: Any, state: Mapping[str, Any], t: float, drift: dict[str, float],
                found: dict[str, Any]) -> None:  # fmt: skip
    """Track how long the database's active positions stayed different from the gateway's."""
    try:
        rows = db.get_active_positions()
    except Exception:  # a locked or busy database: look again next time
        return
    differ = {line.split(":")[0] for line in positions_disagree(rows, state["positions"])}
    for symbol in list(drift):
        if symbol not in differ:
            since = drift.pop(symbol)
            if t - since > found["longest_drift"][0]:
                found["longest_drift"] = (t - since, symbol)
    for symbol in differ:
        drift.setdefault(symbol, t)


@dataclass
class DayResult:
    seed: int
    day: str
    code: int | None
    wall_s: float
    faults: list[Fault]
    rows: list[tuple[str, str]]
    violations: list[str]
    restarts: list[Restart]
    intervals: list[tuple[Interval, str]]  # exact (real seconds), with cause
    polled: list[Interval]
    entries: int = 0
    exits: int = 0


@dataclass
class ChaosConfig:
    seeds: tuple[int, ...]
    trials: int
    speed: float
    symbols: int
    trading_date: date
    start: str
    poll_s: float
    max_unprotected_s: float
    out: Path
    give_up_case: bool
    rng: random.Random = field(default_factory=random.Random)


class ChaosDay:
    """One simulated day with faults; `run()` returns its DayResult."""

    def __init__(self, config: ChaosConfig, seed: int, faults: int, run_dir: Path) -> None:
        self.config = config
        self.seed = seed
        self.fault_budget = faults
        self.run_dir = run_dir
        self.rng = random.Random(f"{seed}-{faults}-{config.rng.random()}")
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.long_until = 0.0  # wall end (plus a margin) of the long fault running
        self.process: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    # -- wiring ---------------------------------------------------------------------------
    def supervisor_argv(self, *, give_up: bool = False) -> list[str]:
        c = self.config
        argv = [
            sys.executable, str(ROOT / "supervisor.py"), "--sim", "--seed", str(self.seed),
            "--speed", f"{c.speed:g}", "--date", c.trading_date.isoformat(), "--start", c.start,
            "--symbols", str(c.symbols), "--run-dir", str(self.run_dir), "--status-every", "3600",
            "--allow-shorting", "--stale-after", f"{STALE_AFTER_S:g}",
            "--healthy-after", f"{HEALTHY_AFTER_S:g}",
        ]  # fmt: skip
        if not give_up:
            argv += ["--crash-loop-max", str(FAR_LIMIT)]
        return argv

    def start(self, *, give_up: bool = False) -> None:
        output = (self.run_dir.parent / f"{self.run_dir.name}.out").open("w")
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("IB_", "CLOCK", "DATABASE"))
        }
        self.process = subprocess.Popen(
            self.supervisor_argv(give_up=give_up), cwd=ROOT, env=env, stdout=output,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        output.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self.info = json.loads((self.run_dir / "sim.json").read_text())
                break
            if self.process.poll() is not None:
                raise RuntimeError(f"the simulated day did not start: see {output.name}")
            time.sleep(0.1)
        else:
            raise RuntimeError("the simulated day wrote no sim.json within 90 s")
        from core.clock import FileTimeSource, MarketClock, read_sim_clock_file
        from observability import TradingDatabase

        self.clock_source = read_sim_clock_file(self.info["clock_file"])
        self.clock = MarketClock(FileTimeSource(self.info["clock_file"]))
        self.db = TradingDatabase(self.info["database"], clock=self.clock)
        self.tail = LogTail(self.run_dir / "logs")
        self.tail.start()
        self.poller = Poller(
            self.info["control_port"], self.config.poll_s, self.info, self.run_dir / "poll"
        )
        self.poller.start()

    def wall_of(self, sim_epoch: float) -> float:
        s = self.clock_source
        return s.real_anchor + (sim_epoch - s.sim_anchor) / s.speed_factor

    def at(self, hhmm: str) -> float:
        from core.clock import NEW_YORK

        hour, minute = map(int, hhmm.split(":"))
        d = self.config.trading_date
        moment = datetime(d.year, d.month, d.day, hour, minute, tzinfo=NEW_YORK)
        return self.wall_of(moment.timestamp())

    def bot_pid(self, bot: str) -> int | None:
        """The running pid of `bot`, never the exit manager's waiting standby: the holder of
        the exit manager's lock file (a standby that just took over too), else the
        supervisor's latest start or promotion (fast), else its children (not a standby)."""
        import psutil

        from core.instance_lock import InstanceLock, lock_path_for

        def running(pid: int | None) -> bool:
            with contextlib.suppress(psutil.Error):
                status = psutil.Process(pid).status() if pid else psutil.STATUS_DEAD
                return status not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
            return False

        if bot == EXIT_MANAGER and self.info:
            holder = InstanceLock(lock_path_for(Path(self.info["database"]), bot)).holder_pid()
            if running(holder):
                return holder
        cached = self.tail.pids.get(bot) if hasattr(self, "tail") else None
        if running(cached):
            return cached
        try:
            children = psutil.Process(int(self.info["pid"])).children()
        except psutil.NoSuchProcess:
            return None
        for child in children:
            with contextlib.suppress(psutil.Error):
                argv = child.cmdline()
                ours = any(part.endswith(f"{bot}.py") for part in argv) and "--standby" not in argv
                if ours and child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
        return None

    def control(self, command: str, **kwargs: Any) -> tuple[bool, Any]:
        """(ok, result or error) of one control request to the gateway."""
        from ibsim.ctl import call

        try:
            reply = call(self.info["control_port"], command, kwargs, timeout=5.0)
        except OSError as exc:
            return False, f"unreachable: {exc}"
        return bool(reply.get("ok")), reply.get("result") if reply.get("ok") else reply.get("error")

    def record(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    # -- faults (each returns the fault injected, or None when it found no target) ------------
    def kill(self, bot: str, moment: str = "random", lag_ms: float | None = None) -> Fault | None:
        pid = self.bot_pid(bot)
        if pid is None:
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return self.record(
            Fault(f"kill_{_short(bot)}", time.time(), bot, moment, lag_ms, note=str(pid))
        )

    def hang(self, bot: str) -> Fault | None:
        """SIGSTOP for longer than the supervisor's heartbeat limit, then SIGCONT."""
        pid = self.bot_pid(bot)
        if pid is None:
            return None
        seconds = STALE_AFTER_S + self.rng.uniform(2.0, 4.0)
        os.kill(pid, signal.SIGSTOP)
        start = time.time()

        def resume() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

        threading.Timer(seconds, resume).start()
        return self.record(
            Fault(f"stop_{_short(bot)}", start, bot, until=start + seconds, note=str(pid))
        )

    def lock_database(self) -> Fault | None:
        """Another process holds BEGIN EXCLUSIVE on the database for 3-6 s."""
        seconds = self.rng.uniform(3.0, 6.0)
        script = (
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2])); c.execute('ROLLBACK')\n"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", script, self.info["database"], f"{seconds:.2f}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "locked":
            holder.wait()
            return None
        start = time.time()
        threading.Thread(target=holder.wait, daemon=True).start()
        return self.record(Fault("db_lock", start, "database", until=start + seconds))

    def gateway_fault(self, kind: str) -> Fault | None:
        """A fault the simulated gateway plays through its control interface."""
        rng = self.rng
        bot = rng.choice((EXIT_MANAGER, DAY_TRADER))
        cid = CLIENT_IDS[bot]
        start = time.time()
        if kind == "drop":
            ok, _ = self.control("drop_client", client_id=cid)
            fault = Fault(f"drop_{_short(bot)}", start, bot)
        elif kind == "1100":
            ok, _ = self.control("connectivity_lost")
            seconds = rng.uniform(0.5, 3.0)
            data_lost = rng.random() < 0.5
            fault = Fault("1100", start, "all", until=start + seconds,
                          note=f"then {'1101' if data_lost else '1102'}")  # fmt: skip
            threading.Timer(
                seconds, lambda: self.control("connectivity_restored", data_lost=data_lost)
            ).start()
        elif kind == "restart":
            seconds = rng.uniform(2.0, 5.0)
            ok, _ = self.control("restart", down_seconds=seconds)
            fault = Fault("gateway_restart", start, "gateway", until=start + seconds)
        elif kind == "201":
            ok, _ = self.control("reject_next_order", reason="simulated 201", client_id=cid)
            fault = Fault(f"201_{_short(bot)}", start, bot)
        elif kind == "162":
            ok, _ = self.control("pacing_violation_next", client_id=CLIENT_IDS[DAY_TRADER])
            fault = Fault("162", start, DAY_TRADER)
        elif kind == "stop_ticks":
            latest = self.poller.latest()
            held = [s for s, q in (latest.positions if latest else {}).items() if q > 0]
            if not held:
                _, health = self.control("health")
                held = list((health or {}).get("symbols", [])) if isinstance(health, dict) else []
            if not held:
                return None
            symbol = rng.choice(held)
            seconds = rng.uniform(2.0, 8.0)
            ok, _ = self.control("stop_ticks", symbol=symbol)
            threading.Timer(seconds, lambda: self.control("resume_ticks", symbol=symbol)).start()
            fault = Fault("stop_ticks", start, symbol, until=start + seconds)
        else:
            raise ValueError(f"unknown gateway fault {kind!r}")
        return self.record(fault) if ok else None

    RANDOM_WEIGHTS: Mapping[str, int] = {
        "kill_em": 16, "kill_dt": 14, "stop_em": 2, "stop_dt": 2, "drop": 12, "1100": 9,
        "restart": 3, "201": 10, "162": 6, "stop_ticks": 8, "db_lock": 4,
    }  # fmt: skip
    LONG = ("stop_em", "stop_dt", "restart", "db_lock")

    def random_fault(self) -> Fault | None:
        """One fault drawn by RANDOM_WEIGHTS; one long fault (hang, restart, lock) at a time
        keeps each interval's cause readable."""
        kinds = dict(self.RANDOM_WEIGHTS)
        if self.long_until > time.time():
            for name in self.LONG:
                kinds.pop(name)
        kind = self.rng.choices(list(kinds), weights=list(kinds.values()))[0]
        if kind in ("kill_em", "kill_dt"):
            return self.kill(EXIT_MANAGER if kind == "kill_em" else DAY_TRADER)
        if kind in ("stop_em", "stop_dt"):
            fault = self.hang(EXIT_MANAGER if kind == "stop_em" else DAY_TRADER)
        elif kind == "db_lock":
            fault = self.lock_database()
        else:
            fault = self.gateway_fault(kind)
        if fault is not None and kind in self.LONG and fault.until is not None:
            self.long_until = fault.until + 3.0
        return fault

    def moment_triggers(self) -> list[Trigger]:
        """Kills aimed at the worst moments, found from the bots' own log events."""
        delay = lambda: self.rng.uniform(0.0, 0.005)  # noqa: E731

        def kill_em(moment: str, late: float) -> None:
            self.kill(EXIT_MANAGER, moment, late)

        def kill_dt(moment: str, late: float) -> None:
            self.kill(DAY_TRADER, moment, late)

        def kill_em_then_in_reconciliation(moment: str, late: float) -> None:
            if self.kill(EXIT_MANAGER, moment, late):
                # The restarted exit manager reconciles right after `connected`.
                self.tail.arm(Trigger("in reconciliation", "connected", EXIT_MANAGER, kill_em,
                                      self.rng.uniform(0.0, 0.05)))  # fmt: skip

        return [
            Trigger("dt at entry", "entry_sent", DAY_TRADER, kill_dt, delay()),
            Trigger("em at entry", "entry_sent", DAY_TRADER, kill_em, delay()),
            Trigger("em at fill", "entry_filled", DAY_TRADER, kill_em, delay()),
            Trigger("em at exit", "exit_triggered", EXIT_MANAGER, kill_em, delay()),
            # The first order of a protective set is logged before the second is sent.
            Trigger("em in a set", "order_sent", EXIT_MANAGER, kill_em, 0.0, _protective_leg),
            Trigger(
                "em at exit, again in reconciliation",
                "exit_triggered",
                EXIT_MANAGER,
                kill_em_then_in_reconciliation,
                delay(),
            ),
        ]

    # -- the day --------------------------------------------------------------------------
    def run(self) -> DayResult:
        """The day with its faults: random ones paced so the budget is spent by the flatten,
        aimed ones (each kind armed, 1.5 s apart at least) for about a third of it, and one
        kill at the EOD flatten on top, so a day injects its whole budget even when the
        flatten has nothing to kill."""
        started = time.time()
        self.start()
        assert self.process is not None
        open_at, flatten_at, close_at = self.at("09:33"), self.at("15:44"), self.at("15:57")
        end_at = self.at("16:06")
        aimed_share = 0.35
        window = max(1.0, flatten_at - open_at)
        next_random = open_at
        eod_armed = False
        while self.process.poll() is None:
            now = time.time()
            aimed = sum(f.moment != "random" for f in self.faults)
            if open_at <= now < close_at and len(self.faults) < self.fault_budget:
                due = self.fault_budget * min(1.0, (now - open_at) / window)
                random_due = random_faults_due(due, aimed, aimed_share, now >= flatten_at)
                if now >= next_random and len(self.faults) - aimed < random_due:
                    fault = self.random_fault()
                    next_random = now + (self.rng.uniform(0.1, 0.6) if fault else 0.5)
                if now < flatten_at and aimed < due * aimed_share:
                    for trigger in self.moment_triggers():  # each kind armed, one at a time
                        if not self.tail.armed(trigger.name):
                            self.tail.arm(trigger)
                elif self.tail.armed():
                    self.tail.disarm()  # ahead of the budget: aim again later
            if not eod_armed and now >= flatten_at - 3.0:
                eod_armed = True
                self.tail.disarm()  # the day's last aimed kill is the flatten's
                self.tail.arm(
                    Trigger("em at the flatten", "eod_flatten", EXIT_MANAGER,
                            lambda m, lag: self.kill(EXIT_MANAGER, m, lag), self.rng.uniform(0, 0.005))
                )  # fmt: skip
            if now > end_at + 120:
                self.process.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
        code = self.process.wait(timeout=120)
        self.finish_watching()
        return self.evaluate(code, time.time() - started)

    def finish_watching(self) -> None:
        self.tail.disarm()
        self.tail.stop.set()
        self.poller.stop()
        self.tail.thread.join(5)

    # -- checks ---------------------------------------------------------------------------
    def evaluate(self, code: int | None, wall_s: float) -> DayResult:
        from sim_day import fill_disagreements

        state = self.poller.last_state or {"positions": [], "open_orders": [],
                                           "completed_orders": [], "executions": []}  # fmt: skip
        day = self.info["trading_date"]
        orders = orders_of(state)
        refs_twice = order_refs_sent_twice(orders)
        entries_twice = double_entries(state["executions"])
        overlaps = protective_set_overlaps(orders)
        shorts, oversells = position_violations(state["executions"])
        shorts += [p for _, p in self.poller.negative if p.split()[0] not in shorts]
        unmatched = fill_disagreements(self.db.get_trades_by_date(day), state["executions"])
        missing = [u for u in unmatched if "missing from the database" in u]
        unknown = [u for u in unmatched if u not in missing]
        integrity = self.db.integrity_check()
        db_vs_gateway = positions_disagree(self.db.get_active_positions(), state["positions"])
        flat = not any(float(p["quantity"]) for p in state["positions"])
        working_left = len(state["open_orders"])
        speed = self.clock_source.speed_factor
        exact = [
            Interval(
                i.symbol, self.wall_of(i.start), self.wall_of(i.end), i.quantity, i.open_at_end
            )
            for i in unprotected_intervals(timeline_samples(state))
        ]
        events = self.tail.events
        with_cause = [(i, cause_of(i, self.faults, events)) for i in exact]
        polled = unprotected_intervals(self.poller.samples)
        longest = max(with_cause, key=lambda x: x[0].seconds, default=None)
        longest_polled = max(polled, key=lambda i: i.seconds, default=None)
        over = [x for x in with_cause if x[0].seconds > self.config.max_unprotected_s]
        restarts = self.restarts(events)
        entries = sum(1 for e in state["executions"] if e["side"] == "BOT")
        exits = sum(1 for e in state["executions"] if e["side"] == "SLD")
        kinds = Counter(f.kind for f in self.faults)
        late = [f.lag_ms for f in self.faults if f.lag_ms is not None]
        rows = [
            ("faults injected", f"{len(self.faults)}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))),
            ("  aimed at a log event", f"{sum(f.moment != 'random' for f in self.faults)} "
             f"({', '.join(f'{k} {n}' for k, n in sorted(Counter(f.moment for f in self.faults if f.moment != 'random').items()))}); "
             f"landed {statistics.median(late) if late else 0:.1f} ms (median), "
             f"{max(late, default=0):.1f} ms (max) later than aimed"),
            ("fills (buys / sells)", f"{entries} / {exits}"),
            ("orderRef sent twice", _count(refs_twice)),
            ("two entries for one symbol and day", _count(entries_twice)),
            ("two protective sets working at once", _count(overlaps + [p for _, p in self.poller.set_problems][:3])),
            ("negative positions", _count(shorts)),
            ("sells beyond the position", _count(oversells)),
            ("gateway fills missing from the database", _count(missing)),
            ("database fills unknown to the gateway", _count(unknown)),
            ("PRAGMA integrity_check", "ok" if integrity.ok else "; ".join(integrity.messages)[:120]),
            ("database positions vs gateway at the close", "agree" if not db_vs_gateway else "; ".join(db_vs_gateway)),
            ("  longest database drift during the day", f"{self.poller.longest_drift[0]:.1f} s {self.poller.longest_drift[1]}"),
            ("flat at the close", ("yes" if flat else "NO") + f"; working orders left {working_left}"),
            ("unprotected intervals (gateway log)", f"{len(exact)}, {len(over)} over {self.config.max_unprotected_s:g} s; "
             f"total {sum(i.seconds for i in exact):.2f} s"),
            ("longest unprotected (gateway log)", _interval_text(longest, speed)),
            (f"longest unprotected (poller, {self.config.poll_s * 1000:.0f} ms)",
             f"{longest_polled.seconds:.2f} s {longest_polled.symbol}" if longest_polled else "none"),
        ]  # fmt: skip
        rows += restart_rows(restarts)
        rows.append(("entries paused for the exit manager", paused_text(events)))
        rows.append(("unprotected > limit, by first cause", _by_cause(over)))
        rows.append(("supervisor exit code", str(code)))
        violations = []
        for name, found in (
            ("orderRef sent twice", refs_twice), ("two entries", entries_twice),
            ("two protective sets", overlaps + [p for _, p in self.poller.set_problems]),
            ("negative position", shorts), ("sell beyond the position", oversells),
            ("fill missing from the database", missing), ("fill unknown to the gateway", unknown),
            ("database vs gateway", db_vs_gateway),
        ):  # fmt: skip
            violations += [f"{name}: {x}" for x in found[:5]]
        if not integrity.ok:
            violations.append("integrity_check: " + "; ".join(integrity.messages)[:200])
        if not flat or working_left:
            violations.append(f"not flat at the close ({working_left} working orders)")
        if code != 0:
            violations.append(f"supervisor exit code {code}")
        violations += [
            f"unprotected {i.seconds:.2f} s > {self.config.max_unprotected_s:g} s: {i.symbol} ({cause})"
            for i, cause in over
        ]
        return DayResult(self.seed, day, code, wall_s, self.faults, rows, violations, restarts,
                         with_cause, polled, entries, exits)  # fmt: skip

    def restarts(self, events: Sequence[Mapping[str, Any]]) -> list[Restart]:
        found: list[Restart] = []
        for bot in (EXIT_MANAGER, DAY_TRADER):
            failures = [f.at for f in self.faults if f.kind == f"kill_{_short(bot)}"]
            failures += [
                e["_t"] for e in events if e["event"] == "bot_hung" and e.get("child") == bot
            ]
            starts = [
                e["_t"] for e in events if e["event"] == "bot_started" and e.get("child") == bot
            ]
            promotions = [
                e["_t"]
                for e in events
                if e["event"] == "standby_promoted" and e.get("child") == bot
            ]
            ready = [
                e["_t"] for e in events if e["event"] == READY_EVENTS[bot] and e["_bot"] == bot
            ]
            failed = [e for e in events if e["event"] == "bot_failed" and e.get("child") == bot]
            for restart in restart_times(bot, failures, starts, ready, promotions):
                verdict = next((e for e in failed if e["_t"] >= restart.failed_at - 0.05), None)
                in_loop = verdict is not None and int(verdict.get("failures", 1)) > 1
                found.append(replace(restart, in_loop=in_loop))
        return found


def _protective_leg(record: Mapping[str, Any]) -> bool:
    return str(record.get("purpose", "")).startswith("PROTECT")


def _short(bot: str) -> str:
    return "em" if bot == EXIT_MANAGER else "dt"


def _count(found: Sequence[str]) -> str:
    return "0" if not found else f"{len(found)}: " + "; ".join(found[:3])


def _interval_text(item: tuple[Interval, str] | None, speed: float) -> str:
    if item is None:
        return "none"
    interval, cause = item
    return (
        f"{interval.seconds:.2f} s ({interval.seconds * speed:.0f} s simulated) {interval.symbol}"
        f"{' (open at the end)' if interval.open_at_end else ''}: {cause}"
    )


def render(title: str, rows: Sequence[tuple[str, str]], violations: Sequence[str]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    lines.append(f"{'VIOLATIONS'.ljust(width)}  {len(violations) or 'none'}")
    lines += [f"  - {v}" for v in violations]
    return "\n".join(lines) + "\n"


# -- the give-up case -------------------------------------------------------------------------
def give_up_case(config: ChaosConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """The exit manager killed as soon as each new one starts (a promoted standby as soon as
    it takes over: each promotion counts as a failure), default crash-loop limit:
    the supervisor must give up (exit 3) with the day trader stopped, every held position
    still under one working server-side stop, nothing duplicated or shorted."""
    run_dir = config.out / "give_up"
    day = ChaosDay(config, DEFAULT_SEEDS[0], 0, run_dir)
    start = (datetime.strptime(config.start, "%H:%M") + timedelta(minutes=40)).strftime("%H:%M")
    day.config = replace(config, start=start)
    day.start(give_up=True)
    assert day.process is not None
    deadline = time.time() + 240
    # First let it enter and protect every position (or the case proves nothing about them).
    while time.time() < deadline and day.process.poll() is None:
        latest = day.poller.latest()
        if latest and latest.positions and not unprotected_intervals([latest]):
            break
        time.sleep(0.1)
    killed_at = []
    last_pid = None
    while time.time() < deadline and day.process.poll() is None:
        pid = day.bot_pid(EXIT_MANAGER)
        if pid is not None and pid != last_pid:
            last_pid = pid
            if day.kill(EXIT_MANAGER, "new process"):
                killed_at.append(time.time())
        time.sleep(0.02)
    code = day.process.wait(timeout=60) if day.process.poll() is None else day.process.poll()
    gave_up = next((e for e in day.tail.events if e["event"] == "crash_loop_gave_up"), None)
    day.finish_watching()
    state = day.poller.last_state or {"positions": [], "open_orders": [], "executions": [],
                                      "completed_orders": []}  # fmt: skip
    held = {p["symbol"]: float(p["quantity"]) for p in state["positions"] if p["quantity"]}
    last = unprotected_intervals([sample_of(state, time.time())])
    shorts, oversells = position_violations(state["executions"])
    dt_alive = day.bot_pid(DAY_TRADER) is not None
    refs_twice = order_refs_sent_twice(orders_of(state))
    rows = [
        ("exit manager kills", str(len(killed_at))),
        ("supervisor exit code", str(code)),
        ("crash_loop_gave_up", json.dumps({k: gave_up.get(k) for k in ("failures_in_window", "window_s", "window_sim_s") if k in gave_up}) if gave_up else "NOT LOGGED"),
        ("gave up after the first kill", f"{gave_up['_t'] - killed_at[0]:.1f} s" if gave_up and killed_at else "-"),
        ("positions held at the give-up", json.dumps(held)),
        ("held without a working stop at the end", _count([i.symbol for i in last])),
        ("day trader still running", "yes" if dt_alive else "no"),
        ("orderRef sent twice / shorts / oversells", f"{len(refs_twice)} / {len(shorts)} / {len(oversells)}"),
    ]  # fmt: skip
    violations = []
    if code != 3:
        violations.append(f"supervisor exit code {code}, expected 3 (gave up on the exit manager)")
    if gave_up is None:
        violations.append("no crash_loop_gave_up event")
    if last:
        violations.append(f"positions without a stop after the give-up: {[i.symbol for i in last]}")
    if dt_alive:
        violations.append("the day trader kept running without an exit manager")
    violations += refs_twice + shorts + oversells
    return rows, violations


# -- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from core import cli

    parser = cli.OneLineParser(prog="bench_chaos.py", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                        help="comma-separated market seeds, one simulated day each (default 7,11,13)")  # fmt: skip
    parser.add_argument("--trials", type=cli.ranged(int, 0, 100_000), default=200,
                        help="faults in the whole run, spread over the days (default 200)")  # fmt: skip
    parser.add_argument("--speed", type=cli.ranged(float, 10.0, 1000.0), default=120.0,
                        help="simulated seconds per real second (default 120)")  # fmt: skip
    parser.add_argument("--symbols", type=cli.ranged(int, 1, 500), default=20,
                        help="symbols in the simulated market (default 20)")  # fmt: skip
    parser.add_argument("--date", default=DEFAULT_DATE.isoformat(), help="trading date YYYY-MM-DD")
    parser.add_argument(
        "--start", default="09:20", help="simulated start time HH:MM (default 09:20)"
    )
    parser.add_argument("--poll-ms", type=cli.ranged(float, 10.0, 100.0), default=100.0,
                        help="gateway state poll period, ms in [10, 100] (default 100)")  # fmt: skip
    parser.add_argument("--max-unprotected", type=cli.ranged(float, 0.0, 3600.0), default=1.0,
                        help="real seconds a position may go without a server stop (default 1)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "sim_runs" / "chaos",
                        help="folder for the runs (replaced; default sim_runs/chaos)")  # fmt: skip
    parser.add_argument("--no-give-up-case", action="store_true", help="skip the give-up case")
    parser.add_argument("--random-seed", type=int, default=None, help="seed of the fault plan")
    return parser


def config_from_args(args: argparse.Namespace) -> ChaosConfig:
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        if not seeds:
            raise ValueError
    except ValueError:
        raise SystemExit(
            f"bench_chaos.py: error: --seeds {args.seeds!r} is not a list of whole numbers like 7,11,13"
        ) from None
    try:
        trading_date = date.fromisoformat(args.date)
        datetime.strptime(args.start, "%H:%M")
    except ValueError:
        raise SystemExit(
            f"bench_chaos.py: error: --date {args.date!r} / --start {args.start!r}: expected YYYY-MM-DD and HH:MM"
        ) from None
    return ChaosConfig(
        seeds, args.trials, args.speed, args.symbols, trading_date, args.start,
        args.poll_ms / 1000.0, args.max_unprotected, args.out.resolve(),
        not args.no_give_up_case, random.Random(args.random_seed),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(argv))
    import shutil

    if config.out.exists():
        marker = config.out / ".chaos_runs"
        if not marker.exists() and any(config.out.iterdir()):
            print(
                f"bench_chaos.py: error: --out {config.out} is not empty and not a chaos run folder",
                file=sys.stderr,
            )
            return 2
        shutil.rmtree(config.out)
    config.out.mkdir(parents=True)
    (config.out / ".chaos_runs").write_text("made by bench/bench_chaos.py; rerunning replaces it\n")
    per_day = [config.trials // len(config.seeds)] * len(config.seeds)
    for i in range(config.trials % len(config.seeds)):
        per_day[i] += 1
    results: list[DayResult] = []
    started = time.time()
    for seed, faults in zip(config.seeds, per_day, strict=True):
        day = ChaosDay(config, seed, faults, config.out / f"day_{seed}")
        result = day.run()
        results.append(result)
        title = (f"chaos day {result.day} seed {seed} at {config.speed:g}x, {config.symbols} "
                 f"symbols ({result.wall_s:.0f} s real)")  # fmt: skip
        print(render(title, result.rows, result.violations), flush=True)
    violations = [v for r in results for v in r.violations]
    summary = summarize(results, config)
    print(
        render(
            f"chaos run: {len(results)} days, {time.time() - started:.0f} s real",
            summary,
            violations,
        ),
        flush=True,
    )
    if config.give_up_case:
        rows, give_up_violations = give_up_case(config)
        print(
            render(
                "give-up case: exit manager killed at every start, default crash-loop limit",
                rows,
                give_up_violations,
            ),
            flush=True,
        )
        violations += give_up_violations
    return 1 if violations else 0


def summarize(results: Sequence[DayResult], config: ChaosConfig) -> list[tuple[str, str]]:
    faults = [f for r in results for f in r.faults]
    intervals = [x for r in results for x in r.intervals]
    longest = max(intervals, key=lambda x: x[0].seconds, default=None)
    restarts = [x for r in results for x in r.restarts]
    rows = [
        ("faults injected", f"{len(faults)}: " + ", ".join(f"{k} {n}" for k, n in sorted(Counter(f.kind for f in faults).items()))),
        ("fills (buys / sells)", f"{sum(r.entries for r in results)} / {sum(r.exits for r in results)}"),
        ("unprotected intervals", f"{len(intervals)}, {sum(i.seconds > config.max_unprotected_s for i, _ in intervals)} over {config.max_unprotected_s:g} s"),
        ("longest unprotected", _interval_text(longest, config.speed)),
    ]  # fmt: skip
    rows += restart_rows(restarts)
    over = [x for x in intervals if x[0].seconds > config.max_unprotected_s]
    rows.append(("unprotected > limit, by first cause", _by_cause(over)))
    return rows


def restart_rows(restarts: Sequence[Restart]) -> list[tuple[str, str]]:
    """Restart figures per bot: to a new process and to reconciled, the latter split into
    failures after a healthy run and repeats (in a loop, where the backoff grows)."""
    rows = []
    for bot in (EXIT_MANAGER, DAY_TRADER):
        mine = [r for r in restarts if r.bot == bot]
        to_process = [r.to_process for r in mine if r.to_process is not None]
        rows.append((f"{bot} restart: to new process", percentiles(to_process)))
        if bot == EXIT_MANAGER:
            promoted = sum(r.by_standby for r in mine)
            rows.append((f"{bot} restart: by its standby / a new process",
                         f"{promoted} / {len(mine) - promoted}"))  # fmt: skip
        for label, group in (
            ("after a healthy run", [r for r in mine if not r.in_loop]),
            ("in a loop", [r for r in mine if r.in_loop]),
        ):
            ready = [r.to_ready for r in group if r.to_ready is not None]
            rows.append((f"{bot} restart: to reconciled, {label}", percentiles(ready)))
    return rows


def paused_text(events: Sequence[Mapping[str, Any]]) -> str:
    """How often and how long the day trader held entries back for the exit manager."""
    paused_at: float | None = None
    spans = []
    for e in sorted(events, key=lambda e: e["_t"]):
        if e["event"] == "entries_paused":
            paused_at = e["_t"] if paused_at is None else paused_at
        elif e["event"] == "entries_resumed" and paused_at is not None:
            spans.append(e["_t"] - paused_at)
            paused_at = None
    return f"{len(spans)} times, {sum(spans):.1f} s in all" if spans else "never"


def _by_cause(items: Sequence[tuple[Interval, str]]) -> str:
    causes = Counter(cause.split(";")[0].split(" ")[0] for _, cause in items)
    return ", ".join(f"{c} {n}" for c, n in causes.most_common()) or "-"


if __name__ == "__main__":
    sys.exit(main())
