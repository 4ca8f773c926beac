"""Alerts: which events raise which alert, repeats limited, kinds turned off, a hung or failing
channel isolated and logged once, and a simulated day's alerts arriving at a local webhook
and a local SMTP server (apprise's json:// and mailto://)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sim_support import SIM_DATE, wait_for

from alerts import (
    Alert,
    AlertConfig,
    AlertKind,
    AlertSender,
    AlertWatcher,
    ConnectionWatch,
    RepeatLimit,
    alerts_from_record,
)
from core.clock import FileTimeSource, MarketClock
from core.settings import PROJECT_ROOT
from ibsim.ctl import call
from observability import TradingDatabase


# -- local channels ---------------------------------------------------------------------------
class Webhook:
    """A local HTTP server apprise's json:// posts to; /hang never answers until released."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.startswith("/hang"):
                    hook.release.wait(30)
                else:
                    hook.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def titles(self) -> list[str]:
        return [str(m.get("title", "")) for m in self.received]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


class Mailbox:
    """A local SMTP server (aiosmtpd) apprise's mailto:// delivers to."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        box = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                box.messages.append(envelope.content.decode(errors="replace"))
                return "250 OK"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def url(self) -> str:
        return (f"mailto://127.0.0.1:{self.port}?from=bot@example.com&to=trader@example.com"
                "&mode=insecure")  # fmt: skip

    def subjects(self) -> list[str]:
        return [
            line[len("Subject: ") :]
            for message in self.messages
            for line in message.splitlines()
            if line.startswith("Subject: ")
        ]

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    yield box
    box.close()


# -- events -> alerts -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ({"event": "entry_filled", "symbol": "AAA", "shares": 10, "price": 5.0}, AlertKind.FILL),
        ({"event": "exit_fill", "symbol": "AAA", "shares": 10, "price": 5.1}, AlertKind.FILL),
        ({"event": "position_closed", "symbol": "AAA", "reason": "STOP_LOSS"}, AlertKind.STOP_LOSS),
        ({"event": "bot_failed", "child": "day_trader", "why": "exit -9"}, AlertKind.BOT_CRASH),
        ({"event": "bot_hung", "child": "exit_manager"}, AlertKind.BOT_CRASH),
        ({"event": "bot_restarting", "child": "day_trader"}, AlertKind.BOT_RESTART),
        ({"event": "crash_loop_gave_up", "child": "day_trader"}, AlertKind.CRASH_LOOP),
        ({"event": "position_unprotected", "symbol": "AAA"}, AlertKind.UNPROTECTED),
        ({"event": "quote_fault", "symbol": "AAA", "fault": "stale"}, AlertKind.STALE_DATA),
        ({"event": "delayed_market_data", "symbol": "AAA"}, AlertKind.STALE_DATA),
        ({"event": "ib_alert", "code": 10197, "text": "competing"}, AlertKind.COMPETING_SESSION),
        ({"event": "ib_message", "code": 1100, "text": "lost"}, AlertKind.IB_CONNECTIVITY),
        ({"event": "ib_message", "code": 1102, "text": "back"}, AlertKind.IB_CONNECTIVITY),
        ({"event": "entry_decision", "reason": "daily_loss_limit"}, AlertKind.DAILY_LOSS_LIMIT),
    ],
)
def test_each_listed_event_raises_its_alert_kind(record, kind):
    [alert] = alerts_from_record(record, held=lambda symbol: symbol == "AAA")
    assert alert.kind is kind


def test_stale_data_on_a_symbol_not_held_and_ordinary_events_raise_nothing():
    held = {"AAA"}.__contains__
    assert alerts_from_record({"event": "market_data_stale", "symbol": "ZZZ"}, held) == []
    assert alerts_from_record({"event": "position_closed", "reason": "PROFIT_TARGET"}, held) == []
    assert alerts_from_record({"event": "ib_message", "code": 2104}, held) == []
    assert alerts_from_record({"event": "health"}, held) == []


def test_a_repeat_within_the_window_is_held_back_and_counted():
    limit = RepeatLimit(window_s=60)
    alert = Alert(AlertKind.STALE_DATA, "AAA", "t", "b")
    other = Alert(AlertKind.STALE_DATA, "BBB", "t", "b")

    assert limit.allow(alert, 0.0) and limit.allow(other, 1.0)
    assert not limit.allow(alert, 59.0)
    assert limit.allow(alert, 61.0)
    assert limit.suppressed == {(AlertKind.STALE_DATA, "AAA"): 1}


def test_a_lost_connection_is_alerted_once_it_lasted_the_limit_and_not_after_it_is_back():
    watch = ConnectionWatch(after_s=10)
    watch.see({"bot": "exit_manager", "event": "disconnected"}, now=100.0)
    assert watch.due(105.0) == []
    [alert] = watch.due(111.0)
    assert alert.kind is AlertKind.CONNECTION_LOST and alert.subject == "exit_manager"
    assert watch.due(200.0) == []  # once per loss
    watch.see({"bot": "day_trader", "event": "disconnected"}, now=300.0)
    watch.see({"bot": "day_trader", "event": "connected"}, now=305.0)
    assert watch.due(400.0) == []


# -- sending ----------------------------------------------------------------------------------
def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def test_a_hung_channel_never_blocks_submit_nor_the_other_channel_and_is_logged_once(
    webhook, caplog
):
    caplog.set_level(logging.INFO)
    sender = AlertSender([webhook.url("hang"), webhook.url("hook")], timeout_s=2.0)
    alerts = [Alert(AlertKind.FILL, f"x{i}", f"fill {i}", "body") for i in range(5)]

    started = time.perf_counter()
    for alert in alerts:
        sender.submit(alert)
    submit_s = time.perf_counter() - started

    wait_for(lambda: len(webhook.received) == 5, 10, "the good channel's 5 alerts")
    assert sender.drain(10)
    # A submit that waited on the hung channel would take its 2 s timeout at least.
    assert submit_s < 1.0, f"submit took {submit_s:.3f} s: it must only queue"
    assert webhook.titles() == [f"fill {i}" for i in range(5)]
    assert sender.failed == 5  # the hung channel: one timeout, then "still waiting" at once
    [failed] = _events(caplog, "alert_channel_failed")
    assert failed.channel == "channel 1 (json://)" and "within 2 s" in failed.error
    sender.stop()


def test_a_slow_first_load_of_the_sender_does_not_count_against_the_first_alert(caplog):
    """Loading apprise and its plugins takes ~0.7 s, seconds on a busy machine: done inside
    the first send, it overran the timeout, so a healthy channel lost its first alerts."""
    caplog.set_level(logging.INFO)
    loaded = threading.Event()
    sent: list[str] = []

    def prepare(url: str) -> None:
        time.sleep(1.5)  # a slow import, longer than the send timeout below
        loaded.set()

    def notify(url: str, alert: Alert) -> bool:
        assert loaded.is_set(), "a send before the sender was loaded"
        sent.append(alert.title)
        return True

    sender = AlertSender(["json://hook"], timeout_s=0.5, notify=notify, prepare=prepare)
    for i in range(3):
        sender.submit(Alert(AlertKind.FILL, str(i), f"a{i}", "b"))
    assert sender.drain(10)
    assert sent == ["a0", "a1", "a2"] and sender.failed == 0
    assert not _events(caplog, "alert_channel_failed")
    sender.stop()


def test_a_failing_channel_is_tried_once_per_alert_logged_once_and_its_recovery_once(caplog):
    caplog.set_level(logging.INFO)
    answers = iter([False, False, False, True])
    calls: list[str] = []

    def notify(url: str, alert: Alert) -> bool:
        calls.append(alert.title)
        return next(answers)

    sender = AlertSender(["json://nowhere"], timeout_s=2, notify=notify)
    for i in range(4):
        sender.submit(Alert(AlertKind.FILL, str(i), f"a{i}", "b"))
    assert sender.drain(10)

    assert calls == ["a0", "a1", "a2", "a3"]  # no retries
    assert len(_events(caplog, "alert_channel_failed")) == 1
    assert len(_events(caplog, "alert_channel_recovered")) == 1
    sender.stop()


def test_a_kind_turned_off_sends_nothing_and_is_not_recorded(tmp_path):
    db = TradingDatabase(tmp_path / "t.db", if_missing="create")
    sent: list[str] = []
    sender = AlertSender(["json://x"], 2, db, notify=lambda url, a: sent.append(a.title) or True)
    config = AlertConfig(urls=("json://x",), off=frozenset({AlertKind.FILL}))
    watcher = AlertWatcher(db, config, tmp_path / "logs", sender)

    assert not watcher.raise_alert(Alert(AlertKind.FILL, "e1", "bought AAA", "b"))
    assert watcher.raise_alert(Alert(AlertKind.STOP_LOSS, "AAA", "stop loss: AAA", "b"))
    assert sender.drain(10)

    assert sent == ["[paper] stop loss: AAA"]
    assert [a["kind"] for a in db.get_alerts()] == ["stop_loss"]
    assert db.get_alerts()[0]["delivery"] == "sent"
    sender.stop()


def test_no_trading_process_loads_the_alert_or_web_stack():
    """Sending runs in the dashboard's process only: a hung channel cannot slow a trading
    loop it is not in, and the supervisor stays small."""
    probe = ("import sys, supervisor, day_trader, exit_manager, liquidate_all; "
             "print(sorted(m for m in ('alerts', 'apprise', 'starlette', 'uvicorn', 'webui')"
             " if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- a simulated day --------------------------------------------------------------------------
SPEED = 200.0


def _lock_bots(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "trading_history.db.supervisor.lock").read_text())["bots"]
    except (OSError, ValueError, KeyError):
        return {}


@pytest.mark.timeout(180)
def test_a_simulated_day_with_a_stop_a_kill_and_a_gateway_drop_alerts_the_webhook_and_mail(
    tmp_path, webhook, mailbox
):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "CLOCK", "DATABASE"))}
    env.update(
        LOG_DIR=str(run_dir / "logs"),
        # A hung channel beside them: the others' alerts arrive all the same.
        ALERT_URLS=f"{webhook.url('hang')} {webhook.url()} {mailbox.url()}",
        ALERTS_OFF="bot_restart",  # turned off: the kill's restart must not arrive
        ALERT_DISCONNECT_SECONDS="1",
        ALERT_REPEAT_SECONDS="600",
    )
    output = (tmp_path / "supervisor.out").open("w")
    process = subprocess.Popen(
        [sys.executable, "supervisor.py", "--sim", "--speed", f"{SPEED:g}", "--symbols", "6",
         "--date", SIM_DATE.isoformat(), "--start", "09:28", "--run-dir", str(run_dir),
         "--no-dashboard"],
        cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output.close()
    try:
        info = wait_for(lambda: _sim_info(run_dir), 60, "the simulated day (sim.json)")
        db = TradingDatabase(
            info["database"], clock=MarketClock(FileTimeSource(info["clock_file"]))
        )

        # A stop: a protected position whose price falls through its stop.
        def protected_symbol() -> str | None:
            for row in db.get_active_positions():
                stops = [i for i in db.get_open_intents(symbol=row["symbol"])
                         if i["order_type"] == "STP" and i["state"] == "SUBMITTED"]  # fmt: skip
                if stops:
                    return str(row["symbol"])
            return None

        symbol = wait_for(protected_symbol, 90, "a protected position")
        stop = float(db.get_active_position(symbol)["stop_loss_price"])
        call(info["control_port"], "set_price", {"symbol": symbol, "price": round(stop * 0.97, 2)})
        wait_for(lambda: any(t == f"[paper] stop loss: {symbol}" for t in webhook.titles()), 30,
                 "the stop-loss alert at the webhook")  # fmt: skip

        # A kill -9 of the day trader: the crash alert, never the (turned off) restart.
        pid = wait_for(lambda: _lock_bots(run_dir).get("day_trader", {}).get("pid"), 30, "pid")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "[paper] day_trader failed" in webhook.titles(), 30, "the crash alert")
        wait_for(lambda: (_lock_bots(run_dir).get("day_trader", {}).get("pid") or pid) != pid,
                 30, "the day trader restarted")  # fmt: skip

        # A gateway drop longer than ALERT_DISCONNECT_SECONDS.
        call(info["control_port"], "restart", {"down_seconds": 3.0})
        wait_for(lambda: any("lost the gateway" in t for t in webhook.titles()), 30,
                 "the lost-connection alert")  # fmt: skip

        def mailed() -> bool:
            subjects = set(mailbox.subjects())
            wanted = {f"[paper] stop loss: {symbol}", "[paper] day_trader failed"}
            return wanted <= subjects and any("lost the gateway" in s for s in subjects)

        wait_for(mailed, 30, "the same alerts by mail")
        assert not any("restarted" in t for t in webhook.titles() + mailbox.subjects())
        kinds = {a["kind"] for a in db.get_alerts(500)}
        assert {"stop_loss", "bot_crash", "connection_lost", "fill"} <= kinds
        assert "bot_restart" not in kinds
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _sim_info(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "sim.json").read_text())
    except (OSError, ValueError):
        return None


def test_the_day_summary_is_raised_once_after_the_close_with_the_days_net_pnl(tmp_path):
    from datetime import datetime

    from core.clock import NEW_YORK, ManualTimeSource

    source = ManualTimeSource(datetime(2026, 11, 24, 15, 59, tzinfo=NEW_YORK))
    db = TradingDatabase(tmp_path / "t.db", clock=MarketClock(source), if_missing="create")
    sender = AlertSender([], 1)
    watcher = AlertWatcher(db, AlertConfig(urls=()), tmp_path / "logs", sender)

    assert watcher.daily_summary_due() is None  # before the close
    source.set(datetime(2026, 11, 24, 16, 0, 5, tzinfo=NEW_YORK))
    summary = watcher.daily_summary_due()

    assert summary is not None and summary.kind is AlertKind.DAILY_SUMMARY
    assert summary.title == "day summary 2026-11-24" and "net" in summary.body
    assert watcher.daily_summary_due() is None  # once per trading date


def test_an_unknown_kind_in_alerts_off_is_refused_naming_the_kinds():
    from dataclasses import replace

    from core.settings import SettingsError, get_settings

    settings = replace(get_settings(), alerts_off=("fills",))
    with pytest.raises(SettingsError, match="'fills' is not an alert kind; use some of"):
        AlertConfig.from_settings(settings)
