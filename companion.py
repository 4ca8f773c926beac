"""The dashboard (and the alerts) as the supervisor's child process, kept apart from trading.

The supervisor must stay small and never wait on a web client or an alert channel, so the
dashboard runs as `dashboard.py` in a process of its own, restarted when it dies (with a
growing pause) and stopped with the supervisor. Only the standard library and psutil here:
this module loads into the supervisor.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from core import cli
from core.logs import get_logger
from core.settings import PROJECT_ROOT

log = get_logger("supervisor")
DEFAULT_DASHBOARD_PORT = 8765  # dashboard.py's default too
RESTART_MAX_S = 60.0


def add_dashboard_args(parser: argparse.ArgumentParser) -> None:
    """supervisor.py's dashboard flags (validated while parsing: a bad one is one line)."""
    group = parser.add_argument_group("dashboard")
    group.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard")
    group.add_argument(
        "--dashboard-port",
        type=cli.port,
        default=DEFAULT_DASHBOARD_PORT,
        help=f"dashboard port, 1-65535 (default {DEFAULT_DASHBOARD_PORT})",
    )
    group.add_argument(
        "--dashboard-host",
        type=cli.host,
        default="127.0.0.1",
        help="dashboard address (default 127.0.0.1; another needs DASHBOARD_TOKEN)",
    )


def dashboard_argv(
    args: argparse.Namespace, db_path: Path, lock_file: Path, log_dir: Path, alerts: bool
) -> list[str] | None:
    """The dashboard's command line for supervisor.py's flags; None when nothing is to run
    (--no-dashboard, and `alerts` false: no ALERT_URLS)."""
    argv = [
        sys.executable,
        str(PROJECT_ROOT / "dashboard.py"),
        "--db",
        str(db_path),
        "--lock-file",
        str(lock_file),
        "--log-dir",
        str(log_dir),
        "--host",
        args.dashboard_host,
        "--port",
        str(args.dashboard_port),
        "--parent-pid",
        str(os.getpid()),
    ]
    if args.no_dashboard:
        if not alerts:
            return None
        argv.append("--no-web")
    return argv


def port_free(host: str, port: int) -> bool:
    """True when `host:port` can be bound now (the dashboard would get it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Companion:
    """One child process the supervisor keeps running (not a bot: no heartbeat, no order)."""

    name: str
    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    output: Path | None = None  # None: the supervisor's console
    process: psutil.Popen | None = None
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _start(self) -> None:
        kwargs: dict[str, object] = {"cwd": str(PROJECT_ROOT), "env": {**os.environ, **self.env}}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
        out = None
        if self.output is not None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            out = self.output.open("ab")
            kwargs.update(stdout=out, stderr=subprocess.STDOUT)
        try:
            self.process = psutil.Popen(self.argv, **kwargs)
        finally:
            if out is not None:
                out.close()
        log.info("companion_started", child=self.name, pid=self.process.pid)

    def start(self) -> Companion:
        self._start()
        self._thread = threading.Thread(target=self._watch, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            if self.process is None or self.process.poll() is None:
                continue
            code = self.process.poll()
            self.failures += 1
            pause = min(RESTART_MAX_S, 2.0 ** (self.failures - 1))
            log.error("companion_exited", child=self.name, exit_code=code, restart_in_s=pause)
            if self._stop.wait(pause):
                return
            self._start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.info("companion_stopped", child=self.name, pid=process.pid)


def start_dashboard(
    args: argparse.Namespace,
    db_path: Path,
    lock_file: Path,
    log_dir: Path,
    env: Mapping[str, str],
    *,
    alerts: bool,
    output: Path | None = None,
) -> Companion | None:
    """The dashboard child for supervisor.py's flags, started; None when none is wanted."""
    argv = dashboard_argv(args, db_path, lock_file, log_dir, alerts)
    if argv is None:
        return None
    if not args.no_dashboard and not port_free(args.dashboard_host, args.dashboard_port):
        # Another program (or another run's dashboard) has it: say so rather than retry.
        log.error(
            "dashboard_port_in_use",
            host=args.dashboard_host,
            port=args.dashboard_port,
            action="pass --dashboard-port with a free port, or --no-dashboard",
        )
        return None
    return Companion("dashboard", argv, env, output).start()
