"""start_supervisor.sh: venv on first start, reinstall when requirements.txt changed, pass args;
--help at once without a venv (start_exit_manager.sh too).

The script runs for real (bash) in a copy of the project folder; `python3` and the venv's
`python` are stand-ins that log their arguments, so no network or real install is needed.
The Windows twin (start_supervisor.bat) follows the same steps; it is checked for its
line endings and for the same stamp file, as this machine has no cmd.exe.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ".venv-daytrader"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$CALLS"
if [ "$1 $2" = "-m pip" ] && [ -n "$FAIL_PIP" ]; then echo "pip: no network" >&2; exit 1; fi
exit 0
"""
FAKE_PYTHON3 = """#!/bin/sh
echo "python3 $*" >> "$CALLS"
mkdir -p "$3/bin" && cp "$FAKE_PYTHON" "$3/bin/python" && chmod +x "$3/bin/python"
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "start_supervisor.sh", folder)
    shutil.copy(ROOT / "start_exit_manager.sh", folder)
    (folder / "requirements.txt").write_text("ib_async==2.1.0\n")
    tools = tmp_path / "bin"
    tools.mkdir()
    _executable(tools / "python3", FAKE_PYTHON3)
    _executable(tmp_path / "fake_python", FAKE_PYTHON)
    return folder


def start(
    project: Path, *args: str, fail_pip: bool = False, script: str = "start_supervisor.sh"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{project.parent / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(project.parent / "calls.log"),
        "FAKE_PYTHON": str(project.parent / "fake_python"),
        "FAIL_PIP": "1" if fail_pip else "",
    }
    return subprocess.run(
        ["bash", str(project / script), *args],
        cwd=project.parent,  # the script must find its folder by itself
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def calls(project: Path) -> list[str]:
    log = project.parent / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


PIP = "python -m pip install --disable-pip-version-check -r requirements.txt"


def test_first_start_creates_the_venv_installs_and_passes_the_arguments(project: Path) -> None:
    done = start(project, "--sim", "--seed", "3")

    assert done.returncode == 0, done.stderr
    assert calls(project) == [f"python3 -m venv {VENV}", PIP, "python supervisor.py --sim --seed 3"]


def test_later_starts_skip_the_install_until_requirements_change(project: Path) -> None:
    start(project)
    calls(project)

    assert start(project, "--allocation", "0.2").returncode == 0
    assert calls(project) == ["python supervisor.py --allocation 0.2"]

    (project / "requirements.txt").write_text("ib_async==2.1.0\npsutil==7.0.0\n")  # a git pull
    assert start(project).returncode == 0
    assert calls(project) == [PIP, "python supervisor.py"]


def test_failed_install_stops_with_one_error_line_and_is_retried_next_start(
    project: Path,
) -> None:
    failed = start(project, fail_pip=True)

    assert failed.returncode == 1
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith("error: installing requirements.txt failed")
    )
    assert "python supervisor.py" not in calls(project)  # never started half-installed

    assert start(project).returncode == 0
    assert calls(project) == [PIP, "python supervisor.py"]


@pytest.mark.parametrize("script", ["start_supervisor.sh", "start_exit_manager.sh"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_at_once_without_creating_the_venv(
    project: Path, script: str, flag: str
) -> None:
    """Bug pinned: `./start_supervisor.sh --help` built a 681 MB environment before printing."""
    done = start(project, flag, script=script)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: ./{script} ")
    assert not (project / VENV).exists()
    assert calls(project) == []  # neither python3 -m venv nor pip ran


@pytest.mark.parametrize(
    ("script", "program"),
    [("start_supervisor.sh", "supervisor.py"), ("start_exit_manager.sh", "exit_manager.py")],
)
def test_help_once_installed_is_the_programs_own_without_a_reinstall(
    project: Path, script: str, program: str
) -> None:
    start(project)  # the first start installs
    calls(project)

    done = start(project, "--sim", "--help", script=script)

    assert done.returncode == 0, done.stderr
    assert calls(project) == [f"python {program} --sim --help"]


def test_windows_twins_answer_help_before_creating_the_venv() -> None:
    for name in ("start_supervisor.bat", "start_exit_manager.bat"):
        text = (ROOT / name).read_bytes().decode()
        help_check = text.index('if /i "%%~A"=="--help" goto help')
        assert help_check < text.index("-m venv"), name
        assert "goto usage" in text and "exit /b 0" in text[text.index(":usage") :], name


def test_windows_twin_has_crlf_and_the_same_reinstall_stamp() -> None:
    for name in ("start_supervisor.bat", "start_exit_manager.bat"):
        twin = (ROOT / name).read_bytes()
        assert b"\n" not in twin.replace(b"\r\n", b""), name  # cmd.exe misreads LF-only files
    bat = (ROOT / "start_supervisor.bat").read_bytes()
    text = bat.decode()
    assert "requirements.installed" in text
    assert "requirements.installed" in (ROOT / "start_supervisor.sh").read_text()
    assert "supervisor.py %*" in text
