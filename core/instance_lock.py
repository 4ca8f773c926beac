"""One running instance of a program per database: an exclusive OS lock on a file beside it.

The kernel releases the lock when its holder's process ends, however it ends (kill -9
included), so a process waiting for it (a standby exit manager) holds it the moment the
holder is gone. POSIX: fcntl.flock; Windows: msvcrt.locking on one byte past the pid record.
The file is never deleted (a deleted lock file lets two processes lock two different files);
it holds the last holder's pid, for messages only.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

if os.name == "nt":
    import msvcrt
else:
    import fcntl

# Windows locks byte ranges that no other process may then read: lock one far past the pid.
_WINDOWS_LOCK_OFFSET = 1 << 20
WINDOWS_POLL_S = 0.01  # msvcrt cannot block on a lock without a 10 s timeout: poll instead


def lock_path_for(database_path: Path, owner: str) -> Path:
    """The lock of `owner` (a program's name) beside the database: `<db>.<owner>.lock`."""
    return database_path.with_name(f"{database_path.name}.{owner}.lock")


class InstanceLock:
    """An exclusive lock on `path`, held until `release()` or the holder's death."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # No truncation here: the file holds the holder's pid until we hold the lock.
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd

    def try_acquire(self) -> bool:
        """Take the lock if free (then record our pid); False when another process holds it.

        Raises OSError when the file cannot be created or opened."""
        fd = self._open()
        try:
            if os.name == "nt":
                os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError on POSIX, PermissionError on Windows
            os.close(fd)
            self._fd = None
            return False
        self._record_pid(fd)
        return True

    def wait(self, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Block until we hold the lock (True) or `stopping()` says to give up (False).

        POSIX: a blocking flock, woken by the kernel when the holder releases it or dies (a
        signal handler that raises interrupts it). Windows: a try every WINDOWS_POLL_S."""
        if os.name == "nt":
            while not stopping():
                if self.try_acquire():
                    return True
                time.sleep(WINDOWS_POLL_S)
            return False
        fd = self._open()
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._record_pid(fd)
        return True

    def _record_pid(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())

    def holder_pid(self) -> int | None:
        """The pid the last holder recorded (None: none recorded yet, or unreadable)."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.path.read_bytes()[:32].split()[0])
        return None

    def release(self) -> None:
        """Let the lock go (the kernel does it too when this process ends)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if os.name == "nt":
                os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)
