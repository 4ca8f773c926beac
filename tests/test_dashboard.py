"""The dashboard at the HTTP level: /health, /api/*, the token on actions, who/when in the
database, no secret in any response, and `python dashboard.py` against a database alone."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import pytest
from sim_support import wait_for
from starlette.testclient import TestClient

from core.clock import NEW_YORK, FileTimeSource, ManualTimeSource, MarketClock
from core.heartbeats import EXIT_MANAGER
from core.logs import remember_secrets
from core.settings import PROJECT_ROOT, Secret, get_settings
from observability import Mark, TradingDatabase
from supervision import SupervisorLock
from webui.actions import Actions
from webui.app import create_app
from webui.state import LogWatch, Sources

TOKEN = "test-token-0123456789"
SECRET_KEY = "sk-do-not-show-7f3a9c"
NOW = datetime(2026, 11, 24, 11, 0, tzinfo=NEW_YORK)  # a Tuesday, mid-session


@pytest.fixture
def db(tmp_path: Path) -> TradingDatabase:
    clock = MarketClock(ManualTimeSource(NOW))
    db = TradingDatabase(tmp_path / "trading_history.db", clock=clock, if_missing="create")
    db.get_heartbeats()  # the file exists from here on
    return db


def _app(db: TradingDatabase, tmp_path: Path) -> TestClient:
    settings = replace(get_settings(), deepseek_api_key=Secret(SECRET_KEY))
    remember_secrets(SECRET_KEY)
    sources = Sources(db, settings, tmp_path / "no.lock", LogWatch(tmp_path / "logs"))
    return TestClient(create_app(sources, Actions(db, settings), TOKEN, refresh_s=0.05))


def _healthy_bots(db: TradingDatabase) -> None:
    """Both bots beating now from a live process (this one)."""
    db.beat(EXIT_MANAGER, "RECONCILED", "held=1 faults=0")
    db.beat("day_trader", "regular")


def _protected_position(db: TradingDatabase, symbol: str = "AAA", minutes_old: int = 30) -> None:
    entered = (NOW - timedelta(minutes=minutes_old)).isoformat()
    db.add_active_position(symbol, 100, 10.0, 10.18, 9.91, entry_time=entered)
    ref = db.create_order_intent(symbol, "SELL", 100, "STP", EXIT_MANAGER, stop_price=9.8,
                                 purpose="PROTECT_STOP")  # fmt: skip
    db.update_order_intent(ref, "SUBMITTED")


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_is_200_when_bots_beat_and_every_position_has_a_working_stop(db, tmp_path):
    _healthy_bots(db)
    _protected_position(db)
    db.beat(EXIT_MANAGER, "RECONCILED", marks=[Mark("AAA", 10.05, NOW.timestamp())])

    answer = _app(db, tmp_path).get("/health")

    assert answer.status_code == 200, answer.json()
    assert answer.json()["ok"] is True and answer.json()["problems"] == []


def test_health_is_503_naming_a_position_without_a_stop_a_dead_bot_and_stale_data(db, tmp_path):
    db.beat(EXIT_MANAGER, "RECONCILED")  # the day trader never beat
    db.add_active_position("BBB", 10, 20.0, 20.36, 19.82,
                           entry_time=(NOW - timedelta(minutes=10)).isoformat())  # fmt: skip
    stale = NOW.timestamp() - 600  # ten minutes without a tick
    db.beat(EXIT_MANAGER, "RECONCILED", marks=[Mark("BBB", 20.1, stale)])

    answer = _app(db, tmp_path).get("/health")

    assert answer.status_code == 503
    problems = answer.json()["problems"]
    assert "BBB: position without a working stop at IB" in problems
    assert "BBB: market data stale" in problems
    assert "day_trader: not running" in problems


def test_health_is_503_when_the_exit_manager_heartbeat_is_stale(db, tmp_path):
    _healthy_bots(db)
    with db._write() as conn:  # a beat 30 real seconds ago: the exit manager is hung
        conn.execute("UPDATE heartbeats SET beat_at = beat_at - 30 WHERE bot = ?", (EXIT_MANAGER,))

    answer = _app(db, tmp_path).get("/health")

    assert answer.status_code == 503
    assert any("exit_manager: exit manager heartbeat" in p for p in answer.json()["problems"])


def test_api_positions_show_last_price_distances_unrealised_pnl_and_protection(db, tmp_path):
    _healthy_bots(db)
    _protected_position(db)
    db.beat(EXIT_MANAGER, "RECONCILED", marks=[Mark("AAA", 10.05, NOW.timestamp())])
    client = _app(db, tmp_path)

    [row] = client.get("/api/positions").json()["positions"]
    bots = client.get("/api/bots").json()["bots"]

    assert (row["symbol"], row["last"], row["unrealized_pnl"]) == ("AAA", 10.05, 5.0)
    assert row["to_target_pct"] == pytest.approx((10.18 - 10.05) / 10.05 * 100, abs=0.01)
    assert row["to_stop_pct"] == pytest.approx((9.91 - 10.05) / 10.05 * 100, abs=0.01)
    assert row["protection"]["text"] == "stop working" and row["age_s"] == 1800
    assert [b["name"] for b in bots] == ["exit_manager", "day_trader"]
    assert bots[0]["alive"] and bots[0]["pid"] == os.getpid()


def test_api_bots_show_the_exit_managers_hot_standby_under_it_while_it_waits(db, tmp_path):
    """The supervisor's lock file lists the standby (no heartbeat, no IB connection of its
    own): the dashboard shows it waiting under the exit manager, and gone once it is."""
    _healthy_bots(db)
    lock = SupervisorLock(tmp_path / "no.lock")  # the file _app's sources read
    lock.acquire()
    me = psutil.Process()
    record = {"pid": me.pid, "create_time": me.create_time(), "started_at": time.time() - 60,
              "state": "WAITING", "restarts": 0, "standby": True}  # fmt: skip
    try:
        lock.update({EXIT_MANAGER: {}, f"{EXIT_MANAGER} standby": record, "day_trader": {}})
        client = _app(db, tmp_path)
        bots = client.get("/api/bots").json()["bots"]
        assert [b["name"] for b in bots] == ["exit_manager", "exit_manager standby", "day_trader"]
        standby = bots[1]
        assert (standby["state"], standby["alive"], standby["pid"]) == ("WAITING", True, me.pid)
        assert standby["heartbeat_state"] is None and standby["uptime_s"] >= 60

        lock.update({EXIT_MANAGER: {}, f"{EXIT_MANAGER} standby": {**record, "pid": 2**22 + 7}})

        def standby_row() -> tuple:
            row = client.get("/api/bots").json()["bots"][1]
            return row["state"], row["alive"], row["pid"]

        wait_for(lambda: standby_row() == ("STOPPED", False, None), 5, "the standby gone")
    finally:
        lock.release()


def test_actions_refuse_a_missing_or_wrong_token_and_an_unconfirmed_request(db, tmp_path):
    client = _app(db, tmp_path)
    body = {"who": "ann", "confirm": True}

    assert client.post("/api/actions/halt-entries", json=body).status_code == 401
    assert (
        client.post("/api/actions/halt-entries", json=body, headers=_auth("x")).status_code == 401
    )
    unconfirmed = client.post("/api/actions/halt-entries", json={"who": "ann"}, headers=_auth())
    nameless = client.post("/api/actions/halt-entries", json={"confirm": True}, headers=_auth())

    assert unconfirmed.status_code == 400 and nameless.status_code == 400
    assert db.entries_halted() is None and db.get_operator_actions() == []


def test_halt_and_resume_entries_are_recorded_with_who_and_when(db, tmp_path):
    client = _app(db, tmp_path)
    body = {"who": "ann", "confirm": True}

    halted = client.post("/api/actions/halt-entries", json=body, headers=_auth())
    assert halted.status_code == 200
    assert db.entries_halted() == "halted from the dashboard by ann (testclient)"
    resumed = client.post("/api/actions/resume-entries", json=body, headers=_auth())

    assert resumed.status_code == 200 and db.entries_halted() is None
    actions = db.get_operator_actions()
    assert [(a["action"], a["who"], a["at"]) for a in actions] == [
        ("resume_entries", "ann (testclient)", NOW.isoformat()),
        ("halt_entries", "ann (testclient)", NOW.isoformat()),
    ]
    assert actions[0]["outcome"].startswith("entries resumed")


def test_flatten_one_asks_the_exit_manager_and_an_unknown_symbol_is_refused(db, tmp_path):
    _protected_position(db, "AAA")
    client = _app(db, tmp_path)
    body = {"who": "ann", "confirm": True}

    asked = client.post("/api/actions/flatten/AAA", json=body, headers=_auth())
    unknown = client.post("/api/actions/flatten/ZZZ", json=body, headers=_auth())

    assert asked.status_code == 200 and db.pending_exit_requests() == {"AAA": "ann (testclient)"}
    assert unknown.status_code == 409 and "ZZZ is not an open position" in unknown.json()["error"]
    [action] = db.get_operator_actions()
    assert (action["action"], action["target"]) == ("flatten", "AAA")


def test_flatten_all_runs_liquidate_all_and_records_its_outcome(db, tmp_path):
    settings = get_settings()
    actions = Actions(db, settings, {"IB_PORT": "1"})  # no gateway there: it must say so
    sources = Sources(db, settings, tmp_path / "no.lock", LogWatch(tmp_path / "logs"))
    client = TestClient(create_app(sources, actions, TOKEN))

    started = client.post("/api/actions/flatten-all", json={"who": "ann", "confirm": True},
                          headers=_auth())  # fmt: skip
    actions.wait_liquidation(60)

    assert started.status_code == 202
    assert actions.liquidate_argv()[1:3] == [str(PROJECT_ROOT / "liquidate_all.py"), "--yes"]
    [action] = db.get_operator_actions()
    assert action["action"] == "flatten_all" and action["outcome"].startswith(
        "liquidate_all exit 1"
    )


def test_no_configured_secret_appears_in_the_page_or_any_response(db, tmp_path):
    _healthy_bots(db)
    db.beat("day_trader", "regular", f"llm key {SECRET_KEY} in a detail by mistake")
    client = _app(db, tmp_path)

    bodies = [client.get(path).text for path in ("/", "/health", "/api/snapshot", "/api/bots")]

    assert all(SECRET_KEY not in body and TOKEN not in body for body in bodies)
    assert "***" in bodies[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dashboard(tmp_path: Path, *argv: str, token: str = "") -> subprocess.Popen[str]:
    env = {**os.environ, "DASHBOARD_TOKEN": token, "LOG_DIR": str(tmp_path / "logs")}
    return subprocess.Popen(
        [sys.executable, "dashboard.py", "--db", str(tmp_path / "trading_history.db"), *argv],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_dashboard_py_alone_serves_the_stream_and_health_from_a_database(db, tmp_path):
    _protected_position(db)
    port = _free_port()
    process = _dashboard(tmp_path, "--port", str(port))
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert f"http://127.0.0.1:{port}/#token=" in line and "PAPER" in line

        def health() -> int | None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                return conn.getresponse().status
            except OSError:
                return None

        assert wait_for(health, 20, "the dashboard answering") == 503  # no bot runs
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/stream")
        answer = conn.getresponse()
        assert answer.getheader("content-type", "").startswith("text/event-stream")
        assert answer.readline() == b"event: snapshot\n"
        data = answer.readline().decode()
        assert json.loads(data.removeprefix("data: "))["positions"][0]["symbol"] == "AAA"
        conn.close()
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "set DASHBOARD_TOKEN"),
        (["--port", "99999"], "argument --port: '99999' is outside [1, 65535]"),
        (["--no-web", "--no-alerts"], "--no-web leaves nothing to do"),
    ],
)
def test_dashboard_refuses_a_public_bind_without_token_and_bad_flags_in_one_line(
    db, tmp_path, argv, message
):
    process = _dashboard(tmp_path, *argv)
    _, err = process.communicate(timeout=30)

    assert process.returncode == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_dashboard_on_a_public_address_starts_with_a_token(db, tmp_path):
    port = _free_port()
    process = _dashboard(tmp_path, "--host", "0.0.0.0", "--port", str(port), token=TOKEN)
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert f"http://0.0.0.0:{port}/ (token: DASHBOARD_TOKEN)" in line and TOKEN not in line
    finally:
        process.terminate()
        process.wait(10)


# -- in a real browser ------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _browser():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1200"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _shown_pnls(driver) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """symbol -> the unrealised P&L shown, read in one go (the rows are redrawn each update)."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#positions tbody tr')]"
        ".map((r) => [r.dataset.symbol, r.querySelector('td.pnl').textContent]));"
    )


@pytest.mark.timeout(240)
def test_browser_sees_a_position_and_its_pnl_move_and_halting_entries_stops_the_day_trader(
    tmp_path,
):
    from selenium.webdriver.common.by import By

    port = _free_port()
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "CLOCK", "DATABASE"))}
    env.update(LOG_DIR=str(run_dir / "logs"), DASHBOARD_TOKEN=TOKEN, ALERT_URLS="")
    output = (tmp_path / "supervisor.out").open("w")
    process = subprocess.Popen(
        [sys.executable, "supervisor.py", "--sim", "--speed", "200", "--symbols", "6",
         "--date", "2026-11-24", "--start", "09:28", "--run-dir", str(run_dir),
         "--dashboard-port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output.close()
    driver = None
    try:
        info = wait_for(lambda: _json_file(run_dir / "sim.json"), 60, "the simulated day")
        db = TradingDatabase(
            info["database"], clock=MarketClock(FileTimeSource(info["clock_file"]))
        )
        wait_for(lambda: _status(port, "/health"), 60, "the dashboard answering")
        driver = _browser()
        driver.get(f"http://127.0.0.1:{port}/#token={TOKEN}")
        wait_for(lambda: "PAPER TRADING" in driver.find_element(By.ID, "mode-banner").text, 30,
                 "the paper banner")  # fmt: skip

        # A position appears, and its unrealised P&L moves while it is held.
        first: dict[str, str] = {}

        def pnl_moved() -> bool:
            shown = {s: p for s, p in _shown_pnls(driver).items() if p != "-"}
            for symbol, pnl in shown.items():
                first.setdefault(symbol, pnl)
            return any(first[s] != p for s, p in shown.items())

        wait_for(pnl_moved, 120, "a shown position's P&L to move")

        # Halt entries from the page: confirmed, then refused by the day trader.
        driver.find_element(By.ID, "halt-entries").click()
        driver.find_element(By.ID, "who").send_keys("browser test")
        driver.find_element(By.ID, "confirm-ok").click()
        wait_for(lambda: "ENTRIES HALTED" in driver.find_element(By.ID, "entries-status").text,
                 20, "the page to show the halt")  # fmt: skip
        [action] = db.get_operator_actions()
        assert (action["action"], action["who"]) == ("halt_entries", "browser test (127.0.0.1)")
        wait_for(lambda: "kill_switch" in driver.find_element(By.ID, "refusals").text, 60,
                 "the day trader refusing entries (kill_switch) on the page")  # fmt: skip
        halted_at = action["at"]
        later_entries = [i for i in db.get_intents_by_date("2026-11-24")
                         if i["side"] == "BUY" and i["created_at"] > halted_at]  # fmt: skip
        assert later_entries == []
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        print(f"dashboard screenshot: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _json_file(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(port: int, path: str) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None


@pytest.mark.parametrize(
    ("moment", "phase", "minutes"),
    [
        (datetime(2026, 11, 27, 12, 0, tzinfo=NEW_YORK), "regular session", 60.0),
        (datetime(2026, 11, 27, 12, 50, tzinfo=NEW_YORK), "end-of-day flatten", 10.0),
        (datetime(2026, 11, 27, 13, 30, tzinfo=NEW_YORK), "after the close", None),
        (datetime(2026, 11, 26, 12, 0, tzinfo=NEW_YORK), "closed (no session today)", None),
    ],
)
def test_phase_and_minutes_to_the_close_follow_the_exchange_calendar_on_a_half_day(
    tmp_path, moment, phase, minutes
):
    clock = MarketClock(ManualTimeSource(moment))  # the 27th closes at 13:00; the 26th is a holiday
    db = TradingDatabase(tmp_path / "t.db", clock=clock, if_missing="create")

    market = _app(db, tmp_path).get("/api/snapshot").json()["market"]

    assert (market["phase"], market["minutes_to_close"]) == (phase, minutes)
    assert market.get("half_day", False) is (moment.day == 27)


def test_dashboard_stops_when_the_supervisor_that_started_it_is_gone(db, tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    process = _dashboard(tmp_path, "--port", str(_free_port()), "--parent-pid", str(parent.pid))
    try:
        assert process.stdout is not None and "dashboard:" in process.stdout.readline()
        parent.kill()  # a supervisor killed with -9
        parent.wait(10)
        assert process.wait(timeout=20) == 0
    finally:
        parent.kill()
        if process.poll() is None:
            process.kill()


def test_refusals_come_from_the_days_logs_without_reading_weeks_of_old_run_files(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    old = logs / "day_trader_run_20261101_090000.json"
    old.write_text(
        json.dumps(
            {
                "event": "entry_decision",
                "bot": "day_trader",
                "decision": "skip",
                "symbol": "OLD",
                "reason": "no_signal",
            }
        )
        + "\n"
    )
    os.utime(old, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    today = logs / "day_trader_run_20261124_090000.json"
    today.write_text("".join(json.dumps(
        {"event": "entry_decision", "bot": "day_trader", "decision": d, "symbol": s,
         "reason": r, "exchange_time": "2026-11-24T10:00:00-05:00"}) + "\n"
        for d, s, r in (("skip", "AAA", "kill_switch"), ("enter", "BBB", "enter"))))  # fmt: skip
    watch = LogWatch(logs)

    watch.poll()

    assert [(r["symbol"], r["reason"]) for r in watch.refusals] == [("AAA", "kill_switch")]
