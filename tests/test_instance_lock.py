"""The one-instance lock beside the database (core/instance_lock.py), with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from core.instance_lock import InstanceLock, lock_path_for
from core.settings import PROJECT_ROOT

HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from core.instance_lock import InstanceLock\n"
    "assert InstanceLock(Path(sys.argv[1])).try_acquire()\n"
    "print('holding', flush=True)\n"
    "time.sleep(60)\n"
)


def hold(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_lock_is_named_after_the_database_and_its_owner(tmp_path: Path) -> None:
    assert lock_path_for(tmp_path / "t.db", "exit_manager") == tmp_path / "t.db.exit_manager.lock"


def test_a_refused_try_keeps_the_holders_pid_and_a_release_lets_the_next_one_in(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db.exit_manager.lock"
    holder = hold(path)
    try:
        second = InstanceLock(path)
        assert second.try_acquire() is False
        assert second.holder_pid() == holder.pid, "a refused try must not erase the record"
    finally:
        holder.kill()
        holder.wait(10)
    assert second.try_acquire() is True, "the kernel freed the dead holder's lock"
    assert second.holder_pid() == os.getpid()
    second.release()
    assert InstanceLock(path).try_acquire() is True


def test_a_waiter_holds_the_lock_once_the_holder_is_killed_and_not_before(tmp_path: Path) -> None:
    path = tmp_path / "t.db.exit_manager.lock"
    holder = hold(path)
    waiter = InstanceLock(path)
    took = threading.Event()
    thread = threading.Thread(target=lambda: waiter.wait() and took.set(), daemon=True)
    thread.start()
    try:
        assert not took.wait(0.3), "took the lock while its holder lived"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert took.wait(5), "the holder's death did not free the lock"
        assert waiter.held and waiter.holder_pid() == os.getpid()
    finally:
        if holder.poll() is None:
            holder.kill()
        waiter.release()
