"""The dashboard as the supervisor's child: its command line from supervisor.py's flags, a
dead child restarted, everything stopped with the supervisor, bad flags in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from sim_support import wait_for

from companion import Companion, dashboard_argv
from core.settings import PROJECT_ROOT
from supervisor import build_parser


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


def test_dashboard_command_line_follows_the_supervisors_dashboard_flags(tmp_path: Path):
    db, lock, logs = tmp_path / "t.db", tmp_path / "t.db.supervisor.lock", tmp_path / "logs"

    served = dashboard_argv(_args("--dashboard-port", "8800"), db, lock, logs, alerts=False)
    alerts_only = dashboard_argv(_args("--no-dashboard"), db, lock, logs, alerts=True)
    nothing = dashboard_argv(_args("--no-dashboard"), db, lock, logs, alerts=False)

    assert served is not None and served[1] == str(PROJECT_ROOT / "dashboard.py")
    assert served[served.index("--port") + 1] == "8800"
    assert served[served.index("--host") + 1] == "127.0.0.1"
    assert served[served.index("--lock-file") + 1] == str(lock)
    assert alerts_only is not None and alerts_only[-1] == "--no-web"
    assert nothing is None


def test_a_dead_dashboard_is_started_again_and_stopped_with_the_supervisor():
    child = Companion("dashboard", [sys.executable, "-c", "import time; time.sleep(120)"]).start()
    first = child.process.pid if child.process else 0
    try:
        os.kill(first, signal.SIGKILL)
        second = wait_for(
            lambda: child.process.pid if child.process and child.process.pid != first else None,
            10, "the dashboard started again",
        )  # fmt: skip
        assert child.failures == 1
    finally:
        child.stop()
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == psutil.STATUS_ZOMBIE


def test_a_bad_dashboard_flag_is_one_line():
    done = subprocess.run(
        [sys.executable, "supervisor.py", "--dashboard-port", "70000"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2
    assert "argument --dashboard-port: '70000' is outside [1, 65535]" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_dashboard_port_already_taken_is_reported_and_no_dashboard_started(tmp_path, caplog):
    import logging
    import socket

    from companion import start_dashboard

    caplog.set_level(logging.ERROR)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = _args("--dashboard-port", str(port))
        child = start_dashboard(args, tmp_path / "t.db", tmp_path / "lock", tmp_path, {},
                                alerts=False)  # fmt: skip

    assert child is None
    assert [getattr(r, "event", None) for r in caplog.records] == ["dashboard_port_in_use"]
