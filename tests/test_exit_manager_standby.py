"""One exit manager per database, and the standby that takes over when it dies.

Real processes: the exit manager runs as a subprocess (it must die by kill -9, and its lock
is the kernel's), the lock's holder is a real child, the gateway is the simulated one.
Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from core.instance_lock import lock_path_for
from core.settings import PROJECT_ROOT
from exit_manager import AGENT
from observability import TradingDatabase
from tests.sim_support import buy_async, sim_db, until, until_gateway, wait_for
from tests.test_exit_manager import (
    CONFIG,
    EM,
    _subprocess_env,
    day_trader,
    exit_manager_reconciled,
    gateway,
    one_protective_set,
    run,
    start_exit_manager,
)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from core.instance_lock import InstanceLock
    lock = InstanceLock(Path(sys.argv[1]))
    assert lock.try_acquire()
    print("holding", flush=True)
    time.sleep(120)
    """
)


def hold_lock(db_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A real child process holding the exit manager's lock for `db_path`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path_for(db_path, AGENT))],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def events(folder: Path, pid: int | None = None) -> list[dict[str, Any]]:
    """The exit managers' JSON log lines in order; with `pid`, only that process's run file
    (the one whose `standby_waiting` names it)."""
    found = []
    for path in sorted(folder.glob("exit_manager_run_*.json")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        if pid is None or any(r.get("pid") == pid for r in records):
            found += records
    return found


def named(records: list[dict[str, Any]], *names: str) -> list[str]:
    return [r["event"] for r in records if r["event"] in names]


def ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"]).timestamp()


def test_second_exit_manager_for_the_same_database_refuses_in_one_line_before_connecting(
    tmp_path: Path,
) -> None:
    """Two exit managers on one database both placed protective sets (and fought over
    client id 10): the second now refuses, naming the running one's pid and the fix, and
    never tries the gateway (the port here has nobody listening: a connect would retry)."""
    db = TradingDatabase(tmp_path / "t.db")
    db.schema_version()
    env = {**os.environ, "LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": str(PROJECT_ROOT)}
    holder = hold_lock(db.path, env)
    try:
        done = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "exit_manager.py"), "--db", str(db.path),
             "--port", "1", "--retry-seconds", "0.1"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait(10)
    lock = lock_path_for(db.path, AGENT)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"exit_manager: error: another exit manager (pid {holder.pid}) already runs on this "
        f"database (lock {lock}); stop it first, or pass --standby to take over when it stops"
    )
    assert "Traceback" not in done.stderr
    assert not named(events(tmp_path / "logs"), "connected", "connect_failed")
    assert AGENT not in db.get_heartbeats()


def test_standby_sends_and_writes_nothing_until_the_holder_dies_then_takes_over(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            env = _subprocess_env(tmp_path, gw)
            holder = hold_lock(db.path, env)
            standby = start_exit_manager(gw, db, tmp_path, "--standby", env=env)
            logs = tmp_path / "logs"
            try:
                await until(
                    lambda: named(events(logs, standby.pid), "standby_waiting"),
                    30, "the standby waiting on the lock",
                )  # fmt: skip
                async with day_trader(gw) as dt:
                    # A position nobody protects yet: a standby must not touch it.
                    await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                    state = await asyncio.to_thread(gw.account.state)
                    assert EM not in state["clients"], "the standby connected to IB"
                    assert not [o for o in state["open_orders"] if o["client_id"] == EM]
                    assert AGENT not in db.get_heartbeats(), "the standby wrote a heartbeat"
                    assert standby.poll() is None
                    assert named(events(logs, standby.pid), "connected", "connecting") == []

                    os.kill(holder.pid, signal.SIGKILL)
                    killed_at = time.time()
                    await asyncio.to_thread(holder.wait, 10)
                    await until_gateway(
                        gw, lambda s: one_protective_set(s, "AAPL", 100), 15, "AAPL protected"
                    )
                mine = events(logs, standby.pid)
                order = named(mine, "standby_waiting", "standby_taking_over", "connected")
                assert order == ["standby_waiting", "standby_taking_over", "connected"]
                took_over = next(r for r in mine if r["event"] == "standby_taking_over")
                assert ts(took_over) >= killed_at - 0.01, "took over before the holder died"
                assert db.get_heartbeats()[AGENT]["pid"] == standby.pid
                assert lock_path_for(db.path, AGENT).read_text().split() == [str(standby.pid)]
            finally:
                for proc in (holder, standby):
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(10)

    run(scenario())


def test_standby_told_to_stop_while_waiting_exits_0_at_once_having_sent_nothing(
    tmp_path: Path,
) -> None:
    db = TradingDatabase(tmp_path / "t.db")
    db.schema_version()
    env = {**os.environ, "LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": str(PROJECT_ROOT)}
    holder = hold_lock(db.path, env)
    standby = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "exit_manager.py"), "--db", str(db.path),
         "--port", "1", "--standby"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: named(events(tmp_path / "logs", standby.pid), "standby_waiting"),
            30, "the standby waiting", every=0.05,
        )  # fmt: skip
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(5) == 0
    finally:
        holder.kill()
        holder.wait(10)
        if standby.poll() is None:
            standby.kill()
    said = named(events(tmp_path / "logs", standby.pid), "standby_stopped", "standby_taking_over")
    assert said == ["standby_stopped"]
    assert AGENT not in db.get_heartbeats()


def test_exit_manager_killed_right_after_a_fill_is_replaced_by_its_standby_which_protects_it(
    tmp_path: Path,
) -> None:
    """kill -9 of the exit manager just after an entry filled left the position with no stop
    until a new process had imported, connected and reconciled (0.8 s and more); a standby
    waiting on the lock protects it as soon as it connects, having imported everything it
    needs before the lock (a lazy import after it would be paid while nothing protects)."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            env = _subprocess_env(tmp_path, gw)
            active = start_exit_manager(gw, db, tmp_path, env=env)
            standby = None
            logs = tmp_path / "logs"
            try:
                await until(lambda: exit_manager_reconciled(db), 30, "the exit manager reconciled")
                # -X importtime: its imports and its console log lines share stderr, in order.
                console = (tmp_path / "standby.err").open("w")
                standby = start_exit_manager(gw, db, tmp_path, "--standby", env=env,
                                             stderr=console, python_flags=("-X", "importtime"))  # fmt: skip
                console.close()
                await until(
                    lambda: named(events(logs, standby.pid), "standby_waiting"),
                    30, "the standby waiting",
                )  # fmt: skip
                async with day_trader(gw) as dt:
                    await buy_async(dt, "MSFT", 60, db=db, percentages=CONFIG)
                    os.kill(active.pid, signal.SIGKILL)  # the fill is not yet protected
                    killed_at = time.time()
                    await asyncio.to_thread(active.wait, 10)
                    await until_gateway(
                        gw, lambda s: one_protective_set(s, "MSFT", 60), 15, "MSFT protected"
                    )
                placed = [
                    r
                    for r in events(logs, standby.pid)
                    if r["event"] == "protection_placed" and r.get("symbol") == "MSFT"
                ]
                assert placed, "the standby placed MSFT's protection"
                # A generous bound (the figure: bench/bench_recovery.py --standby).
                assert ts(placed[0]) - killed_at < 10.0
                # Everything slow was imported before the lock, none of it after.
                said = (tmp_path / "standby.err").read_text().split("standby_taking_over", 1)
                late = [
                    line.split("|")[-1].strip()
                    for line in said[1].splitlines()
                    if line.startswith("import time:")
                ]
                assert [m for m in late if not m.startswith("encodings.")] == [], late
            finally:
                for proc in (active, standby):
                    if proc is not None and proc.poll() is None:
                        proc.kill()
                        proc.wait(10)

    run(scenario())
