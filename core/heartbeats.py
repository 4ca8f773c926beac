"""When the exit manager protects positions, read from its heartbeat (one rule, two readers).

The exit manager writes its heartbeat row (`TradingDatabase.beat`, wall time) every
EXIT_MANAGER_BEAT_S and at once when it loses IB or starts reconciling. The supervisor starts
the day trader only once that row says ready; the day trader sends a new entry only while it
still does, since a fill nobody protects has no stop at IB (issue 12: entries went on while
the exit manager was dead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trading.model import EXIT_MANAGER

__all__ = ["EXIT_MANAGER", "exit_manager_problem", "process_alive", "process_running"]
EXIT_MANAGER_BEAT_S = 2.0  # real seconds between the exit manager's heartbeats
# Its heartbeat states once it has reconciled with IB and protects every position
# (the others: CONNECTING, RECONCILING, DEGRADED, STOPPED).
EXIT_MANAGER_READY_STATES = frozenset({"RECONCILED"})
# Three beats missed: hung (SIGSTOP, a blocked loop) or locked out of the database.
EXIT_MANAGER_FRESH_S = 3 * EXIT_MANAGER_BEAT_S


def process_alive(pid: int) -> bool:
    """True when `pid` runs (a killed process not yet reaped by its parent does not)."""
    import psutil  # here: the exit manager imports this module for its beat only, and a
    # restart's time to protection pays for every import

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_running(pid: int) -> bool:
    """True when `pid` runs and is not stopped: a SIGSTOPped exit manager is alive but
    protects nothing until it is continued (and its beat takes 6 s to look stale)."""
    import psutil

    try:
        status = psutil.Process(pid).status()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return status not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


def exit_manager_problem(
    beat: Mapping[str, Any] | None,
    now: float,
    alive: Callable[[int], bool] = process_running,
) -> str | None:
    """Why the exit manager cannot be counted on to protect a fill now, or None when it can:
    its last beat (None: it never beat) must say ready, be at most EXIT_MANAGER_FRESH_S old
    at wall time `now`, and come from a process that still runs, not stopped (a kill -9 leaves
    a fresh ready row behind, a SIGSTOP a fresh one for three beats)."""
    if beat is None:
        return "no exit manager heartbeat"
    if beat["state"] not in EXIT_MANAGER_READY_STATES:
        return f"exit manager {beat['state']}"
    age = now - float(beat["beat_at"])
    if age > EXIT_MANAGER_FRESH_S:
        return f"exit manager heartbeat {age:.1f} s old"
    if not alive(int(beat["pid"])):
        return f"exit manager process {beat['pid']} is not running"
    return None
