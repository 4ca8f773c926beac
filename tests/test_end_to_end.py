"""End to end: `supervisor.py --sim` runs one seeded day with the real bots as real processes.

One simulated day is shared by the tests of this file, which run in file order along its
timeline: the exit manager is killed while positions are open, then the day trader; the
gateway drops for 60 simulated seconds; liquidate_all.py flattens the account; finally the
whole day is checked against the simulator's own account. Every wait is on a condition with
a deadline (real seconds); nothing sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from sim_support import SIM_DATE, wait_for

from core.clock import NEW_YORK, FileTimeSource, MarketClock
from core.settings import PROJECT_ROOT
from ibsim.ctl import call
from observability import TradingDatabase
from sim_day import fill_disagreements, render_results_commands

SPEED = 100.0  # 09:25 -> 16:05 simulated in about 4 minutes
SEED = 7
SYMBOLS = 20
START = "09:25"
PROTECTIVE = {"PROTECT_TARGET", "PROTECT_STOP"}
TARGET_OR_STOP = {"PROTECT_TARGET", "PROTECT_STOP", "BOT_STOP", "BOT_TARGET"}

pytestmark = pytest.mark.timeout(420)


class SimRun:
    """Handles on the running simulated day: processes, simulator, database, clock."""

    def __init__(self, run_dir: Path, process: subprocess.Popen[str]) -> None:
        self.run_dir = run_dir
        self.process = process
        self.info: dict[str, Any] = {}

    def load(self) -> bool:
        try:
            self.info = json.loads((self.run_dir / "sim.json").read_text())
        except (OSError, ValueError):
            return False
        self.clock = MarketClock(FileTimeSource(self.info["clock_file"]))
        self.db = TradingDatabase(self.info["database"], clock=self.clock)
        return True

    def state(self) -> dict[str, Any]:
        reply = call(self.info["control_port"], "state", {})
        assert reply["ok"], reply
        return reply["result"]

    def fault(self, command: str, **kwargs: Any) -> Any:
        reply = call(self.info["control_port"], command, kwargs)
        assert reply["ok"], reply
        return reply["result"]

    def bots(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(Path(self.info["lock"]).read_text())["bots"]
        except (OSError, ValueError, KeyError):
            return {}

    def bot_pid(self, name: str) -> int | None:
        return self.bots().get(name, {}).get("pid")

    def beat(self, name: str) -> dict[str, Any]:
        return self.db.get_heartbeats().get(name, {})

    def at(self, hhmm: str) -> datetime:
        hour, minute = map(int, hhmm.split(":"))
        return datetime(SIM_DATE.year, SIM_DATE.month, SIM_DATE.day, hour, minute, tzinfo=NEW_YORK)

    def real_seconds_until(self, moment: datetime) -> float:
        return max(0.0, (moment - self.clock.now()).total_seconds() / SPEED)

    def log_events(self, bot: str, event: str) -> list[dict[str, Any]]:
        found = []
        for path in (self.run_dir / "logs").glob(f"{bot}_run_*.json"):
            for line in path.read_text(errors="replace").splitlines():
                if f'"{event}"' in line:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if record.get("event") == event:
                        found.append(record)
        return found


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> SimRun:
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "CLOCK", "DATABASE"))}
    env["LOG_DIR"] = str(run_dir.parent / "logs")
    # Output to a file, not a pipe: a full pipe would block the supervisor mid-day.
    output = (run_dir.parent / "supervisor.out").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "supervisor.py", "--sim", "--seed", str(SEED), "--speed", f"{SPEED:g}",
            "--date", SIM_DATE.isoformat(), "--start", START, "--symbols", str(SYMBOLS),
            "--run-dir", str(run_dir), "--status-every", "60",
        ],
        cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output.close()
    run = SimRun(run_dir, process)
    try:
        wait_for(run.load, 60, "the simulated day to start (sim.json)")
        yield run
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def held(state: dict[str, Any]) -> dict[str, float]:
    return {p["symbol"]: float(p["quantity"]) for p in state["positions"] if p["quantity"]}


def protection_problems(state: dict[str, Any], db: TradingDatabase) -> list[str]:
    """How IB's working sells break "one protective set per position".

    Two sets (or two stops) for a symbol is always wrong. A held symbol needs its set (one
    target and one stop in one OCA group, each for the whole position) unless an exit is being
    worked for it (the exit manager cancels the set before it sells otherwise).
    """
    problems = []
    for symbol, quantity in held(state).items():
        sells = [o for o in state["open_orders"] if o["symbol"] == symbol and o["action"] == "SELL"]
        purposes = {o["order_ref"]: (db.get_order_intent(o["order_ref"]) or {}).get("purpose")
                    for o in sells}  # fmt: skip
        protective = [o for o in sells if purposes[o["order_ref"]] in PROTECTIVE]
        stops = [o for o in protective if o["order_type"] == "STP"]
        shown = [(o["order_type"], purposes[o["order_ref"]], o["oca_group"]) for o in sells]
        if len({o["oca_group"] for o in protective}) > 1 or len(stops) > 1:
            problems.append(f"{symbol}: more than one protective set {shown}")
        elif len(protective) < len(sells):
            continue  # an exit is being worked
        elif len(stops) != 1 or len(protective) != 2:
            problems.append(f"{symbol}: not protected {shown}")
        elif any(float(o["quantity"]) != quantity for o in protective):
            problems.append(f"{symbol}: protective quantity != position {quantity}")
    return problems


def protected_state(day: SimRun, timeout: float) -> dict[str, Any]:
    """A state in which every position is protected once, waited for; fails with the last
    problems seen."""
    last: list[str] = []

    def check() -> dict[str, Any] | None:
        nonlocal last
        state = day.state()
        last = protection_problems(state, day.db)
        return None if last else state

    what = "every position protected exactly once"
    return wait_for(check, timeout, what, detail=lambda: f"; last problems: {last}")


def never_short(executions: list[dict[str, Any]]) -> list[str]:
    """Symbols whose running position went below zero (a duplicate sell)."""
    running: dict[str, float] = defaultdict(float)
    shorted = []
    for e in sorted(executions, key=lambda e: e["time"]):
        running[e["symbol"]] += e["shares"] if e["side"] == "BOT" else -e["shares"]
        if running[e["symbol"]] < -1e-9:
            shorted.append(e["symbol"])
    return shorted


def test_exit_manager_killed_with_positions_open_is_restarted_and_protection_stays_single(day):
    # Arrange: wait for entries and their protection (the first entries come after the open).
    def protected_positions() -> dict[str, Any] | None:
        state = day.state()
        return state if held(state) and not protection_problems(state, day.db) else None

    wait_for(
        protected_positions, day.real_seconds_until(day.at("11:00")) + 10, "protected positions"
    )
    old_pid = day.bot_pid("exit_manager")
    assert old_pid

    # Act: kill -9, no chance to clean up.
    os.kill(old_pid, signal.SIGKILL)

    # Assert: restarted at once, reconciled, still exactly one protective set, no extra sells.
    started = time.monotonic()
    new_pid = wait_for(
        lambda: (pid := day.bot_pid("exit_manager")) not in (None, old_pid) and pid,
        10,
        "a new exit manager",
    )
    assert time.monotonic() - started < 5, "the exit manager must be restarted at once"
    wait_for(
        lambda: (
            day.beat("exit_manager").get("pid") == new_pid
            and day.beat("exit_manager").get("state") == "RECONCILED"
        ),
        45,
        "the new exit manager to reconcile",
    )
    state = protected_state(day, 10)
    assert never_short(state["executions"]) == []
    assert day.bots()["exit_manager"]["restarts"] == 1


def test_day_trader_killed_mid_day_restarts_without_duplicate_or_re_entry(day):
    old_pid = day.bot_pid("day_trader")
    assert old_pid and psutil.pid_exists(old_pid)
    os.kill(old_pid, signal.SIGKILL)
    new_pid = wait_for(
        lambda: (pid := day.bot_pid("day_trader")) not in (None, old_pid) and pid,
        30,
        "a new day trader (after its backoff)",
    )
    wait_for(
        lambda: (
            day.beat("day_trader").get("pid") == new_pid
            and day.beat("day_trader").get("state") not in (None, "starting", "reconnecting")
        ),
        45,
        "the new day trader to reconcile",
    )
    assert day.bots()["day_trader"]["restarts"] == 1
    # Let it trade on for a while (simulated 20 minutes) before checking its entries.
    target = day.clock.now() + timedelta(minutes=20)
    wait_for(lambda: day.clock.now() >= target, 30, "20 simulated minutes")
    buys = [i for i in day.db.get_intents_by_date(SIM_DATE.isoformat()) if i["side"] == "BUY"]
    filled_per_symbol: dict[str, int] = defaultdict(int)
    for intent in buys:
        if intent["filled_quantity"]:
            filled_per_symbol[intent["symbol"]] += 1
    assert all(n == 1 for n in filled_per_symbol.values()), (
        f"duplicate entries: {filled_per_symbol}"
    )
    bought = defaultdict(int)
    for e in day.state()["executions"]:
        if e["side"] == "BOT":
            bought[e["symbol"]] += 1
    assert all(n == 1 for n in bought.values()), f"a symbol bought twice at IB: {dict(bought)}"


def test_gateway_dropped_60_simulated_seconds_both_bots_reconnect_and_reconcile(day):
    connects_before = {
        bot: len(day.log_events(bot, "connected")) for bot in ("exit_manager", "day_trader")
    }
    state_before = day.state()

    day.fault("restart", down_seconds=60 / SPEED)

    for bot in ("exit_manager", "day_trader"):
        wait_for(
            lambda bot=bot: len(day.log_events(bot, "connected")) > connects_before[bot],
            60,
            f"{bot} to reconnect",
        )
    wait_for(
        lambda: day.beat("exit_manager").get("state") == "RECONCILED", 30, "exit manager reconciled"
    )
    wait_for(lambda: {10, 2} <= set(day.state()["clients"]), 30, "both bots connected")
    # Nothing lost: every fill at IB is in the database, protection is intact.
    state = protected_state(day, 15)
    executions = state["executions"]
    assert len(executions) >= len(state_before["executions"])
    assert never_short(executions) == []
    wait_for(
        lambda: (
            not fill_disagreements(
                day.db.get_trades_by_date(SIM_DATE.isoformat()), day.state()["executions"]
            )
        ),
        20,
        "every fill recorded in the database",
    )


def test_liquidate_all_during_the_day_leaves_account_flat_and_database_consistent(day):
    holding = wait_for(
        lambda: held(day.state()),
        day.real_seconds_until(day.at("15:15")) + 5,
        "an open position to liquidate (none by 15:15: did the day trader stop entering?)",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "CLOCK", "DATABASE"))}
    env.update(
        IB_PORT=str(day.info["port"]),
        CLOCK_FILE=day.info["clock_file"],
        DATABASE_PATH=day.info["database"],
        LOG_DIR=str(day.run_dir / "logs"),
        KILL_SWITCH_FILE=str(day.run_dir / "KILL_SWITCH"),
    )
    result = subprocess.run(
        [sys.executable, "liquidate_all.py", "--yes"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    state = day.state()
    assert held(state) == {}
    wait_for(lambda: day.state()["open_orders"] == [], 15, "no working orders")
    wait_for(lambda: day.db.get_active_positions() == [], 20, "no active rows in the database")
    closed = {row["symbol"]: row for row in day.db.get_closed_today()}
    sold_by_tool = {
        t["symbol"]
        for t in day.db.get_trades_by_date(SIM_DATE.isoformat())
        if t["agent"] == "liquidate_all"
    }
    # What IB held a moment before was sold by the tool (or closed by its stop meanwhile).
    assert sold_by_tool or set(holding) <= set(closed), f"IB held {holding}; closed {closed}"
    assert all(closed[s]["exit_reason"] == "MANUAL" for s in sold_by_tool)
    for symbol in sold_by_tool:
        sells = [i for i in day.db.get_intents_by_date(SIM_DATE.isoformat())
                 if i["symbol"] == symbol and i["agent"] == "liquidate_all"]  # fmt: skip
        assert [i["state"] for i in sells] == ["FILLED"], sells
    assert never_short(state["executions"]) == []


def test_whole_day_entries_exits_flat_at_close_and_database_agrees_with_simulator(day):
    day.process.wait(timeout=day.real_seconds_until(day.at("16:05")) + 120)
    output = (day.run_dir.parent / "supervisor.out").read_text()
    assert day.process.returncode == 0, output[-3000:]
    assert "flat at the close: yes" in output
    assert "database and simulator agree on every fill" in output
    assert (day.run_dir / f"pnl_{SIM_DATE}.png").exists()
    # The report ends with the commands that open this run's results (run by test_sim_day).
    logs = day.run_dir.resolve() / "logs"
    commands = render_results_commands(Path(day.info["database"]), logs, SIM_DATE.isoformat())
    assert commands in output, output[-2000:]

    intents = day.db.get_intents_by_date(SIM_DATE.isoformat())
    entries = [i for i in intents if i["side"] == "BUY" and i["state"] == "FILLED"]
    exits = [i for i in intents if i["purpose"] in TARGET_OR_STOP and i["state"] == "FILLED"]
    assert entries, "at least one entry"
    assert exits, "at least one exit by target or stop"
    # Flat from close - 5 min: the fills (which agree with the simulator's) leave every symbol
    # at zero by the EOD sweep, and nothing trades after it.
    sweep = day.at("15:55") + timedelta(seconds=30)
    trades = day.db.get_trades_by_date(SIM_DATE.isoformat())
    position_at_sweep: dict[str, float] = defaultdict(float)
    for t in trades:
        when = datetime.fromisoformat(t["trade_time"])
        assert when <= sweep, f"a fill after close - 5 min: {t}"
        position_at_sweep[t["symbol"]] += t["quantity"] if t["side"] == "BUY" else -t["quantity"]
    assert {s: q for s, q in position_at_sweep.items() if q} == {}
    # No re-entry of a closed symbol: every symbol was bought once.
    bought = [t["symbol"] for t in trades if t["side"] == "BUY"]
    assert len(bought) == len(set(bought))
    assert day.db.get_active_positions() == []
    # The day's JSON logs through view_logs: the two restarts of this file's kills.
    restarts = subprocess.run(
        [sys.executable, "view_logs.py", "--dir", str(day.run_dir / "logs"), "--bot", "supervisor",
         "--event", "bot_restarting", "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert restarts.returncode == 0, restarts.stderr
    children = sorted(json.loads(line)["child"] for line in restarts.stdout.splitlines())
    assert children == ["day_trader", "exit_manager"]
