"""Supervisor process management on tiny fake bots: order, restarts, hangs, crash loops, lock."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from mode_rule import COMBOS, combo_id, rule_refusal, set_environment
from sim_support import wait_for

import supervision as sup
import supervisor as supervisor_cli
from core.clock import NEW_YORK, ManualTimeSource, MarketClock
from core.settings import PROJECT_ROOT
from observability import TradingDatabase
from reports import build_day_report, render_report

FAKE_BOT = textwrap.dedent(
    """
    import argparse, os, signal, sys, time
    sys.path.insert(0, os.environ["PROJECT_ROOT"])
    from observability import TradingDatabase
    p = argparse.ArgumentParser()
    p.add_argument("--name"); p.add_argument("--db")
    p.add_argument("--state", default="RECONCILED")
    p.add_argument("--ready-after", type=float, default=0.0)
    p.add_argument("--die-after", type=float, default=None)
    p.add_argument("--hang-after", type=float, default=None)
    p.add_argument("--exit-code", type=int, default=1)
    p.add_argument("--mark", default=None)
    p.add_argument("--hang-file", default=None)  # stops beating once this file exists
    p.add_argument("--hold-lock", action="store_true")  # the exit manager's instance lock
    p.add_argument("--standby", action="store_true")  # wait for that lock first
    p.add_argument("--standby-dies", action="store_true")  # exit 1 instead of waiting
    a, _ = p.parse_known_args()
    stop = False
    def on_term(*_):
        global stop
        stop = True
    def mark(what):
        if a.mark:
            with open(a.mark, "a") as f:
                f.write(f"{os.getpid()} {what} {time.time()}\\n")
    mark("start")
    if a.hold_lock or a.standby:
        from pathlib import Path
        from core.instance_lock import InstanceLock, lock_path_for
        lock = InstanceLock(lock_path_for(Path(a.db), a.name))
        if a.standby_dies:
            sys.exit(1)
        if a.standby:
            def stop_waiting(*_):
                mark("stop")
                sys.exit(0)
            signal.signal(signal.SIGTERM, stop_waiting)
            mark("waiting")
            lock.wait()
            mark("took_over")
        elif not lock.try_acquire():
            sys.exit(2)
    signal.signal(signal.SIGTERM, on_term)
    db = TradingDatabase(a.db)
    t0 = time.time()
    while not stop:
        age = time.time() - t0
        if a.die_after is not None and age > a.die_after:
            sys.exit(a.exit_code)
        hung = (a.hang_after is not None and age >= a.hang_after) or (
            a.hang_file is not None and os.path.exists(a.hang_file))
        if not hung:
            db.beat(a.name, a.state if age >= a.ready_after else "CONNECTING")
        time.sleep(0.05)
    mark("stop")
    """
)


@pytest.fixture
def fake_bot(tmp_path: Path) -> Path:
    script = tmp_path / "fake_bot.py"
    script.write_text(FAKE_BOT)
    return script


@pytest.fixture
def wall_db(tmp_path: Path) -> TradingDatabase:
    """A database on the wall clock (heartbeats are wall time)."""
    database = TradingDatabase(tmp_path / "sup.db", clock=MarketClock())
    yield database
    database.close()


def spec(fake_bot: Path, db: TradingDatabase, name: str, *extra: str, **kw) -> sup.BotSpec:
    argv = (sys.executable, str(fake_bot), "--name", name, "--db", str(db.path), *extra)
    return sup.BotSpec(name, argv, env={"PROJECT_ROOT": str(PROJECT_ROOT)}, **kw)


FAST = sup.WatchdogPolicy(
    poll_seconds=0.05,
    stale_after_s=1.0,
    startup_grace_s=3.0,
    backoff_initial_s=0.2,
    backoff_max_s=1.0,
    crash_loop_max=3,
    crash_loop_window_s=30.0,
    stop_timeout_s=3.0,
    status_every_s=3600.0,
)


def make(
    db: TradingDatabase, specs: list[sup.BotSpec], policy: sup.WatchdogPolicy = FAST, **kw
) -> sup.Supervisor:
    printed: list[str] = []
    supervisor = sup.Supervisor(db, specs, policy, print_status=printed.append, **kw)
    supervisor.printed = printed  # type: ignore[attr-defined]
    return supervisor


def drive(supervisor: sup.Supervisor, condition: Callable[[], bool], timeout: float, what: str):
    def step() -> bool:
        supervisor.poll_once()
        return condition()

    wait_for(step, timeout, what)


def test_day_trader_waits_until_exit_manager_reconciled(fake_bot, wall_db):
    supervisor = make(
        wall_db,
        [
            spec(
                fake_bot,
                wall_db,
                "exit_manager",
                "--ready-after",
                "1.0",
                critical=True,
                ready_states=frozenset({"RECONCILED"}),
            ),
            spec(fake_bot, wall_db, "day_trader", "--state", "SCANNING"),
        ],
    )
    em, dt = supervisor.bots["exit_manager"], supervisor.bots["day_trader"]
    try:
        supervisor.poll_once()
        assert em.is_alive() and dt.process is None
        drive(
            supervisor,
            lambda: wall_db.get_heartbeats().get("exit_manager", {}).get("state") == "CONNECTING",
            10,
            "exit manager beating CONNECTING",
        )
        supervisor.poll_once()
        assert dt.process is None, "day trader started before the exit manager reconciled"
        drive(supervisor, lambda: dt.process is not None, 10, "day trader start")
        assert wall_db.get_heartbeats()["exit_manager"]["state"] == "RECONCILED"
    finally:
        supervisor.stop_all("test over")


def test_dead_exit_manager_restarts_at_once_day_trader_with_backoff(fake_bot, wall_db):
    supervisor = make(
        wall_db,
        [
            spec(fake_bot, wall_db, "exit_manager", critical=True),
            spec(fake_bot, wall_db, "day_trader"),
        ],
    )
    em, dt = supervisor.bots["exit_manager"], supervisor.bots["day_trader"]
    try:
        drive(supervisor, lambda: em.state == sup.RUNNING and dt.process is not None, 10, "start")
        drive(supervisor, lambda: dt.state == sup.RUNNING, 10, "day trader running")
        em_pid, dt_pid = em.pid, dt.pid
        psutil.Process(em_pid).kill()
        psutil.Process(dt_pid).kill()
        wait_for(lambda: not em.is_alive() and not dt.is_alive(), 5, "both dead")
        supervisor.poll_once()
        # Exit manager: started again in the same pass. Day trader: waits for its backoff.
        assert em.is_alive() and em.pid != em_pid and em.restarts == 1
        assert dt.process is None and dt.next_start_at > time.time()
        drive(supervisor, lambda: dt.is_alive(), 10, "day trader restarted after backoff")
        assert dt.restarts == 1 and dt.pid != dt_pid
    finally:
        supervisor.stop_all("test over")


def test_alive_but_silent_bot_is_killed_and_restarted(fake_bot, wall_db):
    supervisor = make(
        wall_db, [spec(fake_bot, wall_db, "exit_manager", "--hang-after", "0.5", critical=True)]
    )
    em = supervisor.bots["exit_manager"]
    try:
        drive(supervisor, lambda: em.state == sup.RUNNING, 10, "running")
        first = em.process
        drive(supervisor, lambda: em.restarts >= 1, 15, "hung bot restarted")
        assert first is not None and first.poll() is not None, "the hung process was stopped"
    finally:
        supervisor.stop_all("test over")


def test_crash_loop_is_capped_and_reported_not_spun_forever(fake_bot, wall_db):
    supervisor = make(
        wall_db,
        [
            spec(fake_bot, wall_db, "exit_manager", critical=True),
            spec(fake_bot, wall_db, "day_trader", "--die-after", "0.1"),
        ],
    )
    dt = supervisor.bots["day_trader"]
    try:
        drive(supervisor, lambda: dt.state == sup.GAVE_UP, 20, "day trader given up")
        assert dt.restarts == FAST.crash_loop_max
        assert supervisor.fatal is None, "a crash-looping day trader must not stop protection"
        assert supervisor.bots["exit_manager"].is_alive()
        supervisor.maybe_status(force=True)
        assert "GAVE_UP" in supervisor.printed[-1]
    finally:
        supervisor.stop_all("test over")


def test_restart_backoff_starts_again_after_a_healthy_run_and_grows_only_in_a_loop(
    fake_bot, wall_db
):
    """The backoff (2, 4, 8, 16, 30 s) never reset within a simulated day (a reset needed a
    600 s run), so a day trader killed for the fifth time was away for 30 s."""
    policy = replace(FAST, healthy_after_s=0.5, crash_loop_max=50)
    supervisor = make(
        wall_db,
        [
            spec(fake_bot, wall_db, "exit_manager", critical=True),
            spec(fake_bot, wall_db, "day_trader"),
        ],
        policy,
    )
    dt = supervisor.bots["day_trader"]
    failures = []
    try:
        for healthy in (True, True, False, False, True):
            drive(supervisor, lambda: dt.is_alive() and dt.ready_since is not None, 10, "ready")
            if healthy:
                since = dt.ready_since
                drive(supervisor, lambda s=since: dt.ready_seen_at - s >= 0.6, 10, "healthy")
            psutil.Process(dt.pid).kill()
            wait_for(lambda: not dt.is_alive(), 5, "day trader dead")
            supervisor.poll_once()
            failures.append(dt.consecutive_failures)
        # After a healthy run the first backoff again; in a loop it doubles.
        assert failures == [1, 1, 2, 3, 1]
        assert dt.next_start_at - time.time() <= policy.backoff_initial_s
    finally:
        supervisor.stop_all("test over")


def test_day_trader_failing_after_a_healthy_run_is_restarted_in_the_same_pass(fake_bot, wall_db):
    """A day trader killed after a healthy run waited the first backoff step (1 s) before a
    new process, a fifth of the 5 s it has to be trading again; only repeats wait now."""
    policy = replace(
        FAST, healthy_after_s=0.3, backoff_initial_s=5.0, backoff_max_s=30.0, crash_loop_max=50
    )
    supervisor = make(
        wall_db,
        [
            spec(fake_bot, wall_db, "exit_manager", critical=True),
            spec(fake_bot, wall_db, "day_trader"),
        ],
        policy,
    )
    dt = supervisor.bots["day_trader"]
    try:
        drive(supervisor, lambda: dt.is_alive() and dt.ready_since is not None, 10, "ready")
        since = dt.ready_since
        drive(supervisor, lambda: dt.ready_seen_at - since >= 0.4, 10, "healthy")
        first_pid = dt.pid
        psutil.Process(first_pid).kill()
        wait_for(lambda: not dt.is_alive(), 5, "day trader dead")

        supervisor.poll_once()

        assert dt.is_alive() and dt.pid != first_pid and dt.restarts == 1
        # A repeat (not healthy this time) waits the backoff.
        psutil.Process(dt.pid).kill()
        wait_for(lambda: not dt.is_alive(), 5, "day trader dead again")
        supervisor.poll_once()
        assert dt.process is None and dt.next_start_at - time.time() > 4.0
    finally:
        supervisor.stop_all("test over")


def test_crash_loop_limit_is_stated_in_real_and_simulated_time():
    text = sup.crash_loop_limit(sup.WatchdogPolicy(), speed=110.0)
    assert "more than 5 failures of one bot within 600 real s" in text
    assert "at 110x that window is 18h20m simulated" in text
    assert "simulated" not in sup.crash_loop_limit(sup.WatchdogPolicy())


def test_exit_manager_crash_loop_stops_day_trader_and_run_returns_3(fake_bot, wall_db):
    supervisor = make(
        wall_db, [spec(fake_bot, wall_db, "exit_manager", "--die-after", "0.1", critical=True)]
    )
    assert supervisor.run() == 3
    assert supervisor.bots["exit_manager"].state == sup.GAVE_UP


def test_stop_all_stops_day_trader_before_exit_manager(fake_bot, wall_db, tmp_path):
    mark = tmp_path / "marks.txt"
    supervisor = make(
        wall_db,
        [
            spec(fake_bot, wall_db, "exit_manager", "--mark", str(mark), critical=True),
            spec(fake_bot, wall_db, "day_trader", "--mark", str(mark)),
        ],
    )
    drive(supervisor, lambda: supervisor.bots["day_trader"].state == sup.RUNNING, 10, "both up")
    em_pid, dt_pid = supervisor.bots["exit_manager"].pid, supervisor.bots["day_trader"].pid
    supervisor.stop_all("test")
    stops = [line.split() for line in mark.read_text().splitlines() if " stop " in line]
    assert [int(pid) for pid, _, _ in stops] == [dt_pid, em_pid], "both stop cleanly, in order"


# -- the exit manager's hot standby ------------------------------------------------------------
def em_with_standby(
    fake_bot: Path, db: TradingDatabase, *extra: str, standby: tuple[str, ...] = ("--standby",)
) -> sup.BotSpec:
    """A fake exit manager holding the instance lock, kept with a standby waiting on it."""
    return spec(
        fake_bot, db, "exit_manager", "--hold-lock", *extra, critical=True,
        ready_states=frozenset({"RECONCILED"}), standby_args=standby,
    )  # fmt: skip


def marks(path: Path) -> list[tuple[int, str]]:
    """(pid, what) of each mark the fake bots wrote, in order."""
    if not path.exists():
        return []
    return [
        (int(pid), what)
        for pid, what, _ in (line.split() for line in path.read_text().splitlines())
    ]


def test_dead_exit_manager_is_replaced_by_its_standby_counted_as_a_failure_and_a_new_one_waits(
    fake_bot, wall_db, tmp_path, caplog
):
    """A killed exit manager's successor was a new process that imported, connected and
    reconciled first (0.8 s without a stop): now its standby, already waiting on the lock,
    takes over and is promoted in the same pass; the failure counts as a restart does."""
    mark = tmp_path / "marks.txt"
    lock = sup.SupervisorLock(sup.lock_path_for(wall_db.path))
    lock.acquire()
    supervisor = make(
        wall_db,
        [em_with_standby(fake_bot, wall_db, "--mark", str(mark), "--ready-after", "0.5"),
         spec(fake_bot, wall_db, "day_trader")],
        lock=lock,
    )  # fmt: skip
    em, standby = supervisor.bots["exit_manager"], supervisor.standbys["exit_manager"].bot
    try:
        drive(supervisor, lambda: (standby.pid, "waiting") in marks(mark), 15, "standby waiting")
        assert standby.pid != em.pid
        published = sup.read_lock(lock.path)["bots"]
        assert published["exit_manager standby"]["pid"] == standby.pid
        supervisor.maybe_status(force=True)
        row = next(line for line in supervisor.printed[-1].splitlines() if "standby" in line)
        assert "WAITING" in row and str(standby.pid) in row
        # --status from the lock file: the standby's row under its exit manager's, as above.
        rows = [
            line
            for line in sup.status_from_files(wall_db, lock.path).splitlines()
            if "exit_manager" in line or "day_trader" in line
        ]
        assert ["standby" in r for r in rows] == [False, True, False], rows
        first, waiting = em.pid, standby.pid

        psutil.Process(first).kill()
        wait_for(lambda: (waiting, "took_over") in marks(mark), 5, "the kernel hands it the lock")
        caplog.clear()
        supervisor.poll_once()

        assert em.pid == waiting and em.restarts == 1 and em.consecutive_failures == 1
        said = [r.getMessage() for r in caplog.records if r.name == "supervisor"]
        assert said == ["bot_failed", "bot_restarting", "standby_promoted"], "a restart's events"
        assert em.restart_times[-1] == pytest.approx(time.time(), abs=5)
        assert standby.process is None, "no new standby before the promoted one is ready"
        assert sup.read_lock(lock.path)["bots"]["exit_manager"]["pid"] == waiting
        drive(supervisor, lambda: standby.pid is not None, 10, "a new standby")
        assert standby.pid not in (first, waiting)
        assert supervisor.is_ready(em, wall_db.get_heartbeats(), time.time())
    finally:
        supervisor.stop_all("test over")
        lock.release()


def test_without_a_live_standby_a_dead_exit_manager_is_restarted_as_before(fake_bot, wall_db):
    supervisor = make(wall_db, [em_with_standby(fake_bot, wall_db)])
    em, standby = supervisor.bots["exit_manager"], supervisor.standbys["exit_manager"].bot
    try:
        drive(supervisor, lambda: standby.is_alive(), 15, "standby started")
        first, waiting = em.pid, standby.pid
        psutil.Process(waiting).kill()
        psutil.Process(first).kill()
        wait_for(lambda: not em.is_alive() and not standby.is_alive(), 5, "both dead")
        supervisor.poll_once()
        assert em.is_alive() and em.pid not in (first, waiting) and em.restarts == 1
    finally:
        supervisor.stop_all("test over")


def test_a_stopped_standby_is_not_promoted_it_is_killed_and_a_new_exit_manager_started(
    fake_bot, wall_db, tmp_path
):
    """A SIGSTOPped standby cannot take the lock: promoted, it would protect nothing until
    the startup grace ran out."""
    mark = tmp_path / "marks.txt"
    supervisor = make(wall_db, [em_with_standby(fake_bot, wall_db, "--mark", str(mark))])
    em, standby = supervisor.bots["exit_manager"], supervisor.standbys["exit_manager"].bot
    try:
        drive(supervisor, lambda: (standby.pid, "waiting") in marks(mark), 15, "standby waiting")
        first, stopped = em.pid, standby.process
        stopped.suspend()
        psutil.Process(first).kill()
        wait_for(lambda: not em.is_alive(), 5, "exit manager dead")
        started = time.monotonic()
        supervisor.poll_once()
        assert time.monotonic() - started < FAST.stop_timeout_s, "waited on the stopped one"
        assert em.is_alive() and em.pid not in (first, stopped.pid) and em.restarts == 1
        assert stopped.poll() is not None, "the stopped standby was killed"
    finally:
        supervisor.stop_all("test over")


def test_a_standby_dying_while_waiting_is_restarted_with_backoff_never_failing_the_exit_manager(
    fake_bot, wall_db
):
    supervisor = make(
        wall_db, [em_with_standby(fake_bot, wall_db, standby=("--standby", "--standby-dies"))]
    )
    em, standby = supervisor.bots["exit_manager"], supervisor.standbys["exit_manager"].bot
    try:
        drive(supervisor, lambda: standby.state == sup.GAVE_UP, 20, "standby given up")
        assert standby.consecutive_failures == FAST.crash_loop_max + 1
        starts = list(standby.restart_times)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps == sorted(gaps) and gaps[-1] >= 2 * FAST.backoff_initial_s, gaps
        assert supervisor.fatal is None and em.is_alive()
        assert em.restarts == 0 and em.consecutive_failures == 0
        first = em.pid
        psutil.Process(first).kill()
        wait_for(lambda: not em.is_alive(), 5, "exit manager dead")
        supervisor.poll_once()  # no standby any more: restarted as before
        assert em.is_alive() and em.pid != first and em.restarts == 1
        assert standby.process is None
    finally:
        supervisor.stop_all("test over")


def test_stop_all_stops_the_standby_first_so_it_never_takes_over(fake_bot, wall_db, tmp_path):
    mark = tmp_path / "marks.txt"
    supervisor = make(
        wall_db,
        [em_with_standby(fake_bot, wall_db, "--mark", str(mark)),
         spec(fake_bot, wall_db, "day_trader", "--mark", str(mark))],
    )  # fmt: skip
    standby = supervisor.standbys["exit_manager"].bot
    drive(supervisor, lambda: (standby.pid, "waiting") in marks(mark), 15, "standby waiting")
    pids = {
        supervisor.bots["exit_manager"].pid: "em",
        supervisor.bots["day_trader"].pid: "dt",
        standby.pid: "standby",
    }
    supervisor.stop_all("test")
    done = [(pids[pid], what) for pid, what in marks(mark) if what in ("stop", "took_over")]
    assert done == [("standby", "stop"), ("dt", "stop"), ("em", "stop")]


def test_giving_up_on_a_hung_exit_manager_stops_its_standby_before_the_hung_one(
    fake_bot, wall_db, tmp_path
):
    mark, hang = tmp_path / "marks.txt", tmp_path / "hang"
    supervisor = make(
        wall_db,
        [em_with_standby(fake_bot, wall_db, "--mark", str(mark), "--hang-file", str(hang))],
        replace(FAST, crash_loop_max=0),
    )
    em, standby = supervisor.bots["exit_manager"], supervisor.standbys["exit_manager"].bot
    try:
        drive(supervisor, lambda: (standby.pid, "waiting") in marks(mark), 15, "standby waiting")
        pids = {em.pid: "em", standby.pid: "standby"}
        hang.touch()
        drive(supervisor, lambda: supervisor.fatal is not None, 15, "the give-up")
        done = [(pids[pid], what) for pid, what in marks(mark) if what in ("stop", "took_over")]
        assert done == [("standby", "stop"), ("em", "stop")]
        assert not any(psutil.pid_exists(pid) for pid in pids)
    finally:
        supervisor.stop_all("test over")


def test_exit_manager_killed_until_the_give_up_counts_each_promotion_and_leaves_nothing_running(
    fake_bot, wall_db, tmp_path
):
    mark = tmp_path / "marks.txt"
    supervisor = make(
        wall_db, [em_with_standby(fake_bot, wall_db, "--mark", str(mark), "--die-after", "0.8")]
    )
    assert supervisor.run() == 3
    assert supervisor.bots["exit_manager"].state == sup.GAVE_UP
    took_over = [pid for pid, what in marks(mark) if what == "took_over"]
    assert took_over, "no standby was promoted"
    assert len(supervisor.bots["exit_manager"].restart_times) == FAST.crash_loop_max + 1
    assert not any(psutil.pid_exists(pid) for pid, _ in marks(mark))


def test_orphans_of_a_dead_supervisor_stop_the_standby_first(tmp_path):
    """An orphan exit manager stopped before its standby hands the standby the lock."""
    stops = tmp_path / "stops.txt"
    script = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        f"    open({str(stops)!r}, 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    procs = {}
    for name in ("exit_manager", "exit_manager standby"):
        procs[name] = psutil.Popen(
            [sys.executable, "-c", script, name], stdout=subprocess.PIPE, text=True
        )
        assert procs[name].stdout.readline().strip() == "ready"
    try:
        records = [
            {
                "name": "exit_manager",
                "pid": p.pid,
                "create_time": p.create_time(),
                **({"standby": True} if "standby" in n else {}),
            }
            for n, p in procs.items()
        ]
        sup.stop_orphans(records, timeout=5)
        assert stops.read_text().splitlines() == ["exit_manager standby", "exit_manager"]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()


def test_the_exit_manager_is_kept_with_a_standby_its_program_accepts():
    import exit_manager

    em, dt = sup.bot_specs(0.5)
    assert em.standby_args == ("--standby",) and dt.standby_args == ()
    args = exit_manager.build_parser().parse_args([*em.argv[2:], *em.standby_args])
    assert args.standby is True


def test_sigterm_stops_children_cleanly(fake_bot, tmp_path):
    """A real supervisor process on fake bots: SIGTERM stops both children, removes the lock."""
    db_path = tmp_path / "proc.db"
    runner = tmp_path / "run_sup.py"
    runner.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(PROJECT_ROOT)!r})
            import supervision as sup
            from observability import get_database
            db = get_database({str(db_path)!r})
            lock = sup.SupervisorLock(sup.lock_path_for(db.path))
            lock.acquire()
            env = {{"PROJECT_ROOT": {str(PROJECT_ROOT)!r}}}
            argv = lambda n: (sys.executable, {str(fake_bot)!r}, "--name", n, "--db", str(db.path))
            specs = [sup.BotSpec("exit_manager", argv("exit_manager"), critical=True, env=env),
                     sup.BotSpec("day_trader", argv("day_trader"), env=env)]
            s = sup.Supervisor(db, specs, sup.WatchdogPolicy(poll_seconds=0.1), lock=lock,
                               backup_dir={str(tmp_path / "archive")!r})
            sup.install_signal_handlers(s)
            try:
                sys.exit(s.run())
            finally:
                lock.release()
            """
        )
    )
    out_file = tmp_path / "supervisor.out"
    with out_file.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(runner)], cwd=PROJECT_ROOT, stdout=out)
    lock_file = sup.lock_path_for(db_path.resolve())
    children: list[int] = []

    def both_running() -> bool:
        payload = sup.read_lock(lock_file) or {}
        bots = payload.get("bots") or {}
        if all(bots.get(n, {}).get("state") == sup.RUNNING for n in ("exit_manager", "day_trader")):
            children[:] = [bots[n]["pid"] for n in ("exit_manager", "day_trader")]
            return True
        return False

    try:
        wait_for(both_running, 30, "both fake bots running under the supervisor")
        status = sup.status_from_files(TradingDatabase(db_path, clock=MarketClock()), lock_file)
        assert "RUNNING" in status and str(children[0]) in status
        # SIGUSR1: a status block on demand (one is printed at start; the next in 5 minutes).
        wait_for(lambda: out_file.read_text().count("supervisor status") == 1, 10, "first status")
        proc.send_signal(signal.SIGUSR1)
        wait_for(
            lambda: out_file.read_text().count("supervisor status") == 2, 10, "status on SIGUSR1"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(psutil.pid_exists(pid) for pid in children)
        assert not lock_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_second_supervisor_refuses_while_first_lives(tmp_path):
    lock_file = tmp_path / "db.supervisor.lock"
    first = sup.SupervisorLock(lock_file)
    assert first.acquire() == []
    with pytest.raises(sup.LockHeld, match=str(os.getpid())):
        sup.SupervisorLock(lock_file).acquire()
    first.release()
    assert not lock_file.exists()


def test_stale_lock_of_dead_process_is_taken_over_and_orphans_returned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / "db.supervisor.lock"
    orphan = {"name": "exit_manager", "pid": 999_999_999, "create_time": 1.0}
    lock_file.write_text(
        f'{{"pid": {dead.pid}, "create_time": 1.0, "bots": {{"exit_manager": '
        f'{{"name": "exit_manager", "pid": {orphan["pid"]}, "create_time": 1.0}}}}}}'
    )
    lock = sup.SupervisorLock(lock_file)
    orphans = lock.acquire()
    assert [o["pid"] for o in orphans] == [orphan["pid"]]
    assert sup.read_lock(lock_file)["pid"] == os.getpid()
    sup.stop_orphans(orphans)  # a pid that does not exist is skipped quietly
    lock.release()


def test_reused_pid_in_lock_is_not_mistaken_for_a_live_supervisor(tmp_path):
    """Our own pid with another start time: the old holder is dead, its pid reused."""
    lock_file = tmp_path / "db.supervisor.lock"
    lock_file.write_text(f'{{"pid": {os.getpid()}, "create_time": 12345.0, "bots": {{}}}}')
    lock = sup.SupervisorLock(lock_file)
    lock.acquire()
    assert sup.read_lock(lock_file)["create_time"] != 12345.0
    lock.release()


def test_orphan_bot_of_dead_supervisor_is_stopped(tmp_path):
    orphan = psutil.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sup.stop_orphans(
            [{"name": "exit_manager", "pid": orphan.pid, "create_time": orphan.create_time()}],
            timeout=5,
        )
        assert not psutil.pid_exists(orphan.pid)
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_daily_reset_clears_old_closed_rows_and_backs_up_once_per_day(tmp_path):
    source = ManualTimeSource(datetime(2026, 11, 24, 15, 0, tzinfo=NEW_YORK))
    db = TradingDatabase(tmp_path / "t.db", clock=MarketClock(source))
    db.add_active_position("AAPL", 10, 100.0, 101.8, 99.1)
    db.remove_active_position("AAPL", 101.8, "PROFIT_TARGET")
    supervisor = make(db, [], backup_dir=tmp_path / "archive")
    assert supervisor.daily_reset_if_new_day() is True  # first look at 11-24
    assert len(db.get_closed_today()) == 1, "a mid-day restart must keep today's closed rows"
    assert (tmp_path / "archive" / "t_2026-11-24.db").exists()
    assert supervisor.daily_reset_if_new_day() is False

    source.set(datetime(2026, 11, 25, 8, 0, tzinfo=NEW_YORK))
    assert supervisor.daily_reset_if_new_day() is True
    assert db.was_closed_today("AAPL") is False
    source.set(datetime(2026, 11, 24, 15, 0, tzinfo=NEW_YORK))
    assert db.get_closed_today() == [], "yesterday's closed row was cleared"
    source.set(datetime(2026, 11, 25, 9, 0, tzinfo=NEW_YORK))
    assert (tmp_path / "archive" / "t_2026-11-25.db").exists()
    # A new supervisor the same day does not redo it (the date is kept in the database).
    assert make(db, [], backup_dir=tmp_path / "archive").daily_reset_if_new_day() is False
    # Thanksgiving: not a trading day, nothing happens.
    source.set(datetime(2026, 11, 26, 9, 0, tzinfo=NEW_YORK))
    assert supervisor.daily_reset_if_new_day() is False


def test_status_block_shows_bots_positions_and_pnl_net_of_commissions(db):
    """Bug pinned: the block said "+1.80% ($+18.00)" gross while the day report's headline
    was net; now both say the day's P&L net of commissions, in the same words."""
    db.add_active_position("MSFT", 5, 400.0, 407.2, 396.4)
    db.add_active_position("AAPL", 10, 100.0, 101.8, 99.1)
    db.record_trade("AAPL", "BUY", 10, 100.0, "day_trader", commission=1.0, exec_id="e1")
    db.record_trade("AAPL", "SELL", 10, 101.8, "exit_manager", commission=1.0, exec_id="e2")
    db.remove_active_position("AAPL", 101.8, "PROFIT_TARGET")
    me = psutil.Process()
    bots = {
        "exit_manager": {
            "pid": me.pid,
            "create_time": me.create_time(),
            "state": sup.RUNNING,
            "started_at": time.time() - 125,
            "restarts": 2,
        },
        "day_trader": {"pid": None, "state": sup.STOPPED, "restarts": 0},
    }
    text = sup.render_status(db, bots, time.time())
    assert "exit_manager" in text and "RUNNING" in text and str(me.pid) in text
    assert "2m0" in text  # uptime
    assert "STOPPED" in text
    assert "active positions: 1" in text and "MSFT" in text
    net = "$+16.00 net (+1.60% of $1,000 used; gross $+18.00, commissions $2.00)"
    assert f"closed today: 1   P&L today: {net}" in text
    assert "+1.80%" not in text  # the price move alone is never shown as the P&L
    headline = render_report(build_day_report(db, db.clock.today_str()))
    assert f"P&L: {net}" in headline


def test_status_block_says_entries_are_off_on_delayed_data_and_how_to_turn_them_on(db):
    """A delayed-data-only account: the day trader's heartbeat says why entries are off and
    every status block shows it (a stopped bot's last words are not shown as current)."""
    from bots.day_feeds import delayed_data_notice

    notice = delayed_data_notice([3, 3], allow_delayed=False)
    db.beat("day_trader", "regular", notice)
    db.beat("exit_manager", "STOPPED", "clean shutdown; server-side protection left at IB")
    me = psutil.Process()
    running = {"pid": me.pid, "create_time": me.create_time(), "state": sup.RUNNING}
    bots = {"exit_manager": {"pid": None, "state": sup.STOPPED}, "day_trader": running}

    text = sup.render_status(db, bots, time.time())

    assert f"day_trader: {notice}" in " ".join(text.split())
    assert "entries off: delayed market data only (set ALLOW_DELAYED_DATA=true" in text
    assert "clean shutdown" not in text


def test_status_block_shows_an_entry_halt_and_how_to_lift_it(db):
    assert "HALTED" not in sup.render_status(db, {}, time.time())
    db.halt_entries("MANUAL by liquidate_all at 2026-11-25 10:00:00 New York")
    text = sup.render_status(db, {}, time.time())
    assert "NEW ENTRIES HALTED: MANUAL by liquidate_all at 2026-11-25 10:00:00 New York" in text
    assert "lift with: python liquidate_all.py --resume" in text


def test_judge_heartbeat_ignores_beats_from_an_earlier_process():
    policy = sup.WatchdogPolicy(stale_after_s=10, startup_grace_s=30)
    old = {"pid": 111, "beat_at": 1000.0, "state": "RECONCILED"}
    verdict = sup.judge_heartbeat(old, {222}, started_at=1005.0, now=1006.0, policy=policy)
    assert verdict.state is None and verdict.fresh  # in grace, not "ready" from the old beat
    late = sup.judge_heartbeat(old, {222}, started_at=1005.0, now=1040.0, policy=policy)
    assert not late.fresh
    own = {"pid": 222, "beat_at": 1010.0, "state": "RECONCILED"}
    assert sup.judge_heartbeat(own, {222}, 1005.0, 1015.0, policy).fresh
    assert not sup.judge_heartbeat(own, {222}, 1005.0, 1021.0, policy).fresh


def _status_cli(tmp_path: Path, db_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "supervisor.py", "--status", "--db", str(db_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LOG_DIR": str(tmp_path / "logs")},
    )


def test_status_cli_without_supervisor(tmp_path):
    db_path = tmp_path / "x.db"
    TradingDatabase(db_path).schema_version()
    out = _status_cli(tmp_path, db_path)
    assert out.returncode == 0, out.stderr
    assert "no supervisor running" in out.stdout and "active positions: 0" in out.stdout
    assert out.stderr == ""


# -- paper / live -----------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "mode", "port"), COMBOS, ids=map(combo_id, COMBOS))
def test_start_follows_the_one_paper_live_rule(flag, mode, port, tmp_path, monkeypatch, capsys):
    """Bug pinned: supervisor --live forced TRADING_MODE=live onto both bots, so --live alone
    traded real money."""
    set_environment(monkeypatch, tmp_path, mode, port)
    args = ["--live"] if flag else []
    refusal = rule_refusal(flag, mode, port)
    if refusal is None:
        assert (
            supervisor_cli.settings_from_args(
                supervisor_cli.build_parser().parse_args(args)
            ).is_live
            is flag
        )
        return
    monkeypatch.setattr(
        supervisor_cli, "run_supervisor", lambda *_: 99
    )  # past the checks: bots start
    assert supervisor_cli.main(args) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {refusal}"]


def test_simulated_day_is_always_paper(tmp_path, monkeypatch, capsys):
    set_environment(monkeypatch, tmp_path, "live", 4001)
    monkeypatch.setattr("sim_day.run", lambda *_: 99)  # past the checks: the day starts
    assert supervisor_cli.main(["--sim", "--live"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --sim always trades paper on the simulated gateway: drop --live"
    ]


@pytest.mark.parametrize(("flag", "mode", "port"), [(False, None, 4002), (True, "live", 4001)])
def test_both_bots_are_started_in_the_supervisors_mode(flag, mode, port, tmp_path, monkeypatch):
    """Each bot decides paper/live from its own command line and environment: what the
    supervisor hands them must make both decide its mode (supervisor --live -> bots --live)."""
    import day_trader
    import exit_manager

    set_environment(monkeypatch, tmp_path, mode, port)
    args = supervisor_cli.build_parser().parse_args(
        ["--db", str(tmp_path / "t.db"), *(["--live"] * flag)]
    )
    started: list[sup.BotSpec] = []

    class Started:
        def __init__(self, db, specs, *_, **__):
            started.extend(specs)
            self.stop_requested = False

        def run(self):
            return 0

    monkeypatch.setattr(supervisor_cli, "Supervisor", Started)
    monkeypatch.setattr(supervisor_cli, "install_signal_handlers", lambda _: None)
    assert supervisor_cli.run_supervisor(args, supervisor_cli.settings_from_args(args)) == 0

    programs = {"exit_manager.py": exit_manager, "day_trader.py": day_trader}
    assert sorted(Path(spec.argv[1]).name for spec in started) == sorted(programs)
    monkeypatch.delenv("TRADING_MODE", raising=False)  # the bot sees only what it is given
    for spec in started:
        for key, value in (spec.env or {}).items():
            monkeypatch.setenv(key, value)
        program = programs[Path(spec.argv[1]).name]
        bot_args = program.build_parser().parse_args(spec.argv[2:])
        assert program.settings_from_args(bot_args).is_live is flag, spec


def test_status_cli_refuses_a_missing_database_in_one_line_and_creates_none(tmp_path):
    missing = tmp_path / "nonexist.db"
    out = _status_cli(tmp_path, missing)
    assert out.returncode == 2
    assert out.stderr == (
        f"error: database {missing} does not exist: pass --db with the path of an existing "
        "trading_history.db (or set DATABASE_PATH), or start the bots once to create it\n"
    )
    assert not missing.exists() and not list(tmp_path.glob("nonexist.db*"))


# The watchdog's own modules: the supervisor must stay small while trading (it must never die).
HEAVY_MODULES = (
    "matplotlib",
    "pandas",
    "numpy",
    "ib_async",
    "langchain_core",
    "exchange_calendars",
)


def test_supervisor_and_its_status_block_load_no_plotting_data_or_broker_stack(tmp_path):
    """The supervisor imported the reporting and plotting stack (pandas via the simulated
    market, the broker library via the exit rules) and held 172 MiB: importing it, and
    rendering a status block and asking the calendar as it does while trading, must load none
    of them."""
    MarketClock().is_trading_day()  # the calendar's cache file, when this checkout has none
    probe = textwrap.dedent(
        f"""
        import sys, time
        import supervisor, sim_day, supervision
        from observability import get_database
        db = get_database({str(tmp_path / "lean.db")!r}, if_missing="create")
        supervision.render_status(db, {{}}, time.time())
        db.clock.is_trading_day(); db.clock.session(); db.clock.previous_session()
        print(",".join(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"loaded by the supervisor: {done.stdout.strip()}"


FAKE_IMPROVE = textwrap.dedent(
    """
    import sys
    with open(sys.argv[1], "a") as f:
        f.write(" ".join(sys.argv[2:]) + "\\n")
    """
)


def test_improvement_cycle_runs_once_after_a_flat_close_and_never_in_trading_hours(tmp_path):
    script = tmp_path / "fake_improve.py"
    script.write_text(FAKE_IMPROVE)
    mark = tmp_path / "improve.mark"
    cycle = sup.BotSpec("improve", (sys.executable, str(script), str(mark), "--no-progress"))
    source = ManualTimeSource(datetime(2026, 11, 24, 9, 0, tzinfo=NEW_YORK))
    db = TradingDatabase(tmp_path / "t.db", clock=MarketClock(source))
    supervisor = make(db, [], improve=cycle)

    def runs_at(hour: int, minute: int, day: int = 24) -> bool:
        source.set(datetime(2026, 11, day, hour, minute, tzinfo=NEW_YORK))
        return supervisor.improve_after_close_if_due()

    assert not runs_at(9, 0), "before the open"
    assert not runs_at(12, 0), "trading hours"
    assert not runs_at(15, 59)
    assert not runs_at(16, 2), "the close is only minutes old"
    db.add_active_position("AAPL", 10, 100.0, 101.8, 99.1)
    assert not runs_at(16, 10), "a position is still held: the day is not flat"
    db.remove_active_position("AAPL", 101.0, "EOD")
    assert runs_at(16, 11)
    wait_for(lambda: mark.exists() and mark.read_text().strip() != "", 10, "the cycle's child")
    assert mark.read_text() == "--no-progress --date 2026-11-24\n"
    assert not runs_at(16, 30) and not runs_at(20, 0), "once a day"
    assert not make(db, [], improve=cycle).improve_after_close_if_due(), "a restart: still once"
    assert not runs_at(17, 0, day=26), "Thanksgiving: no session"
    assert not runs_at(12, 30, day=27), "the half day is still trading"
    assert runs_at(13, 10, day=27), "after the half day's 13:00 close"
    wait_for(lambda: mark.read_text().count("\n") == 2, 10, "the second day's cycle")
    assert mark.read_text().splitlines()[1] == "--no-progress --date 2026-11-27"
    supervisor.stop_all("test over")


def test_improvement_cycle_turned_off_never_runs(tmp_path):
    source = ManualTimeSource(datetime(2026, 11, 24, 17, 0, tzinfo=NEW_YORK))
    db = TradingDatabase(tmp_path / "t.db", clock=MarketClock(source))
    assert make(db, [], improve=None).improve_after_close_if_due() is False
    assert db.get_flag(sup.IMPROVE_FLAG) is None
