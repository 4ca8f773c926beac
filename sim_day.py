"""`python supervisor.py --sim`: one whole simulated trading day, start to report.

The project's simulated gateway (`python -m ibsim`) runs on a free port with a seeded market
and an accelerated clock published in a clock file; the supervisor runs the exit manager and
the day trader against it exactly as in production, only with IB_PORT, CLOCK_FILE and a
sim-specific DATABASE_PATH (and logs, archive, kill switch) under `sim_runs/<date>_<seed>/`.
Once the simulated time passes the close + a few minutes, the bots are stopped and the day
report (trades, win rate, P&L, max drawdown) is printed and a P&L chart written.
`sim.json` in the run folder tells tests and tools the ports and files of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from companion import Companion, start_dashboard
from core.clock import MarketClock, SystemTimeSource, get_clock, set_clock
from core.logs import get_logger, setup_logging
from core.settings import PROJECT_ROOT, get_settings, set_settings
from observability import TradingDatabase, get_database
from reports import DayReport, build_day_report, render_report
from supervision import (
    Supervisor,
    SupervisorError,
    SupervisorLock,
    WatchdogPolicy,
    bot_specs,
    crash_loop_limit,
    install_signal_handlers,
    lock_path_for,
    policy_from_args,
    stop_process_tree,
)

log = get_logger("supervisor")

DEFAULT_SEED = 7
# 09:00 -> 16:05 is 25,500 simulated seconds: at 110x about 4 minutes of real time.
DEFAULT_SPEED = 110.0
DEFAULT_START = "09:00"
DEFAULT_SYMBOLS = 20
END_AFTER_CLOSE_MINUTES = 5.0
GATEWAY_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SimOptions:
    seed: int = DEFAULT_SEED
    speed: float = DEFAULT_SPEED
    trading_date: date | None = None  # None: the last completed trading date
    start: str = DEFAULT_START
    symbols: int = DEFAULT_SYMBOLS
    allocation: float = 0.25
    run_dir: Path | None = None
    status_every_s: float = 30.0
    stale_after_s: float = 60.0
    end_after_close_minutes: float = END_AFTER_CLOSE_MINUTES
    allow_shorting: bool = False  # a margin account: an accidental short shows, not a reject
    replay: Path | None = None  # recorded bars (file or directory) instead of a synthetic day
    bar_seconds: int | None = None  # the replay's bar size; None: its typical spacing
    spread: float | None = None  # a fixed spread in dollars; None: from price and liquidity


def last_trading_date(clock: MarketClock | None = None) -> date:
    """The last trading date whose session has closed (today's once it is past the close)."""
    clock = clock or MarketClock(SystemTimeSource())
    today = clock.today()
    session = clock.session(today)
    if session is not None and clock.now() >= session.close:
        return today
    return clock.previous_session(today).trading_date


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """SimOptions from supervisor.py's --sim flags (ranges are checked while parsing, dates and
    times here), all before anything touches the disk. Raises SupervisorError on a bad value."""
    options = SimOptions()
    changes: dict[str, Any] = {}
    if args.date:
        try:
            changes["trading_date"] = date.fromisoformat(args.date)
        except ValueError:
            raise SupervisorError(f"--date {args.date!r} is not a date (YYYY-MM-DD)") from None
    if args.start:
        try:
            datetime.strptime(args.start, "%H:%M")
        except ValueError:
            raise SupervisorError(f"--start {args.start!r} is not a time (HH:MM)") from None
        changes["start"] = args.start
    for flag, name in (
        ("seed", "seed"),
        ("speed", "speed"),
        ("symbols", "symbols"),
        ("allocation", "allocation"),
        ("run_dir", "run_dir"),
        ("status_every", "status_every_s"),
    ):
        if getattr(args, flag) is not None:
            changes[name] = getattr(args, flag)
    if args.allow_shorting:
        changes["allow_shorting"] = True
    if args.spread is not None:
        changes["spread"] = args.spread
    if args.replay is not None:
        if args.symbols is not None:
            raise SupervisorError(
                "--symbols sizes the synthetic market; a --replay trades the symbols of its "
                "data: drop --symbols"
            )
        changes.update(replay=args.replay.resolve(), bar_seconds=args.bar_seconds)
        if "trading_date" not in changes:
            changes["trading_date"] = _replay_day(args.replay)
        _replay_universe(args.replay, changes["trading_date"])  # a bad file: refused now
    elif args.bar_seconds is not None:
        raise SupervisorError("--bar-seconds is the bar size of a --replay: pass --replay too")
    return replace(options, **changes)


def _replay_day(path: Path) -> date:
    """The day a replay simulates without --date: its first bar's. Raises SupervisorError."""
    from ibsim.replay import first_replay_day

    try:
        return first_replay_day(path)
    except ValueError as exc:
        raise SupervisorError(str(exc)) from None


def _replay_universe(path: Path, trading_date: date) -> tuple[str, ...]:
    """The symbols of a replay on the day: what the day trader watches. Raises SupervisorError."""
    from ibsim.replay import replay_symbols

    try:
        return replay_symbols(path, trading_date)
    except ValueError as exc:
        raise SupervisorError(str(exc)) from None


def universe_of(options: SimOptions, trading_date: date) -> tuple[str, ...]:
    """The simulated market's symbols: the replay's on that day, else the synthetic ones."""
    if options.replay is not None:
        return _replay_universe(options.replay, trading_date)
    from ibsim.market import generate_tickers

    return generate_tickers(options.symbols, options.seed)


def last_line(path: Path) -> str:
    """The last non-blank line of a text file ('' when there is none): a program's last word."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return next((text.strip() for text in reversed(lines) if text.strip()), "")


class SimGateway:
    """`python -m ibsim` as a child process on free ports; stopped with the run."""

    def __init__(self, options: SimOptions, trading_date: date, run_dir: Path) -> None:
        self.options = options
        self.trading_date = trading_date
        self.run_dir = run_dir
        self.clock_file = run_dir / "sim_clock.json"
        self.process: psutil.Popen | None = None
        self.port = 0
        self.control_port = 0

    def argv(self) -> list[str]:
        o = self.options
        return [
            sys.executable,
            "-m",
            "ibsim",
            "--port",
            "0",
            "--control-port",
            "0",
            "--seed",
            str(o.seed),
            "--speed",
            f"{o.speed:g}",
            "--date",
            self.trading_date.isoformat(),
            "--start",
            o.start,
            *(["--symbols", str(o.symbols)] if o.replay is None else ["--replay", str(o.replay)]),
            *(["--bar-seconds", str(o.bar_seconds)] if o.bar_seconds else []),
            *(["--spread", f"{o.spread:g}"] if o.spread is not None else []),
            "--clock-file",
            str(self.clock_file),
            "--log-level",
            "WARNING",
            *(["--allow-shorting"] if o.allow_shorting else []),
        ]

    def start(self) -> None:
        """Start and wait for its "listening" line. Raises SupervisorError when it fails."""
        errors = (self.run_dir / "ibsim.out").open("ab")
        try:
            self.process = psutil.Popen(
                self.argv(),
                cwd=str(PROJECT_ROOT),
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                start_new_session=os.name != "nt",
            )
        finally:
            errors.close()
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "ibsim: listening on 127.0.0.1:P ... control C"
        words = line.split()
        if "listening" not in words:
            self.process.wait(timeout=GATEWAY_START_TIMEOUT_S)
            cause = line.strip() or last_line(self.run_dir / "ibsim.out") or "no output"
            raise SupervisorError(
                f"the simulated gateway did not start (see {self.run_dir / 'ibsim.out'}): {cause}"
            )
        self.port = int(words[words.index("on") + 1].rsplit(":", 1)[1])
        self.control_port = int(words[words.index("control") + 1])
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
        while not self.clock_file.exists():
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"the simulated gateway wrote no clock file {self.clock_file}"
                )
            time.sleep(0.05)

    def state(self) -> dict[str, Any] | None:
        """The simulator's account (positions, orders, executions), or None if unreachable."""
        from ibsim.ctl import call

        try:
            reply = call(self.control_port, "state", {}, timeout=10.0)
        except OSError:
            return None
        return reply.get("result") if reply.get("ok") else None

    def symbols(self) -> tuple[str, ...]:
        """The simulated market's symbols, asked of the gateway itself: generating them here
        would load the market stack (numpy, pandas) into the supervisor. Raises
        SupervisorError when the gateway does not answer."""
        from ibsim.ctl import call

        try:
            reply = call(self.control_port, "health", {}, timeout=GATEWAY_START_TIMEOUT_S)
        except OSError as exc:
            raise SupervisorError(f"the simulated gateway did not answer /health: {exc}") from None
        if not reply.get("ok"):
            raise SupervisorError(f"the simulated gateway refused /health: {reply}")
        return tuple(reply["result"]["symbols"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_tree(self.process, timeout=10.0)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


@dataclass(frozen=True)
class SimOutcome:
    report: DayReport
    chart: Path | None  # None: the chart could not be drawn (the reason was printed)
    flat: bool | None  # None: the simulator could not be asked
    unmatched_fills: list[str]  # how the database's fills differ from the simulator's
    open_orders: int


def fill_disagreements(
    db_trades: list[dict[str, Any]], executions: list[dict[str, Any]]
) -> list[str]:
    """Pure: every way the database's fills of the day differ from the simulator's executions."""
    ours = {t["exec_id"]: t for t in db_trades if t["exec_id"]}
    theirs = {e["exec_id"]: e for e in executions}
    problems = [
        f"{x} {theirs[x]['symbol']} missing from the database" for x in theirs.keys() - ours.keys()
    ]
    problems += [
        f"{x} {ours[x]['symbol']} unknown to the simulator" for x in ours.keys() - theirs.keys()
    ]
    for exec_id in ours.keys() & theirs.keys():
        t, e = ours[exec_id], theirs[exec_id]
        side = {"BOT": "BUY", "SLD": "SELL"}.get(e["side"], e["side"])
        if (
            (t["symbol"], t["side"]) != (e["symbol"], side)
            or abs(float(t["quantity"]) - float(e["shares"])) > 1e-9
            or abs(float(t["price"]) - float(e["price"])) > 1e-6
        ):
            problems.append(f"{exec_id} differs: database {t}, simulator {e}")
    return sorted(problems)


def check_against_simulator(db: TradingDatabase, state: dict[str, Any] | None, day: str):  # type: ignore[no-untyped-def]
    """(flat, how the database and the simulator disagree on fills, working orders left)."""
    if state is None:
        return None, ["simulator unreachable"], -1
    flat = not any(float(p["quantity"]) for p in state["positions"])
    problems = fill_disagreements(db.get_trades_by_date(day), state["executions"])
    return flat, problems, len(state["open_orders"])


def sim_env(run_dir: Path, gateway: SimGateway, db_path: Path) -> dict[str, str]:
    """What points both bots at the simulator (and keeps them off the real files)."""
    return {
        "IB_HOST": "127.0.0.1",
        "IB_PORT": str(gateway.port),
        "TRADING_MODE": "paper",
        "IB_ACCOUNT": "",
        "CLOCK_FILE": str(gateway.clock_file),
        "DATABASE_PATH": str(db_path),
        "LOG_DIR": str(run_dir / "logs"),
        "BACKUP_DIR": str(run_dir / "archive"),
        "KILL_SWITCH_FILE": str(run_dir / "KILL_SWITCH"),
        "WATCHLIST_PATH": str(run_dir / "watchlist.json"),
        # No calls to paid services from a simulation.
        "MASSIVE_API_KEY": "",
        "POLYGON_API_KEY": "",
        "DEEPSEEK_API_KEY": "",
        "GOOGLE_API_KEY": "",
        "GEMINI_API_KEY": "",
    }


RUN_MARKER = ".sim_run"  # written into every run folder this program creates


def is_sim_run_dir(path: Path) -> bool:
    """True when `path` is a run folder this program created (its marker file is there)."""
    return (path / RUN_MARKER).is_file()


def prepare_run_dir(options: SimOptions, trading_date: date) -> Path:
    """A clean folder for this run (a rerun of the same date and seed replaces the last one).

    Only a folder this program created (it holds RUN_MARKER) is ever deleted; a new or empty
    folder is used as it is. Raises SupervisorError for any other folder, touching nothing.
    """
    run_dir = options.run_dir or PROJECT_ROOT / "sim_runs" / f"{trading_date}_{options.seed}"
    run_dir = run_dir.resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise SupervisorError(f"--run-dir {run_dir} is a file: pass a new or empty folder")
    lock = read_lock_pid(run_dir)
    if lock is not None:
        raise SupervisorError(
            f"a simulation (pid {lock}) is running in {run_dir}; stop it or pass --run-dir"
        )
    if run_dir.exists() and any(run_dir.iterdir()):
        if not is_sim_run_dir(run_dir):
            raise SupervisorError(
                f"--run-dir {run_dir} is not empty and was not made by a simulated run: "
                "pass a new or empty folder (nothing was deleted)"
            )
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("made by supervisor.py --sim; rerunning replaces it\n")
    runs_root = PROJECT_ROOT / "sim_runs"
    if run_dir.is_relative_to(runs_root) and not (runs_root / ".gitignore").exists():
        (runs_root / ".gitignore").write_text("# simulated runs are not source\n*\n")
    return run_dir


def read_lock_pid(run_dir: Path) -> int | None:
    from supervision import _process_matches, read_lock

    payload = read_lock(lock_path_for(run_dir / "trading_history.db"))
    if payload and _process_matches(int(payload.get("pid", -1)), payload.get("create_time")):
        return int(payload["pid"])
    return None


def run(args: argparse.Namespace) -> int:
    """The whole simulated day; returns 0 when flat at the close and the database agrees."""
    options = options_from_args(args)
    trading_date = options.trading_date or last_trading_date()
    run_dir = prepare_run_dir(options, trading_date)
    db_path = run_dir / "trading_history.db"
    settings = replace(
        get_settings(),
        database_path=db_path,
        log_dir=run_dir / "logs",
        backup_dir=run_dir / "archive",
        kill_switch_file=run_dir / "KILL_SWITCH",
        watchlist_path=run_dir / "watchlist.json",
        trading_mode="paper",
        ib_port=4002,
    )
    set_settings(settings)
    setup_logging("supervisor", log_dir=run_dir / "logs", level=settings.log_level)
    gateway = SimGateway(options, trading_date, run_dir)
    market = (  # the synthetic symbols come from the gateway once it runs (no numpy here)
        f"replay of {options.replay} ({', '.join(universe_of(options, trading_date))})"
        if options.replay is not None
        else f"seed {options.seed}, {options.symbols} symbols"
    )
    print(
        f"simulated day {trading_date} from {options.start} at {options.speed:g}x, "
        f"{market}; run folder {run_dir}\n"
        "every time shown from here on is simulated New York time",
        flush=True,
    )
    gateway.start()
    lock: SupervisorLock | None = None
    dashboard: Companion | None = None
    try:
        clock = get_clock(gateway.clock_file)
        set_clock(clock)
        settings = replace(settings, ib_port=gateway.port, clock_file=gateway.clock_file)
        set_settings(settings)
        db = get_database(db_path, if_missing="create")  # a new run's own database
        lock = SupervisorLock(lock_path_for(db.path))
        lock.acquire()
        (run_dir / "sim.json").write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "port": gateway.port,
                    "control_port": gateway.control_port,
                    "clock_file": str(gateway.clock_file),
                    "database": str(db.path),
                    "lock": str(lock.path),
                    "trading_date": trading_date.isoformat(),
                    "seed": options.seed,
                    "speed": options.speed,
                }
            )
        )
        universe = gateway.symbols()
        specs = bot_specs(
            options.allocation,
            sim_env(run_dir, gateway, db.path),
            output_dir=run_dir / "logs",
            # Reconnect retries are in real seconds: 30 s would be most of an hour simulated.
            day_trader_args=("--symbols", ",".join(universe), "--no-llm", "--retry-seconds", "3"),
            exit_manager_args=("--retry-seconds", "3"),
        )
        policy = policy_from_args(
            args,
            WatchdogPolicy(
                poll_seconds=0.25,
                stale_after_s=options.stale_after_s,
                startup_grace_s=90.0,
                backoff_initial_s=1.0,
                backoff_max_s=30.0,
                status_every_s=options.status_every_s,
            ),
        )
        supervisor = Supervisor(db, specs, policy, lock=lock, backup_dir=run_dir / "archive")
        install_signal_handlers(supervisor)
        # A token for this run's actions unless DASHBOARD_TOKEN is set: the address with it
        # is printed here, the dashboard's own output goes to its file like the bots'.
        token = settings.dashboard_token.reveal() if settings.dashboard_token else None
        token = token or secrets.token_urlsafe(24)
        dashboard = start_dashboard(
            args,
            db.path,
            lock.path,
            run_dir / "logs",
            {**sim_env(run_dir, gateway, db.path), "DASHBOARD_TOKEN": token},
            alerts=bool(settings.alert_urls),
            output=run_dir / "logs" / "dashboard.out",
        )
        address = f"http://{args.dashboard_host}:{args.dashboard_port}/"
        if dashboard is not None and not args.no_dashboard:
            shown = address if settings.dashboard_token else f"{address}#token={token}"
            print(f"dashboard: {shown}", flush=True)
        elif not args.no_dashboard:
            print(f"dashboard: not started, {address} is in use (--dashboard-port)", flush=True)
        print(f"crash loop: {crash_loop_limit(policy, options.speed)}", flush=True)
        session = clock.session(trading_date)
        assert session is not None
        end_at = session.close + timedelta(minutes=options.end_after_close_minutes)
        code = supervisor.run(until=lambda: clock.now() >= end_at)
        if supervisor.fatal:
            report_give_up(supervisor.fatal, gateway.state())
            return code
        if supervisor.stop_requested and clock.now() < end_at:
            print("simulation stopped before the close: no day report", flush=True)
            return 130 if code == 0 else code
        outcome = finish(db, gateway, trading_date.isoformat(), run_dir)
        ok = outcome.flat and not outcome.unmatched_fills and code == 0
        return 0 if ok else 1
    finally:
        if dashboard is not None:
            dashboard.stop()
        gateway.stop()
        if lock is not None:
            lock.release()


def shell_word(word: str) -> str:
    """`word` quoted for the user's shell (POSIX sh, or cmd.exe on Windows)."""
    return subprocess.list2cmdline([word]) if os.name == "nt" else shlex.quote(word)


def python_command() -> str:
    """How a shell reaches this interpreter: `python` when that is the one on PATH (same
    executable and environment), else this interpreter's full path."""
    found = shutil.which("python")
    if found:
        try:
            probe = subprocess.run(
                [found, "-c", "import sys; print(sys.executable); print(sys.prefix)"],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.SubprocessError):
            probe = None
        if probe is not None and probe.stdout.splitlines() == [sys.executable, sys.prefix]:
            return "python"
    return shell_word(sys.executable)


def project_relative(path: Path) -> str:
    """`path` as typed from the project folder: relative inside it, absolute outside."""
    path = path.resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def results_commands(db_path: Path, log_dir: Path, day: str) -> list[tuple[str, str]]:
    """(what it shows, shell command run from the project folder) for one run's results:
    its database, not the default one, and its date, not today."""
    python = python_command()
    db = project_relative(db_path)
    logs = shell_word(project_relative(log_dir))
    query = (
        "from observability import get_database; "
        f"db = get_database({json.dumps(db)}); "
        f'print(*db.get_trades_by_date({json.dumps(day)}), sep="\\n")'
    )
    return [
        ("the fills of the day, from the run's database", f"{python} -c {shell_word(query)}"),
        (
            "the day report again",
            f"{python} analyze_today.py --db {shell_word(db)} --date {day} --no-chart",
        ),
        ("the fills in the bots' logs", f"{python} view_logs.py --dir {logs} --event fill"),
        ("warnings and errors of the run", f"{python} view_logs.py --dir {logs} --level warning"),
    ]


def render_results_commands(db_path: Path, log_dir: Path, day: str) -> str:
    """The closing lines of a simulated day: the exact commands that open its results."""
    lines = [f"this run's results, from the project folder (cd {shell_word(str(PROJECT_ROOT))}):"]
    for what, command in results_commands(db_path, log_dir, day):
        lines += [f"  # {what}", f"  {command}"]
    return "\n".join(lines) + "\n"


def report_give_up(reason: str, state: dict[str, Any] | None) -> None:
    """The supervisor gave up mid-day: no day report, but what it left at the simulator."""
    print(f"the supervisor gave up at {get_clock().now():%H:%M:%S}: {reason}", flush=True)
    if state is None:
        print("positions left: unknown (simulator unreachable)", flush=True)
        return
    held = {p["symbol"]: p["quantity"] for p in state["positions"] if p["quantity"]}
    stops = sorted({o["symbol"] for o in state["open_orders"]
                    if o["action"] == "SELL" and o["order_type"] == "STP"})  # fmt: skip
    print(f"positions left at the simulated IB: {held or 'none'}; "
          f"server stops working for: {stops or 'none'}", flush=True)  # fmt: skip


def write_chart_in_child(db_path: Path, day: str, path: Path) -> Path | None:
    """Draw the day's P&L chart with `analyze_today.py` in a child process: matplotlib would
    stay in the supervisor's memory for the rest of its life. Returns `path`, or None (after
    printing why) when the child failed."""
    argv = [sys.executable, str(PROJECT_ROOT / "analyze_today.py"), "--db", str(db_path),
            "--date", day, "--chart", str(path)]  # fmt: skip
    try:
        done = subprocess.run(
            argv, cwd=str(PROJECT_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, timeout=120,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"P&L chart: not written ({exc})", flush=True)
        return None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        print(f"P&L chart: not written ({reason[0]})", flush=True)
        return None
    return path


def finish(db: TradingDatabase, gateway: SimGateway, day: str, run_dir: Path) -> SimOutcome:
    """Report, chart, and the checks against the simulator's own account."""
    report = build_day_report(db, day)
    chart = write_chart_in_child(db.path, day, run_dir / f"pnl_{day}.png")
    flat, unmatched, open_orders = check_against_simulator(db, gateway.state(), day)
    print(render_report(report), end="", flush=True)
    if chart is not None:
        print(f"P&L chart: {chart}")
    print(
        "flat at the close: "
        + {True: "yes", False: "NO", None: "unknown (simulator unreachable)"}[flat]
        + f"; working orders left: {open_orders}"
    )
    if unmatched:
        print("database and simulator DISAGREE on fills of the day:")
        for problem in unmatched:
            print(f"  {problem}")
    else:
        print("database and simulator agree on every fill")
    log.info(
        "sim_day_done",
        trading_date=day,
        trades=len(report.round_trips),
        pnl=round(report.total_pnl, 2),
        flat=flat,
        unmatched_fills=len(unmatched),
    )
    print(render_results_commands(db.path, run_dir / "logs", day), end="", flush=True)
    return SimOutcome(report, chart, flat, unmatched, open_orders)
