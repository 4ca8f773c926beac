"""sim_day: the --sim run folder (only what the simulation made is ever deleted) and its flags."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

import sim_day
from core.clock import NEW_YORK, MarketClock
from core.settings import PROJECT_ROOT, env_keys
from observability import TradingDatabase
from supervision import SupervisorError, policy_from_args
from supervisor import build_parser

DAY = date(2026, 11, 24)


def sim_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["--sim", *argv])


def options_for(run_dir: Path) -> sim_day.SimOptions:
    return sim_day.SimOptions(run_dir=run_dir)


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(path.rglob("*"))
    }


def test_run_dir_holding_other_files_is_refused_and_left_untouched(tmp_path):
    # `--run-dir .` once erased a whole project with its .git, .env and database.
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / ".env").write_text("IB_PORT=4002\n")
    (project / "trading_history.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 84)
    before = tree(project)

    with pytest.raises(SupervisorError, match="not empty and was not made by a simulated run"):
        sim_day.prepare_run_dir(options_for(project), DAY)

    assert tree(project) == before


def test_run_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(SupervisorError, match="is a file"):
        sim_day.prepare_run_dir(options_for(target), DAY)
    assert target.read_text() == "keep me"


def test_new_and_empty_folders_are_used_and_marked(tmp_path):
    for run_dir in (tmp_path / "new" / "run", tmp_path / "empty"):
        if run_dir.name == "empty":
            run_dir.mkdir()
        assert sim_day.prepare_run_dir(options_for(run_dir), DAY) == run_dir.resolve()
        assert sim_day.is_sim_run_dir(run_dir)
        assert (run_dir / "logs").is_dir()


def test_rerun_replaces_a_folder_the_simulation_made(tmp_path):
    run_dir = tmp_path / "run"
    sim_day.prepare_run_dir(options_for(run_dir), DAY)
    (run_dir / "sim.json").write_text("{}")
    (run_dir / "logs" / "old.json").write_text("{}")

    sim_day.prepare_run_dir(options_for(run_dir), DAY)

    assert sorted(p.name for p in run_dir.iterdir()) == [sim_day.RUN_MARKER, "logs"]
    assert list((run_dir / "logs").iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--speed", "0", "argument --speed: '0' is outside (0, 100000]"),
        ("--speed", "nan", "argument --speed: 'nan' is outside"),
        ("--speed", "-3", "argument --speed: '-3' is outside"),
        ("--symbols", "0", "argument --symbols: '0' is outside [1, 500]"),
        ("--allocation", "1.5", "argument --allocation: '1.5' is outside (0, 1]"),
        ("--allocation", "nan", "argument --allocation: 'nan' is outside"),
        ("--status-every", "0", "argument --status-every: '0' is outside (0, 3600]"),
    ],
)
def test_bad_sim_flag_is_refused_in_one_line_while_parsing(capsys, flag, value, message):
    with pytest.raises(SystemExit) as stop:
        sim_args(flag, value)
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"supervisor.py: error: {message}") and line.endswith("(see --help)")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--date", "2026-13-45", "is not a date"), ("--start", "25:99", "is not a time")],
)
def test_bad_sim_date_or_start_is_refused_before_the_run_folder_is_touched(
    tmp_path, flag, value, message
):
    run_dir = tmp_path / "run"
    with pytest.raises(SupervisorError, match=message):
        sim_day.run(sim_args(flag, value, "--run-dir", str(run_dir)))
    assert not run_dir.exists()


class _FailingGateway(sim_day.SimGateway):
    """A gateway process that dies at start, explaining why on stderr only."""

    def argv(self) -> list[str]:
        script = "import sys; print('Traceback ...', file=sys.stderr); "
        script += "print('error: --symbols 0: expected at least 1 symbol', file=sys.stderr)"
        return [sys.executable, "-c", script + "; sys.exit(2)"]


def test_gateway_that_dies_at_start_is_reported_with_its_own_last_words(tmp_path):
    run_dir = sim_day.prepare_run_dir(options_for(tmp_path / "run"), DAY)
    gateway = _FailingGateway(options_for(run_dir), DAY, run_dir)

    with pytest.raises(SupervisorError) as failure:
        gateway.start()

    message = str(failure.value)
    assert "did not start" in message and "no output" not in message
    assert message.endswith("error: --symbols 0: expected at least 1 symbol")
    assert str(run_dir / "ibsim.out") in message


def _log_line(bot: str, event: str, **fields: object) -> str:
    record = {"ts": "2026-11-24T15:10:00.000+00:00", "level": "INFO", "bot": bot,
              "event": event, "logger": bot, **fields}  # fmt: skip
    return json.dumps(record) + "\n"


def test_printed_results_commands_open_the_runs_own_database_logs_and_date(tmp_path):
    """Bug pinned: after a simulated day the README's query and analyze_today.py read the
    default database and today's date, so a newcomer found nothing. Each printed command,
    run as printed from the project folder, shows this run's trades (a folder with a space
    and a quote in its name, and a decoy default database and log folder that hold none)."""
    run_dir = tmp_path / "my run's day"
    (run_dir / "logs").mkdir(parents=True)
    db = TradingDatabase(run_dir / "trading_history.db", clock=MarketClock())
    bought = datetime(2026, 11, 24, 10, 0, tzinfo=NEW_YORK)
    db.record_trade("QZX", "BUY", 40, 12.50, "day_trader", order_ref="day_trader-QZX-1",
                    commission=1.0, exec_id="0001.e1", trade_time=bought)  # fmt: skip
    db.record_trade("QZX", "SELL", 40, 12.75, "exit_manager", order_ref="exit_manager-QZX-2",
                    commission=1.0, exec_id="0001.e2", trade_time=bought + timedelta(minutes=20))  # fmt: skip
    db.close()
    (run_dir / "logs" / "day_trader_run_20261124_100000.json").write_text(
        _log_line("day_trader", "entry_decision", symbol="QZX")
        + _log_line("day_trader", "entry_filled", symbol="QZX", exec_id="0001.e1")
    )
    (run_dir / "logs" / "exit_manager_run_20261124_100000.json").write_text(
        _log_line("exit_manager", "exit_fill", symbol="QZX", exec_id="0001.e2")
    )
    decoy = tmp_path / "decoy"
    (decoy / "logs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in env_keys()}
    env.update(DATABASE_PATH=str(decoy / "trading_history.db"), LOG_DIR=str(decoy / "logs"))

    text = sim_day.render_results_commands(run_dir / "trading_history.db", run_dir / "logs",
                                           "2026-11-24")  # fmt: skip
    commands = [line.strip() for line in text.splitlines()[1:] if not line.strip().startswith("#")]
    assert len(commands) == 4 and str(PROJECT_ROOT) in text.splitlines()[0]
    outputs = []
    for command in commands:
        done = subprocess.run(command, shell=True, cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        outputs.append(done.stdout)
    query, report, fills, _warnings = outputs
    assert "0001.e1" in query and "0001.e2" in query
    assert "trades (round trips): 1" in report and "QZX" in report and "$+8.00 net" in report
    assert "entry_filled" in fills and "exit_fill" in fills and "entry_decision" not in fills


def test_readme_shows_the_results_commands_of_the_default_run():
    run_dir = PROJECT_ROOT / "sim_runs" / "2026-11-24_7"
    readme = (PROJECT_ROOT / "README.md").read_text()
    python = sim_day.python_command()
    for _what, command in sim_day.results_commands(
        run_dir / "trading_history.db", run_dir / "logs", "2026-11-24"
    ):
        assert f"    python{command.removeprefix(python)}\n" in readme, command


def _supervisor_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    from core.settings import PROJECT_ROOT

    return subprocess.run(
        [sys.executable, "supervisor.py", "--sim", *argv],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--date", "2026-13-45"), "error: --date '2026-13-45' is not a date (YYYY-MM-DD)"),
        (("--start", "25:99"), "error: --start '25:99' is not a time (HH:MM)"),
    ],
)
def test_supervisor_sim_with_a_bad_date_or_start_is_one_line_not_a_traceback(argv, message):
    # Bug pinned: run as __main__, supervisor.py was imported a second time by sim_day, so its
    # `except SupervisorError` missed the second copy's class and printed a traceback.
    result = _supervisor_cli(*argv)
    assert (result.returncode, result.stderr) == (2, message + "\n")


def test_supervisor_sim_refuses_a_project_folder_as_run_dir_and_deletes_nothing(tmp_path):
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".env").write_text("IB_PORT=4002\n")
    before = tree(project)

    result = _supervisor_cli("--run-dir", str(project))

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: --run-dir {project.resolve()} is not empty and was not made by a simulated "
        "run: pass a new or empty folder (nothing was deleted)"
    ]
    assert tree(project) == before


def test_allow_shorting_makes_the_simulated_account_a_margin_account():
    # A cash account rejects a sell below zero, which hides an accidental short.
    plain = sim_day.SimGateway(sim_day.options_from_args(sim_args()), DAY, Path("run"))
    margin = sim_day.SimGateway(
        sim_day.options_from_args(sim_args("--allow-shorting")), DAY, Path("run")
    )
    assert "--allow-shorting" not in plain.argv()
    assert "--allow-shorting" in margin.argv()


def test_watchdog_flags_reach_the_simulated_days_policy():
    base = sim_day.WatchdogPolicy(stale_after_s=60.0, crash_loop_max=5)
    args = sim_args("--stale-after", "15", "--crash-loop-max", "1000", "--crash-loop-window", "900")
    policy = policy_from_args(args, base)
    assert (policy.stale_after_s, policy.crash_loop_max, policy.crash_loop_window_s) == (
        15.0,
        1000,
        900.0,
    )
    assert policy_from_args(sim_args(), base) == base


REPLAY_DIR = PROJECT_ROOT / "tests" / "data" / "replay"


def test_sim_replay_takes_its_symbols_and_day_from_the_data():
    options = sim_day.options_from_args(sim_args("--replay", str(REPLAY_DIR), "--spread", "0.02"))
    assert options.replay == REPLAY_DIR and options.trading_date == date(2022, 5, 19)
    assert sim_day.universe_of(options, options.trading_date) == ("AAPL", "MSFT")
    argv = sim_day.SimGateway(options, options.trading_date, Path("run")).argv()
    assert argv[argv.index("--replay") + 1] == str(REPLAY_DIR)
    assert argv[argv.index("--spread") + 1] == "0.02" and "--symbols" not in argv
    assert argv[argv.index("--date") + 1] == "2022-05-19"


def test_sim_replay_of_one_file_with_an_explicit_bar_size():
    path = REPLAY_DIR / "MSFT_2022-05-19.csv"
    options = sim_day.options_from_args(sim_args("--replay", str(path), "--bar-seconds", "60"))
    assert sim_day.universe_of(options, options.trading_date) == ("MSFT",)
    argv = sim_day.SimGateway(options, options.trading_date, Path("run")).argv()
    assert argv[argv.index("--bar-seconds") + 1] == "60"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--replay", str(REPLAY_DIR), "--symbols", "5"), "drop --symbols"),
        (("--replay", str(REPLAY_DIR), "--date", "2022-05-20"), "no bars on 2022-05-20"),
        (("--replay", "nowhere.csv"), "replay path nowhere.csv does not exist"),
        (
            (
                "--bar-seconds",
                "60",
            ),
            "pass --replay too",
        ),
    ],
)
def test_sim_replay_bad_input_is_refused_before_anything_runs(argv, message):
    with pytest.raises(SupervisorError, match=message) as error:
        sim_day.options_from_args(sim_args(*argv))
    assert "\n" not in str(error.value)


def test_supervisor_sim_with_a_bad_replay_is_one_line_not_a_traceback():
    result = _supervisor_cli("--replay", "nowhere.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr == "error: replay path nowhere.csv does not exist; check the --replay path\n"
    )
