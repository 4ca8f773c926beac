"""What the supervisor does, apart from its command line: start, watch and restart the bots.

The exit manager first (it owns every exit), the day trader only once the exit manager's
heartbeat says it has reconciled with IB; beside a ready exit manager a hot standby
(`Standby`: `exit_manager.py --standby`, waiting on the exit manager's instance lock with its
start-up paid) that takes over the moment the kernel frees the lock and is promoted in place
of a restart (a kill -9 right after a fill: a stop in about 0.1 s, not 0.8 s); restarts with
backoff, hung bots killed, crash loops given up on (the standby is stopped first, on a stop
or a give-up, so it never takes over from an exit manager stopped on purpose); the daily
reset; one supervisor per database (SupervisorLock); the status block. `supervisor.py` (the
entry point) and `sim_day` (the simulated day) both use it, so no module imports an entry
point (run as a script, it would be a second copy of every class).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import psutil

from core import cli
from core.clock import MarketClock
from core.heartbeats import EXIT_MANAGER, EXIT_MANAGER_READY_STATES, process_running
from core.instance_lock import lock_path_for as instance_lock_path
from core.logs import get_logger, printable
from core.settings import (
    PROJECT_ROOT,
    get_settings,
)
from observability import RESUME_ENTRIES, DatabaseError, TradingDatabase
from reports import build_day_report, net_pnl_text
from trading.model import DAY_TRADER

log = get_logger("supervisor")
# Log lines name the supervised program in `child`: `bot` is the writing program's own key.

RUNNING, STOPPED, STARTING, GAVE_UP = "RUNNING", "STOPPED", "STARTING", "GAVE_UP"
WAITING = "WAITING"  # a standby waiting to take over
DAILY_RESET_FLAG = "supervisor_daily_reset"
IMPROVE_FLAG = "supervisor_improve_done"  # the trading date whose improvement cycle was started
IMPROVE_AFTER_CLOSE_S = 300.0  # market seconds after the close before the cycle may start


class SupervisorError(cli.SetupError):
    """The supervisor cannot start or go on; the message says what to do."""


class LockHeld(SupervisorError):
    """Another live supervisor already runs on this database."""


# -- lock file -------------------------------------------------------------------------------
def lock_path_for(database_path: Path) -> Path:
    """The supervisor lock beside the database: one supervisor per database."""
    return instance_lock_path(database_path, "supervisor")


def _process_matches(pid: int, create_time: float | None) -> bool:
    """True when `pid` is alive and (if known) is the same process that wrote the record."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock file's content, or None when absent or unreadable (a half-written file)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


class SupervisorLock:
    """A lock file holding the supervisor's pid (and its children, for `--status`).

    A lock left by a dead process (or a reused pid) is taken over; its orphaned children,
    if still alive, are returned by `acquire()` so they can be stopped before new ones start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.create_time = psutil.Process(self.pid).create_time()
        self.held = False

    def acquire(self) -> list[dict[str, Any]]:
        """Take the lock; returns orphan child records of a dead previous holder.

        Raises LockHeld (naming the pid) when a live supervisor holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        orphans: list[dict[str, Any]] = []
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                previous = read_lock(self.path)
                if previous is None:
                    # Empty or half-written: its writer may be mid-write; look again shortly.
                    time.sleep(0.2)
                    previous = read_lock(self.path)
                if previous is not None and _process_matches(
                    int(previous.get("pid", -1)), previous.get("create_time")
                ):
                    raise LockHeld(
                        f"another supervisor (pid {previous['pid']}) already runs on this database "
                        f"(lock {self.path}); stop it first or use `python supervisor.py --status`"
                    ) from None
                if previous is not None:
                    orphans = list((previous.get("bots") or {}).values())
                log.warning("stale_lock_taken_over", lock=str(self.path), previous=previous)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self._payload({}), handle)
            self.held = True
            return orphans
        raise SupervisorError(
            f"could not take the lock {self.path}; delete it if no supervisor runs"
        )

    def _payload(self, bots: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "create_time": self.create_time,
            "started_at": self.create_time,
            "updated_at": time.time(),
            "bots": dict(bots),
        }

    def update(self, bots: Mapping[str, Any]) -> None:
        """Rewrite the lock atomically with the children's state (read by `--status`)."""
        if not self.held:
            return
        tmp = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        try:
            tmp.write_text(json.dumps(self._payload(bots)))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("lock_update_failed", lock=str(self.path), error=str(exc))

    def release(self) -> None:
        if not self.held:
            return
        current = read_lock(self.path)
        if current is not None and current.get("pid") == self.pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False


# -- child processes -------------------------------------------------------------------------
@dataclass(frozen=True)
class BotSpec:
    """How to run one bot: its heartbeat name, command line, and restart class."""

    name: str
    argv: tuple[str, ...]
    critical: bool = False  # restarted at once (the exit manager)
    ready_states: frozenset[str] = frozenset()  # heartbeat states meaning "ready"; empty: any
    env: Mapping[str, str] | None = None
    stdout_path: Path | None = None  # None: inherit the supervisor's console
    # Not empty: keep a hot standby of this bot, `argv` plus these (exit_manager.py --standby).
    standby_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class WatchdogPolicy:
    """Timings, all in real seconds (heartbeats are stamped with wall time)."""

    poll_seconds: float = 0.25  # a dead exit manager is seen (and restarted) this soon
    stale_after_s: float = 90.0
    startup_grace_s: float = 120.0
    backoff_initial_s: float = 1.0  # a repeat failure's first wait (after a healthy run: none)
    backoff_max_s: float = 300.0
    crash_loop_max: int = 5  # restarts within the window before giving up
    crash_loop_window_s: float = 600.0
    # Ready (the exit manager RECONCILED, the day trader beating) this long is a healthy run:
    # the next failure is not part of a loop and its restart backoff starts again.
    healthy_after_s: float = 60.0
    stop_timeout_s: float = 20.0
    status_every_s: float = 300.0


def backoff_s(policy: WatchdogPolicy, failures: int) -> float:
    """The wait before a new process after `failures` failures in a row: doubling, capped."""
    return min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (failures - 1))


def failures_in_window(times: Sequence[float], now: float, policy: WatchdogPolicy) -> int:
    """How many of the failure `times` fall in the crash-loop window ending `now`."""
    return sum(1 for t in times if t >= now - policy.crash_loop_window_s)


def stop_process_tree(proc: psutil.Process, timeout: float) -> int | None:
    """Ask `proc` (and its children) to stop, kill what is left after `timeout`; returns its exit code."""
    try:
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        if os.name == "nt":
            # CTRL_BREAK reaches a child started in its own process group: a clean stop.
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            proc.terminate()
    except psutil.NoSuchProcess:
        pass
    gone, alive = psutil.wait_procs([proc], timeout=timeout)
    for leftover in [*alive, *children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs([*alive, *children], timeout=5)
    code = getattr(gone[0], "returncode", None) if gone else None
    if isinstance(proc, psutil.Popen):
        with contextlib.suppress(Exception):
            code = proc.poll()
    return code


@dataclass
class ManagedBot:
    """One supervised child: its process, restarts, and when it may start again."""

    spec: BotSpec
    process: psutil.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    state: str = STOPPED
    next_start_at: float = 0.0
    consecutive_failures: int = 0
    last_exit: str | None = None
    restart_times: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    ready_since: float | None = None  # wall time this process was first seen ready, if it is
    ready_seen_at: float = 0.0  # and last seen ready (a hung bot stops being healthy there)
    standby: bool = False  # a standby of spec.name, waiting to take over

    @property
    def log_fields(self) -> dict[str, Any]:
        return {"child": self.spec.name, **({"standby": True} if self.standby else {})}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_alive(self) -> bool:
        if self.process is None:
            return False
        try:
            return self.process.poll() is None and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def pids(self) -> set[int]:
        """The child's pid and its descendants' (a venv launcher on Windows runs python as a child)."""
        if self.process is None:
            return set()
        found = {self.process.pid}
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update(child.pid for child in self.process.children(recursive=True))
        return found

    def record(self, now: float) -> dict[str, Any]:
        create_time = None
        if self.process is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                create_time = self.process.create_time()
        return {
            "name": self.spec.name,
            "pid": self.pid if self.is_alive() else None,
            "create_time": create_time,
            "started_at": self.started_at or None,
            "restarts": self.restarts,
            "state": self.state,
            "last_exit": self.last_exit,
            "updated_at": now,
            **({"standby": True} if self.standby else {}),
        }


@dataclass(frozen=True)
class HeartbeatVerdict:
    fresh: bool  # a beat from this process within the stale limit (or still in startup grace)
    state: str | None  # the bot's last reported state, None before its first beat
    age_s: float | None


def judge_heartbeat(
    beat: Mapping[str, Any] | None,
    pids: set[int],
    started_at: float,
    now: float,
    policy: WatchdogPolicy,
) -> HeartbeatVerdict:
    """Pure: is this bot's heartbeat fresh? A beat from an earlier process does not count."""
    own = (
        beat is not None and int(beat.get("pid", -1)) in pids and beat["beat_at"] >= started_at - 1
    )
    if not own:
        return HeartbeatVerdict(now - started_at < policy.startup_grace_s, None, None)
    assert beat is not None
    age = now - float(beat["beat_at"])
    return HeartbeatVerdict(age < policy.stale_after_s, str(beat["state"]), age)


def standby_record_name(name: str) -> str:
    """The key of bot `name`'s standby among the lock file's (and status block's) records."""
    return f"{name} standby"


class Standby:
    """The hot standby of one bot (the exit manager): a second process of it, started once the
    bot is ready, that has paid its start-up (imports, database, objects) and waits on the
    bot's instance lock without connecting or beating. When the bot dies the kernel hands it
    the lock at once; the supervisor then promotes it (`take`) in place of a restart.

    A standby that dies while waiting is started again after a backoff and never counts as
    a failure of the bot; after crash_loop_max deaths in the window the supervisor runs
    without one (a dead bot is then restarted, as with no standby).
    """

    def __init__(
        self,
        spec: BotSpec,
        policy: WatchdogPolicy,
        start: Callable[[ManagedBot, str], None],
        stop: Callable[[ManagedBot, str, float | None], None],
    ) -> None:
        self.bot = ManagedBot(replace(spec, argv=(*spec.argv, *spec.standby_args)), standby=True)
        self.policy = policy
        self._start = start
        self._stop = stop

    def keep(self, bot_ready: bool, now: float) -> None:
        """Reap a standby that died while waiting; start one when due and the bot is ready
        (so the bot holds the lock already: a standby started first would take it)."""
        standby = self.bot
        if standby.process is not None and not standby.is_alive():
            code = standby.process.poll()
            standby.process = None
            standby.last_exit = f"exited with code {code}"
            self._died(now, standby.last_exit)
        if (
            standby.process is None
            and standby.state != GAVE_UP
            and bot_ready
            and now >= standby.next_start_at
        ):
            self._start(standby, "standby_started")
            standby.state = WAITING

    def _died(self, now: float, why: str) -> None:
        standby = self.bot
        if now - standby.started_at >= self.policy.healthy_after_s:
            standby.consecutive_failures = 0  # waited a healthy while: not a loop
        standby.consecutive_failures += 1
        standby.restart_times.append(now)
        recent = failures_in_window(standby.restart_times, now, self.policy)
        if recent > self.policy.crash_loop_max:
            standby.state = GAVE_UP
            log.warning(
                "standby_given_up",
                **standby.log_fields,
                failures_in_window=recent,
                last_exit=why,
                action="running without a standby: a dead bot is restarted (slower); "
                "see the bot's log for why the standby dies",
            )
            return
        delay = backoff_s(self.policy, standby.consecutive_failures)
        standby.next_start_at = now + delay
        standby.state = STOPPED
        log.warning("standby_died", **standby.log_fields, why=why, restart_in_s=round(delay, 1))

    def take(self) -> psutil.Popen | None:
        """Hand over the waiting process to become the bot; None when none can: not
        running, or stopped (SIGSTOP: it could not take the lock, so it is stopped here)."""
        standby = self.bot
        process = standby.process
        if process is None or not standby.is_alive():
            return None
        if not process_running(process.pid):
            # Killed at once: the supervisor's loop must not wait on it while no one protects.
            self.stop("stopped (SIGSTOP) when its bot failed", timeout=0.0)
            return None
        standby.process = None
        standby.state = STOPPED
        standby.consecutive_failures = 0
        standby.next_start_at = 0.0
        return process

    def stop(self, reason: str, timeout: float | None = None) -> None:
        """Stop a waiting standby (before the bot itself: it must not take over then)."""
        if self.bot.process is not None:
            self._stop(self.bot, reason, timeout)
            self.bot.process = None


class Supervisor:
    """Runs the bots in order, watches them, restarts them, and reports."""

    def __init__(
        self,
        db: TradingDatabase,
        specs: Sequence[BotSpec],
        policy: WatchdogPolicy | None = None,
        *,
        lock: SupervisorLock | None = None,
        clock: MarketClock | None = None,
        backup_dir: Path | None = None,
        backup_keep_days: int | None = None,
        print_status: Callable[[str], None] | None = None,
        wall: Callable[[], float] = time.time,
        improve: BotSpec | None = None,
    ) -> None:
        self.db = db
        self.bots = {spec.name: ManagedBot(spec) for spec in specs}
        self.order = [spec.name for spec in specs]  # start order; stop in reverse
        self.policy = policy or WatchdogPolicy()
        self.standbys = {
            spec.name: Standby(spec, self.policy, self.start_bot, self.stop_bot)
            for spec in specs
            if spec.standby_args
        }
        self.lock = lock
        self.clock = clock or db.clock
        # Where the start-of-day backup goes and how long backups stay (default: the settings').
        if backup_dir is None or backup_keep_days is None:
            settings = get_settings()
            backup_dir = backup_dir or settings.backup_dir
            if backup_keep_days is None:
                backup_keep_days = settings.backup_keep_days
        self.backup_dir: Path = backup_dir
        self.backup_keep_days: int = backup_keep_days
        self.print_status = print_status or _print_to_console
        self.wall = wall
        self.stop_requested = False
        self.status_requested = False
        self.fatal: str | None = None
        self._last_status_at = 0.0
        self._last_reset_date: date | None = None
        # The improvement cycle after the close (improve.py): None when turned off.
        self.improve_spec = improve
        self.improve: ManagedBot | None = None  # tonight's cycle, once started
        self._improve_waiting: date | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start_bot(self, bot: ManagedBot, event: str = "bot_started") -> None:
        spec = bot.spec
        env = dict(os.environ)
        env.update(spec.env or {})
        kwargs: dict[str, Any] = {"env": env, "cwd": str(PROJECT_ROOT)}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # Ctrl+C reaches the supervisor only
        if spec.stdout_path is not None:
            spec.stdout_path.parent.mkdir(parents=True, exist_ok=True)
            out = spec.stdout_path.open("ab")
            kwargs.update(stdout=out, stderr=subprocess.STDOUT)
        try:
            bot.process = psutil.Popen(list(spec.argv), **kwargs)
        finally:
            if spec.stdout_path is not None:
                out.close()
        bot.started_at = self.wall()
        bot.state = STARTING
        log.info(event, **bot.log_fields, pid=bot.pid, argv=list(spec.argv))

    def stop_bot(self, bot: ManagedBot, reason: str, timeout: float | None = None) -> None:
        if bot.process is None:
            return
        if bot.is_alive():
            log.info("bot_stopping", **bot.log_fields, pid=bot.pid, reason=reason)
        code = stop_process_tree(
            bot.process, self.policy.stop_timeout_s if timeout is None else timeout
        )
        bot.state = STOPPED
        bot.last_exit = f"{reason} (exit code {code})"
        log.info("bot_stopped", **bot.log_fields, pid=bot.pid, exit_code=code, reason=reason)

    def stop_all(self, reason: str) -> None:
        """The standby first (it must not take over from an exit manager stopped on purpose),
        the day trader (no new entries), then the exit manager (and the evening cycle)."""
        for standby in self.standbys.values():
            standby.stop(reason)
        for name in reversed(self.order):
            self.stop_bot(self.bots[name], reason)
        if self.improve is not None and self.improve.is_alive():
            self.stop_bot(self.improve, reason)
        self._publish()

    def _heartbeat(self, bot: ManagedBot, beats: Mapping[str, Any], now: float) -> HeartbeatVerdict:
        return judge_heartbeat(
            beats.get(bot.spec.name), bot.pids(), bot.started_at, now, self.policy
        )

    def is_ready(self, bot: ManagedBot, beats: Mapping[str, Any], now: float) -> bool:
        """Alive, beating, and (when the spec says so) in a ready state such as RECONCILED."""
        if not bot.is_alive():
            return False
        verdict = self._heartbeat(bot, beats, now)
        if verdict.state is None or not verdict.fresh:
            return False
        return not bot.spec.ready_states or verdict.state in bot.spec.ready_states

    def _fail(self, bot: ManagedBot, now: float, why: str, *, hung: bool = False) -> None:
        """Count a failure of `bot` (dead, or `hung`: stopped here) and replace it: by its
        standby when one waits (promoted at once), else by a new process (at once, or after
        a backoff in a loop). A crash loop is given up on, its standby stopped first."""
        ran_for = now - bot.started_at
        healthy_for = bot.ready_seen_at - bot.ready_since if bot.ready_since is not None else 0.0
        bot.ready_since = None
        after_healthy_run = healthy_for >= self.policy.healthy_after_s
        if after_healthy_run:
            bot.consecutive_failures = 0  # after a healthy run: not a loop, no long backoff
        bot.consecutive_failures += 1
        bot.restart_times.append(now)
        recent = failures_in_window(bot.restart_times, now, self.policy)
        standby = self.standbys.get(bot.spec.name)
        giving_up = recent > self.policy.crash_loop_max
        if giving_up and standby is not None:
            standby.stop("crash loop: giving up")  # before a hung bot's stop frees its lock
        if hung:
            # A hung process gets little time: its positions wait meanwhile. Its lock goes
            # with it: a standby takes over now.
            self.stop_bot(bot, "heartbeat stale", timeout=1.0)
        bot.process = None
        if giving_up:
            bot.state = GAVE_UP
            log.critical(
                "crash_loop_gave_up",
                child=bot.spec.name,
                failures_in_window=recent,
                window_s=self.policy.crash_loop_window_s,
                window_sim_s=round(self.policy.crash_loop_window_s * self.clock.speed, 1),
                limit=crash_loop_limit(self.policy, self.clock.speed),
                last_exit=bot.last_exit,
                action="fix the cause (see the bot's log), then restart the supervisor",
            )
            if bot.spec.critical:
                self.fatal = (
                    f"{bot.spec.name} failed {recent} times: "
                    f"{crash_loop_limit(self.policy, self.clock.speed)}"
                )
            return
        successor = standby.take() if standby is not None else None
        if successor is not None or bot.spec.critical or after_healthy_run:
            # A failure after a healthy run is not a loop: back at once (the day trader within
            # 5 s of a crash); only repeats wait, and their wait doubles.
            delay = 0.0
        else:
            delay = backoff_s(self.policy, bot.consecutive_failures)
        bot.next_start_at = now + delay
        bot.state = STOPPED
        level = log.critical if bot.spec.critical else log.error
        level(
            "bot_failed",
            child=bot.spec.name,
            why=why,
            ran_for_s=round(ran_for, 1),
            restart_in_s=round(delay, 1),
            failures=bot.consecutive_failures,
            replaced_by="standby" if successor is not None else "new process",
        )
        if successor is not None:
            bot.process, bot.started_at, bot.state = successor, now, STARTING
            bot.restarts += 1
            # The events of a restart, then the promotion in place of its bot_started.
            log.warning("bot_restarting", child=bot.spec.name, restarts=bot.restarts, by="standby")
            log.warning("standby_promoted", child=bot.spec.name, pid=bot.pid, restarts=bot.restarts)

    def poll_once(self) -> None:
        """One watchdog pass: reap, detect hangs, (re)start in order, report."""
        now = self.wall()
        beats = self.db.get_heartbeats()
        for name in self.order:
            bot = self.bots[name]
            if bot.state == GAVE_UP:
                continue
            if bot.process is not None and bot.state in (RUNNING, STARTING):
                if not bot.is_alive():
                    code = bot.process.poll()
                    bot.last_exit = f"exited with code {code}"
                    self._fail(bot, now, f"process exited with code {code}")
                    continue
                verdict = self._heartbeat(bot, beats, now)
                if not verdict.fresh:
                    age = "never" if verdict.age_s is None else f"{verdict.age_s:.0f} s ago"
                    log.error("bot_hung", child=name, pid=bot.pid, last_beat=age)
                    self._fail(bot, now, f"hung (last heartbeat {age})", hung=True)
                    continue
                if verdict.state is not None:
                    bot.state = RUNNING
                if not self.is_ready(bot, beats, now):
                    bot.ready_since = None
                else:
                    bot.ready_since = bot.ready_since or now
                    bot.ready_seen_at = now
        for index, name in enumerate(self.order):
            bot = self.bots[name]
            if bot.process is not None or bot.state == GAVE_UP or now < bot.next_start_at:
                continue
            # Every bot after the first waits for the ones before it to be ready.
            if all(self.is_ready(self.bots[n], beats, now) for n in self.order[:index]):
                if bot.started_at:
                    bot.restarts += 1
                    log.warning("bot_restarting", child=name, restarts=bot.restarts)
                self.start_bot(bot)
        for name, standby in self.standbys.items():
            standby.keep(not self.fatal and self.is_ready(self.bots[name], beats, now), now)
        if self.fatal:
            # Without an exit manager nothing may enter: stop the day trader too.
            for name in self.order[1:]:
                self.stop_bot(self.bots[name], "exit manager gave up")
        self._publish()

    def records(self, now: float) -> dict[str, dict[str, Any]]:
        """Each child's record (the lock file's, the status block's): a bot's standby after it."""
        found = {}
        for name, bot in self.bots.items():
            found[name] = bot.record(now)
            if name in self.standbys:
                found[standby_record_name(name)] = self.standbys[name].bot.record(now)
        return found

    def _publish(self) -> None:
        if self.lock is not None:
            self.lock.update(self.records(self.wall()))

    # -- daily work -------------------------------------------------------------------
    def daily_reset_if_new_day(self) -> bool:
        """On the first look at a new trading date: clear old closed rows and back up the db.

        Returns True when it ran. The date done is kept in the database so a restart the same
        day does not redo it.
        """
        today = self.clock.today()
        if self._last_reset_date == today:
            return False
        self._last_reset_date = today
        if not self.clock.is_trading_day(today):
            return False
        if self.db.get_flag(DAILY_RESET_FLAG) == today.isoformat():
            return False
        removed = self.db.clear_closed_today()
        try:
            backup = str(self.db.backup(self.backup_dir, self.backup_keep_days))
        except DatabaseError as exc:
            backup = None
            log.error("backup_failed", error=str(exc))
        self.db.set_flag(DAILY_RESET_FLAG, today.isoformat())
        log.info(
            "daily_reset",
            trading_date=today.isoformat(),
            closed_rows_removed=removed,
            backup=backup,
            entries_halted=self.db.entries_halted(),  # a halt carries over into the new day
        )
        return True

    def improve_after_close_if_due(self) -> bool:
        """Start the improvement cycle (improve.py --date today) as a child, once per trading
        day, after the close and only when the day is flat (no active position, no working
        order). Returns True when it started it. The date is kept in the database so a
        restarted supervisor does not run it twice; a finished cycle is reaped and logged."""
        if self.improve_spec is None:
            return False
        cycle = self.improve
        if cycle is not None and cycle.process is not None and not cycle.is_alive():
            code = cycle.process.poll()
            (log.info if code == 0 else log.error)("improve_finished", exit_code=code)
            cycle.process, cycle.state = None, STOPPED
        today = self.clock.today()
        session = self.clock.session(today)
        if session is None or self.clock.is_market_open():
            return False
        if self.clock.epoch() < session.close.timestamp() + IMPROVE_AFTER_CLOSE_S:
            return False
        if self.db.get_flag(IMPROVE_FLAG) == today.isoformat():
            return False
        held = [p["symbol"] for p in self.db.get_active_positions()]
        working = [i["order_ref"] for i in self.db.get_open_intents()]
        if held or working:
            if self._improve_waiting != today:
                self._improve_waiting = today
                log.info("improve_waiting_for_flat", positions=held, working_orders=working)
            return False
        self.db.set_flag(IMPROVE_FLAG, today.isoformat())
        spec = self.improve_spec
        self.improve = ManagedBot(replace(spec, argv=(*spec.argv, "--date", today.isoformat())))
        self.start_bot(self.improve)
        return True

    def maybe_status(self, force: bool = False) -> None:
        now = self.wall()
        if force or now - self._last_status_at >= self.policy.status_every_s:
            self._last_status_at = now
            self.print_status(render_status(self.db, self.records(now), now))

    # -- main loop --------------------------------------------------------------------
    def run(self, until: Callable[[], bool] | None = None) -> int:
        """Supervise until stopped (signal, `until()` true, or the exit manager gave up).

        Returns 0 on a requested stop, 3 when the exit manager crash-looped.
        """
        log.info(
            "supervisor_started",
            bots=self.order,
            pid=os.getpid(),
            database=str(self.db.path),
            crash_loop=crash_loop_limit(self.policy, self.clock.speed),
        )
        try:
            while not self.stop_requested:
                self.daily_reset_if_new_day()
                self.poll_once()
                self.improve_after_close_if_due()
                self.maybe_status(force=self.status_requested)
                self.status_requested = False
                if self.fatal:
                    log.critical("supervisor_giving_up", reason=self.fatal)
                    break
                if until is not None and until():
                    break
                time.sleep(self.policy.poll_seconds)
        finally:
            self.stop_all("supervisor stopping")
            self.maybe_status(force=True)
            log.info("supervisor_stopped")
        return 3 if self.fatal else 0


def crash_loop_limit(policy: WatchdogPolicy, speed: float = 1.0) -> str:
    """The crash-loop rule in words, in real time and (at `speed` x) in simulated time."""
    window = policy.crash_loop_window_s
    text = (
        f"more than {policy.crash_loop_max} failures of one bot within {window:g} real s "
        f"(a run ready for {policy.healthy_after_s:g} s restarts the backoff)"
    )
    if speed != 1.0:
        text += f"; at {speed:g}x that window is {_fmt_uptime(window * speed)} simulated"
    return text


def policy_from_args(args: argparse.Namespace, policy: WatchdogPolicy) -> WatchdogPolicy:
    """`policy` with the watchdog flags given on the command line on top."""
    changes = {
        name: getattr(args, flag)
        for flag, name in (
            ("stale_after", "stale_after_s"),
            ("crash_loop_max", "crash_loop_max"),
            ("crash_loop_window", "crash_loop_window_s"),
            ("healthy_after", "healthy_after_s"),
            ("status_every", "status_every_s"),
        )
        if getattr(args, flag, None) is not None
    }
    return replace(policy, **changes)


def stop_orphans(orphans: Sequence[Mapping[str, Any]], timeout: float = 20.0) -> None:
    """Stop bots left running by a supervisor that died (two exit managers would clash: 326);
    a standby first, so it does not take over from the orphan exit manager stopped here."""
    for record in sorted(orphans, key=lambda r: not r.get("standby")):
        pid = record.get("pid")
        if not pid or not _process_matches(int(pid), record.get("create_time")):
            continue
        log.warning("orphan_bot_stopped", child=record.get("name"), pid=pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            stop_process_tree(psutil.Process(int(pid)), timeout)


# -- status block ----------------------------------------------------------------------------
def _fmt_uptime(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def render_status(db: TradingDatabase, bots: Mapping[str, Mapping[str, Any]], now: float) -> str:
    """The status block as text (a rich table): bots, positions, closed today, P&L."""
    from rich.console import Console
    from rich.table import Table

    beats = db.get_heartbeats()
    bot_table = Table(title=f"supervisor status  {db.clock.now():%Y-%m-%d %H:%M:%S} New York")
    notes: list[str] = []  # what a running bot says of itself (e.g. entries off, and why)
    for column in ("bot", "state", "pid", "uptime", "restarts", "heartbeat"):
        bot_table.add_column(column)
    for name, record in bots.items():
        pid = record.get("pid")
        alive = bool(pid) and _process_matches(int(pid), record.get("create_time"))
        state = (
            str(record.get("state"))
            if alive
            else (GAVE_UP if record.get("state") == GAVE_UP else STOPPED)
        )
        if alive and state == STARTING:
            state = f"{RUNNING} (starting)"
        uptime = now - float(record["started_at"]) if alive and record.get("started_at") else None
        beat = beats.get(name)
        beat_text = f"{beat['state']} {now - beat['beat_at']:.0f}s ago" if beat else "-"
        if alive and beat and beat.get("detail"):
            notes.append(f"{name}: {beat['detail']}")
        bot_table.add_row(
            name,
            state,
            str(pid) if alive else "-",
            _fmt_uptime(uptime),
            str(record.get("restarts", 0)),
            beat_text,
        )
    active = db.get_active_positions()
    closed = db.get_closed_today()
    # Today's fills, net of commissions: the same numbers as the day report's headline.
    today = build_day_report(db, db.clock.today_str())
    pos_table = Table(title=f"active positions: {len(active)}")
    for column in ("symbol", "qty", "entry", "target", "stop", "since"):
        pos_table.add_column(column)
    for row in active:
        pos_table.add_row(
            row["symbol"],
            str(row["quantity"]),
            f"{row['entry_price']:.2f}",
            f"{row['profit_target_price'] or 0:.2f}",
            f"{row['stop_loss_price'] or 0:.2f}",
            str(row["entry_time"])[11:19],
        )
    buffer = io.StringIO()
    console = Console(width=110, file=buffer, force_terminal=False, color_system=None)
    console.print(bot_table)
    for note in notes:  # text from the database: no markup, no control characters
        console.print(printable(note), markup=False, highlight=False, soft_wrap=True)
    console.print(pos_table)
    console.print(f"closed today: {len(closed)}   P&L today: {net_pnl_text(today)}")
    halted = db.entries_halted()
    if halted:
        console.print(f"NEW ENTRIES HALTED: {halted}")
        console.print(f"  lift with: {RESUME_ENTRIES}")
    return buffer.getvalue()


def _print_to_console(text: str) -> None:
    print(text, flush=True)


def status_from_files(db: TradingDatabase, lock_file: Path) -> str:
    """`--status`: the block from the database and the lock file, no supervisor needed."""
    payload = read_lock(lock_file)
    now = time.time()
    header = "no supervisor running (no lock file)"
    bots: dict[str, Any] = {}
    if payload is not None:
        alive = _process_matches(int(payload.get("pid", -1)), payload.get("create_time"))
        header = (
            f"supervisor pid {payload.get('pid')} "
            f"{'RUNNING' if alive else 'NOT RUNNING (stale lock)'}"
        )
        bots.update(payload.get("bots") or {})  # in the supervisor's order (standby included)
    for name in (EXIT_MANAGER, DAY_TRADER):
        bots.setdefault(name, {})
    return header + "\n" + render_status(db, bots, now)


# -- wiring ----------------------------------------------------------------------------------
def bot_specs(
    allocation: float,
    extra_env: Mapping[str, str] | None = None,
    output_dir: Path | None = None,
    python: str = sys.executable,
    day_trader_args: Sequence[str] = (),
    exit_manager_args: Sequence[str] = (),
) -> list[BotSpec]:
    """The real bots: exit manager (client id 10, with a hot standby) first, then the day
    trader (client id 2)."""
    return [
        BotSpec(
            EXIT_MANAGER,
            (python, str(PROJECT_ROOT / "exit_manager.py"), *exit_manager_args),
            critical=True,
            ready_states=EXIT_MANAGER_READY_STATES,
            env=extra_env,
            stdout_path=output_dir / f"{EXIT_MANAGER}.out" if output_dir else None,
            standby_args=("--standby",),  # a dead one's successor is already started
        ),
        BotSpec(
            DAY_TRADER,
            (
                python,
                str(PROJECT_ROOT / "day_trader.py"),
                "--allocation",
                f"{allocation:g}",
                *day_trader_args,
            ),
            env=extra_env,
            stdout_path=output_dir / f"{DAY_TRADER}.out" if output_dir else None,
        ),
    ]


def improve_spec(
    extra_env: Mapping[str, str] | None = None,
    output_dir: Path | None = None,
    python: str = sys.executable,
) -> BotSpec:
    """The evening improvement cycle (improve.py; the supervisor adds --date)."""
    return BotSpec(
        "improve",
        (python, str(PROJECT_ROOT / "improve.py"), "--no-progress"),
        env=extra_env,
        stdout_path=output_dir / "improve.out" if output_dir else None,
    )


def install_signal_handlers(supervisor: Supervisor) -> None:
    def stop(signum: int, _frame: object) -> None:
        if supervisor.stop_requested:  # a second Ctrl+C: the stop is already under way
            return
        log.warning("stop_requested", signal=signal.Signals(signum).name)
        supervisor.stop_requested = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, stop)  # type: ignore[attr-defined]
    if hasattr(signal, "SIGUSR1"):

        def status(_signum: int, _frame: object) -> None:
            supervisor.status_requested = True

        signal.signal(signal.SIGUSR1, status)
