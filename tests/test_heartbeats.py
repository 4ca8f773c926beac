"""core.heartbeats: when the exit manager's heartbeat says it protects new fills (pure)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from sim_support import wait_for

from core.heartbeats import (
    EXIT_MANAGER_FRESH_S,
    exit_manager_problem,
    process_alive,
    process_running,
)

NOW = 1_000_000.0


def beat(state: str = "RECONCILED", age: float = 1.0, pid: int = 4242) -> dict[str, object]:
    return {"state": state, "beat_at": NOW - age, "pid": pid}


@pytest.mark.parametrize(
    ("row", "why"),
    [
        (None, "no exit manager heartbeat"),
        (beat("RECONCILING"), "exit manager RECONCILING"),
        (beat("DEGRADED"), "exit manager DEGRADED"),  # lost IB, or faults to look at
        (beat("STOPPED"), "exit manager STOPPED"),
        (beat(age=EXIT_MANAGER_FRESH_S + 0.1), "heartbeat 6.1 s old"),  # hung or locked out
        (beat(pid=999), "process 999 is not running"),  # kill -9: a fresh RECONCILED row stays
    ],
)
def test_exit_manager_that_would_not_protect_a_fill_is_named(row, why) -> None:
    problem = exit_manager_problem(row, NOW, alive=lambda pid: pid == 4242)
    assert problem is not None and why in problem


def test_live_reconciled_exit_manager_with_a_fresh_beat_protects() -> None:
    assert exit_manager_problem(beat(age=EXIT_MANAGER_FRESH_S), NOW, alive=lambda _: True) is None


def test_a_killed_process_is_not_alive_even_before_it_is_reaped() -> None:
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.kill()
        # Not reaped yet (no wait): a zombie, and a zombie protects nothing.
        wait_for(lambda: not process_alive(child.pid), 5, "the killed child to count as dead")
        assert child.returncode is None, "the child must still be unreaped here"
    finally:
        child.wait(5)


def test_a_stopped_exit_manager_protects_nothing_while_its_beat_is_still_fresh() -> None:
    """A chaos day: the exit manager SIGSTOPped, the day trader entered 4 s later on its
    fresh beat, and three fills waited 8 s for a stop."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_running(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        wait_for(lambda: not process_running(child.pid), 5, "the stopped child to count as down")
        fresh = {**beat(age=0.0), "pid": child.pid}
        problem = exit_manager_problem(fresh, NOW)
        assert problem == f"exit manager process {child.pid} is not running"
        assert process_alive(child.pid)  # alive (for the dashboard's wait), yet not running
        os.kill(child.pid, signal.SIGCONT)
        wait_for(lambda: process_running(child.pid), 5, "the continued child to run")
    finally:
        child.kill()
        child.wait(5)
