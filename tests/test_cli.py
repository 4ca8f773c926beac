"""The shared flag vocabulary: every program refuses a bad flag in one line, never a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from core import cli
from core.settings import PROJECT_ROOT

GATEWAY_PROGRAMS = (
    "exit_manager.py",
    "day_trader.py",
    "liquidate_all.py",
    "check_orders.py",
    "monitor_live.py",
    "test_connection.py",
)
BAD_GATEWAY_FLAGS = (
    ("--port", "99999"),
    ("--port", "-1"),
    ("--port", "0"),  # refused, never silently replaced by IB_PORT
    ("--port", "http"),
    ("--client-id", "-5"),
    ("--host", " "),
)
OTHER_BAD_INPUT = (
    ("exit_manager.py", "--retry-seconds", "0"),
    ("exit_manager.py", "--retry-seconds", "-3"),
    ("day_trader.py", "--retry-seconds", "nan"),
    ("check_orders.py", "--timeout", "-1"),
    ("liquidate_all.py", "--flat-timeout", "0"),
    ("test_connection.py", "--timeout", "0"),
    ("test_connection.py", "--data-wait", "-1"),
    ("monitor_live.py", "--every", "0"),
    ("view_logs.py", "--poll", "x"),
    ("supervisor.py", "--status-every", "-1"),
    ("supervisor.py", "--stale-after", "0"),
    ("supervisor.py", "--allocation", "2"),
    ("supervisor.py --sim", "--speed", "nan"),
    ("supervisor.py --sim", "--speed", "0"),
    ("supervisor.py --sim", "--symbols", "0"),
    ("scanner_polygon.py", "--max-picks", "many"),
    ("observability.py", "--no-such-flag", "1"),
)
CASES = [
    (program, flag, value) for program in GATEWAY_PROGRAMS for flag, value in BAD_GATEWAY_FLAGS
]
CASES += list(OTHER_BAD_INPUT)


@pytest.mark.parametrize(("program", "flag", "value"), CASES)
def test_bad_flag_is_one_line_on_stderr_and_exit_2(program: str, flag: str, value: str) -> None:
    script, *extra = program.split()
    result = subprocess.run(
        [sys.executable, script, *extra, f"{flag}={value}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and lines[0].endswith("(see --help)")


def test_ranged_accepts_the_bounds_and_refuses_nan_and_the_open_end() -> None:
    retry = cli.ranged(float, 0.0, 3600.0, lo_open=True)
    assert retry("3600") == 3600.0 and retry("0.5") == 0.5
    for raw in ("0", "nan", "3600.1", "-inf", "ten"):
        with pytest.raises(argparse.ArgumentTypeError):
            retry(raw)
    assert cli.port("1") == 1 and cli.port("65535") == 65535
    assert cli.client_id("0") == 0


def test_host_is_stripped_and_refuses_spaces_and_control_characters() -> None:
    assert cli.host(" 127.0.0.1 ") == "127.0.0.1"
    for raw in ("", "  ", "gate way", "host\nname"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.host(raw)


def _program() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog="demo")
    cli.add_gateway_args(parser, 95, "client id")
    parser.add_argument("--fail", choices=("bad-input", "program", "database", "connection"))
    return parser


def _body(args: argparse.Namespace, settings) -> int:  # type: ignore[no-untyped-def]
    from observability import DatabaseError

    failures = {
        "bad-input": cli.BadInput("--resume only lifts the halt; drop --yes"),
        "program": cli.ProgramError("no last price; retry during market hours"),
        "database": DatabaseError("database x.db does not exist: pass --db"),
        "connection": ConnectionError("socket closed"),
    }
    if args.fail:
        raise failures[args.fail]
    print(f"{settings.ib_host}:{settings.ib_port}")
    return 0


@pytest.mark.parametrize(
    ("fail", "code", "line"),
    [
        ("bad-input", 2, "demo: error: --resume only lifts the halt; drop --yes"),
        ("program", 1, "demo: error: no last price; retry during market hours"),
        ("database", 1, "demo: error: database x.db does not exist: pass --db"),
        ("connection", 1, "demo: error: lost the connection to IB (socket closed)"),
    ],
)
def test_run_program_ends_each_kind_of_failure_in_one_line_and_its_exit_code(
    fail: str, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run_program("demo", _program(), _body, ["--fail", fail], logs=False) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_run_program_applies_host_and_port_to_the_settings_and_opens_the_run_log(
    _isolated_settings, capsys: pytest.CaptureFixture[str], restore_root_logging: None
) -> None:  # type: ignore[no-untyped-def]
    argv = ["--host", "gw.local", "--port", "4102"]
    assert cli.run_program("demo", _program(), _body, argv) == 0
    assert capsys.readouterr().out == "gw.local:4102\n"
    assert list(_isolated_settings.log_dir.glob("demo_run_*.json"))


@pytest.mark.parametrize(
    "module",
    ["day_trader", "exit_manager", "supervisor", "dashboard", "check_orders", "liquidate_all",
     "monitor_live", "test_connection", "view_logs", "analyze_today"],
)  # fmt: skip
def test_every_program_starts_and_ends_through_run_program(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    program = importlib.import_module(module)
    calls: list[tuple[str, argparse.ArgumentParser]] = []

    def recorded(name, parser, body, argv=None, **how):  # type: ignore[no-untyped-def]
        calls.append((name, parser))
        return 99

    monkeypatch.setattr(cli, "run_program", recorded)
    assert program.main(["--no-such-flag"]) == 99  # never parsed by the program itself
    [(name, parser)] = calls
    assert name and isinstance(parser, cli.OneLineParser)


@pytest.mark.parametrize(
    ("setup_exit", "failure", "line"),
    [
        (1, "settings", "demo: error: setting TRADING_MODE='bogus' is invalid"),
        (2, "settings", "demo: error: setting TRADING_MODE='bogus' is invalid"),
        (2, "database", "demo: error: database x.db does not exist: pass --db"),
        (2, "lock", "demo: error: another supervisor holds the lock"),
    ],
)
def test_run_program_gives_a_settings_or_setup_error_the_programs_documented_code(
    setup_exit: int, failure: str, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.settings import SettingsError
    from observability import DatabaseError
    from supervision import SupervisorError

    failures = {
        "settings": SettingsError("setting TRADING_MODE='bogus' is invalid"),
        "database": DatabaseError("database x.db does not exist: pass --db"),
        "lock": SupervisorError("another supervisor holds the lock"),
    }

    def failing(args: argparse.Namespace, settings) -> int:  # type: ignore[no-untyped-def]
        raise failures[failure]

    code = cli.run_program("demo", _program(), failing, [], logs=False, setup_exit=setup_exit)
    assert code == setup_exit
    assert capsys.readouterr().err.splitlines() == [line]


def test_run_program_prefix_keeps_a_programs_own_error_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def failing(args: argparse.Namespace, settings) -> int:  # type: ignore[no-untyped-def]
        raise cli.BadInput("--sim always trades paper on the simulated gateway: drop --live")

    assert cli.run_program("supervisor", _program(), failing, [], logs=False, prefix="") == 2
    assert capsys.readouterr().err == (
        "error: --sim always trades paper on the simulated gateway: drop --live\n"
    )


@pytest.mark.parametrize("program", ["day_trader.py", "exit_manager.py", "dashboard.py"])
def test_bots_and_dashboard_refuse_a_bad_setting_in_one_line_and_exit_2(
    program: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import os

    env = {**os.environ, "TRADING_MODE": "bogus", "LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run(
        [sys.executable, program, "--db", str(tmp_path / "none.db")], cwd=PROJECT_ROOT,
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "TRADING_MODE" in line and "error:" in line
