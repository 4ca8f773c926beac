"""Alerts where the trader is: apprise (Telegram, Discord, Slack, e-mail, webhooks, ntfy, ...).

    python alerts.py --kinds            # the kinds, for ALERTS_OFF
    python alerts.py --send-test        # one test alert to every ALERT_URLS channel

The alerts never run inside a trading process: the dashboard's process (started by the
supervisor) follows the bots' and the supervisor's JSON logs, turns events into alerts
(`alerts_from_record`), and hands them to `AlertSender`: a queue and a worker per channel,
each send bounded by ALERT_TIMEOUT_SECONDS, so a hung channel delays nothing but itself. A
failing channel is logged once (and its recovery once), never retried in a loop; repeats of
one kind for one subject are sent once per ALERT_REPEAT_SECONDS; ALERTS_OFF turns kinds off.
Each alert raised is recorded in the database (the dashboard lists them).
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from core import cli
from core.logs import get_logger, scrub, setup_logging
from core.settings import Settings, SettingsError, get_settings
from observability import DatabaseError, TradingDatabase
from trading.entries import DAILY_LOSS_LIMIT
from view_logs import Follower

log = get_logger("alerts")
QUEUE_SIZE = 500
SUMMARY_FLAG = "alerts_daily_summary"  # the trading date whose close summary was sent
POLL_S = 0.5


class AlertKind(StrEnum):
    FILL = "fill"
    STOP_LOSS = "stop_loss"
    BOT_CRASH = "bot_crash"
    BOT_RESTART = "bot_restart"
    CRASH_LOOP = "crash_loop"
    UNPROTECTED = "unprotected"
    STALE_DATA = "stale_data"
    CONNECTION_LOST = "connection_lost"
    COMPETING_SESSION = "competing_session"  # IB 10197
    IB_CONNECTIVITY = "ib_connectivity"  # IB 1100 / 1101 / 1102
    DAILY_LOSS_LIMIT = "daily_loss_limit"
    DAILY_SUMMARY = "daily_summary"


KIND_MEANING: dict[AlertKind, str] = {
    AlertKind.FILL: "every entry and exit fill",
    AlertKind.STOP_LOSS: "a position closed at its stop",
    AlertKind.BOT_CRASH: "a bot died or hung",
    AlertKind.BOT_RESTART: "the supervisor restarts a bot",
    AlertKind.CRASH_LOOP: "the supervisor gave up on a crash-looping bot",
    AlertKind.UNPROTECTED: "a position has no stop at IB",
    AlertKind.STALE_DATA: "stale or delayed market data on a held symbol",
    AlertKind.CONNECTION_LOST: "a bot lost the gateway for longer than ALERT_DISCONNECT_SECONDS",
    AlertKind.COMPETING_SESSION: "IB 10197: another session took the market data",
    AlertKind.IB_CONNECTIVITY: "IB 1100 (lost) / 1101 / 1102 (restored)",
    AlertKind.DAILY_LOSS_LIMIT: "the daily loss limit halted entries",
    AlertKind.DAILY_SUMMARY: "the day's P&L at the close",
}
_SEVERE = {
    AlertKind.BOT_CRASH,
    AlertKind.CRASH_LOOP,
    AlertKind.UNPROTECTED,
    AlertKind.CONNECTION_LOST,
    AlertKind.COMPETING_SESSION,
    AlertKind.DAILY_LOSS_LIMIT,
}


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    subject: str  # what repeats are counted for: a symbol, a bot, an exec id
    title: str
    body: str


@dataclass(frozen=True)
class AlertConfig:
    urls: tuple[str, ...]
    off: frozenset[AlertKind] = frozenset()
    repeat_s: float = 300.0
    timeout_s: float = 10.0
    disconnect_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertConfig:
        """Raises SettingsError naming an unknown kind in ALERTS_OFF."""
        known = {k.value for k in AlertKind}
        for name in settings.alerts_off:
            if name not in known:
                raise SettingsError(
                    f"setting ALERTS_OFF={','.join(settings.alerts_off)!r} is invalid: "
                    f"{name!r} is not an alert kind; use some of {', '.join(sorted(known))}"
                )
        raw = settings.alert_urls.reveal() if settings.alert_urls else ""
        return cls(
            urls=tuple(u for u in raw.replace(",", " ").split() if u),
            off=frozenset(AlertKind(n) for n in settings.alerts_off),
            repeat_s=settings.alert_repeat_seconds,
            timeout_s=settings.alert_timeout_seconds,
            disconnect_s=settings.alert_disconnect_seconds,
        )


# -- events -> alerts (pure) --------------------------------------------------------------------
def _money(value: Any) -> str:
    return f"{float(value):+,.2f}" if isinstance(value, int | float) else "?"


def alerts_from_record(record: Mapping[str, Any], held: Callable[[str], bool]) -> list[Alert]:
    """The alerts one JSON log line raises (most raise none). `held(symbol)`: whether the
    account holds it (stale data matters only there)."""
    event = record.get("event")
    bot = str(record.get("bot", "?"))
    symbol = str(record.get("symbol", ""))
    child = str(record.get("child", ""))
    code = record.get("code")
    if event == "entry_filled":
        return [Alert(AlertKind.FILL, str(record.get("exec_id") or symbol),
                      f"bought {symbol}", f"{record.get('shares')} {symbol} @ {record.get('price')}"
                      f" (position {record.get('position')})")]  # fmt: skip
    if event == "exit_fill":
        return [Alert(AlertKind.FILL, str(record.get("exec_id") or symbol), f"sold {symbol}",
                      f"{record.get('shares')} {symbol} @ {record.get('price')}"
                      f" ({record.get('purpose')})")]  # fmt: skip
    if event == "position_closed" and record.get("reason") == "STOP_LOSS":
        return [Alert(AlertKind.STOP_LOSS, symbol, f"stop loss: {symbol}",
                      f"{symbol} closed at {record.get('exit_price')}, P&L "
                      f"{_money(record.get('pnl'))} ({record.get('pnl_pct')}%)")]  # fmt: skip
    if event in {"bot_failed", "bot_hung"}:
        why = record.get("why") or f"hung (last heartbeat {record.get('last_beat')})"
        return [Alert(AlertKind.BOT_CRASH, child, f"{child} failed", str(why))]
    if event == "bot_restarting":
        return [Alert(AlertKind.BOT_RESTART, child, f"{child} restarted",
                      f"restart number {record.get('restarts')}")]  # fmt: skip
    if event == "crash_loop_gave_up":
        return [Alert(AlertKind.CRASH_LOOP, child, f"gave up on {child}",
                      f"{record.get('limit')}; last exit: {record.get('last_exit')}. "
                      f"{record.get('action', '')}")]  # fmt: skip
    if event == "position_unprotected":
        return [Alert(AlertKind.UNPROTECTED, symbol, f"{symbol} has no stop at IB",
                      str(record.get("reason") or record.get("action") or ""))]  # fmt: skip
    if event in {"market_data_stale", "delayed_market_data", "quote_fault"} and held(symbol):
        what = record.get("fault") or ("delayed" if event == "delayed_market_data" else "stale")
        return [Alert(AlertKind.STALE_DATA, symbol, f"{what} market data on {symbol}",
                      f"{bot}: {what} data on held {symbol}; the server stop stays in charge")]  # fmt: skip
    if event in {"ib_alert", "ib_message"} and code == 10197:
        return [Alert(AlertKind.COMPETING_SESSION, bot, "IB 10197: competing session",
                      f"{bot}: {record.get('text')}")]  # fmt: skip
    if event in {"ib_alert", "ib_message"} and code in {1100, 1101, 1102}:
        state = "lost" if code == 1100 else "restored"
        return [Alert(AlertKind.IB_CONNECTIVITY, f"{bot}:{code}", f"IB {code}: connectivity {state}",
                      f"{bot}: {record.get('text')}")]  # fmt: skip
    if event == "entry_decision" and record.get("reason") == DAILY_LOSS_LIMIT:
        return [Alert(AlertKind.DAILY_LOSS_LIMIT, "day", "daily loss limit hit",
                      "new entries are halted for the day; exits go on")]  # fmt: skip
    return []


@dataclass
class ConnectionWatch:
    """A bot that lost the gateway raises one alert once the loss has lasted `after_s`."""

    after_s: float
    lost_since: dict[str, float] = field(default_factory=dict)
    alerted: set[str] = field(default_factory=set)

    def see(self, record: Mapping[str, Any], now: float) -> None:
        bot, event = str(record.get("bot", "?")), record.get("event")
        if event in {"disconnected", "connect_failed"}:
            self.lost_since.setdefault(bot, now)
        elif event in {"connected", "connectivity_restored"}:
            self.lost_since.pop(bot, None)
            self.alerted.discard(bot)

    def due(self, now: float) -> list[Alert]:
        out = []
        for bot, since in self.lost_since.items():
            if bot not in self.alerted and now - since >= self.after_s:
                self.alerted.add(bot)
                out.append(Alert(AlertKind.CONNECTION_LOST, bot, f"{bot} lost the gateway",
                                 f"no connection for {now - since:.0f} s; reconnecting"))  # fmt: skip
        return out


@dataclass
class RepeatLimit:
    """One alert per (kind, subject) within `window_s` real seconds; the rest are counted."""

    window_s: float
    last_sent: dict[tuple[AlertKind, str], float] = field(default_factory=dict)
    suppressed: dict[tuple[AlertKind, str], int] = field(default_factory=dict)

    def allow(self, alert: Alert, now: float) -> bool:
        key = (alert.kind, alert.subject)
        last = self.last_sent.get(key)
        if last is not None and now - last < self.window_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self.last_sent[key] = now
        return True


# -- sending ----------------------------------------------------------------------------------
def _channel_name(url: str, index: int) -> str:
    """How a channel is named in the logs: its scheme only (the URL holds its credentials)."""
    return f"channel {index + 1} ({url.split('://', 1)[0]}://)"


@dataclass
class _Channel:
    name: str
    url: str
    inbox: queue.Queue[tuple[Alert, int | None]]
    failing: bool = False
    stuck: threading.Thread | None = None  # a send that overran its timeout, still running


class AlertSender:
    """Queues alerts and sends them from one worker thread per channel.

    `submit` never blocks: a full queue drops the alert (logged). Each send runs in a thread
    of its own joined with `timeout_s`, so a channel that hangs holds up only its own later
    alerts, which fail at once while it hangs. Outcomes land in the database row of the alert.
    """

    def __init__(
        self,
        urls: Sequence[str],
        timeout_s: float,
        db: TradingDatabase | None = None,
        notify: Callable[[str, Alert], bool] | None = None,
        prepare: Callable[[str], None] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.db = db
        self._notify = notify or _apprise_notify
        # Loading the sender (apprise and its plugins: ~0.7 s, far more on a busy machine)
        # happens once per channel before its first send, outside the send's timeout.
        self._prepare = prepare or (_apprise_prepare if notify is None else None)
        self._stop = threading.Event()
        self.channels = [
            _Channel(_channel_name(url, i), url, queue.Queue(QUEUE_SIZE))
            for i, url in enumerate(urls)
        ]
        self.sent = 0
        self.failed = 0
        self._counts_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, args=(c,), name=f"alerts-{i}", daemon=True)
            for i, c in enumerate(self.channels)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, alert: Alert, alert_id: int | None = None) -> None:
        for channel in self.channels:
            try:
                channel.inbox.put_nowait((alert, alert_id))
            except queue.Full:
                log.error("alert_dropped", channel=channel.name, kind=alert.kind.value,
                          reason=f"{QUEUE_SIZE} alerts already waiting")  # fmt: skip

    def _work(self, channel: _Channel) -> None:
        if self._prepare is not None:
            with contextlib.suppress(Exception):  # the first send reports what is wrong
                self._prepare(channel.url)
        while not self._stop.is_set():
            try:
                alert, alert_id = channel.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            error = self._send(channel, alert)
            with self._counts_lock:
                if error is None:
                    self.sent += 1
                else:
                    self.failed += 1
            if error is None and channel.failing:
                channel.failing = False
                log.info("alert_channel_recovered", channel=channel.name)
            elif error is not None and not channel.failing:
                channel.failing = True  # said once; its later failures only count
                log.error("alert_channel_failed", channel=channel.name, error=error,
                          action="check ALERT_URLS; later alerts still try it, silently")  # fmt: skip
            if self.db is not None and alert_id is not None:
                try:
                    self.db.set_alert_delivery(
                        alert_id, "sent" if error is None else f"failed: {error}"[:200]
                    )
                except DatabaseError as exc:
                    log.error("alert_not_recorded", error=str(exc))
            channel.inbox.task_done()

    def _send(self, channel: _Channel, alert: Alert) -> str | None:
        """None when the channel took the alert, else why not."""
        if channel.stuck is not None and channel.stuck.is_alive():
            return f"still waiting on an earlier alert (over {self.timeout_s:g} s)"
        outcome: dict[str, Any] = {}

        def attempt() -> None:
            try:
                outcome["ok"] = self._notify(channel.url, alert)
            except Exception as exc:  # a channel's failure must never stop the worker
                outcome["error"] = scrub(repr(exc))[:200]

        sender = threading.Thread(target=attempt, name=f"{channel.name} send", daemon=True)
        sender.start()
        sender.join(self.timeout_s)
        if sender.is_alive():
            channel.stuck = sender
            return f"no answer within {self.timeout_s:g} s"
        if "error" in outcome:
            return str(outcome["error"])
        return None if outcome.get("ok") else "the channel refused the alert"

    def drain(self, timeout: float) -> bool:
        """Wait until every queued alert was tried; False if some still wait after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.inbox.unfinished_tasks == 0 for c in self.channels):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()


def _apprise_prepare(url: str) -> None:
    """Import apprise and load the plugin for `url` (what a first send would otherwise do)."""
    import apprise

    apprise.Apprise().add(url)


def _apprise_notify(url: str, alert: Alert) -> bool:
    import apprise

    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise ValueError("apprise does not understand this URL")
    kind = apprise.NotifyType.FAILURE if alert.kind in _SEVERE else apprise.NotifyType.INFO
    return bool(notifier.notify(body=alert.body, title=alert.title, notify_type=kind))


# -- the watcher ------------------------------------------------------------------------------
@dataclass
class AlertWatcher:
    """Follows the logs and the clock, raises alerts, filters and rate-limits, and sends."""

    db: TradingDatabase
    config: AlertConfig
    log_dir: Path
    sender: AlertSender
    wall: Callable[[], float] = time.time
    mode: str = "paper"

    def __post_init__(self) -> None:
        self.follower = Follower(self.log_dir)
        if self.log_dir.is_dir():
            self.follower.skip_existing()  # a restarted watcher does not resend the past
        self.connections = ConnectionWatch(self.config.disconnect_s)
        self.repeats = RepeatLimit(self.config.repeat_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def raise_alert(self, alert: Alert) -> bool:
        """Send `alert` unless its kind is off or it repeats too soon; True when queued."""
        if alert.kind in self.config.off or not self.repeats.allow(alert, self.wall()):
            return False
        prefix = "LIVE" if self.mode == "live" else "paper"
        titled = Alert(
            alert.kind, alert.subject, scrub(f"[{prefix}] {alert.title}"), scrub(alert.body)
        )
        alert_id = self.db.record_alert(alert.kind.value, titled.title, titled.body, "queued")
        self.sender.submit(titled, alert_id)
        return True

    def poll_once(self) -> None:
        held = {row["symbol"] for row in self.db.get_active_positions()}
        now = self.wall()
        for record in self.follower.poll() if self.log_dir.is_dir() else ():
            self.connections.see(record, now)
            for alert in alerts_from_record(record, held.__contains__):
                self.raise_alert(alert)
        for alert in self.connections.due(now):
            self.raise_alert(alert)
        summary = self.daily_summary_due()
        if summary is not None:
            self.raise_alert(summary)

    def daily_summary_due(self) -> Alert | None:
        """The day's summary once the close has passed (once per trading date)."""
        clock = self.db.clock
        now = clock.now()
        session = clock.session(now.date())
        day = now.date().isoformat()
        if session is None or now < session.close or self.db.get_flag(SUMMARY_FLAG) == day:
            return None
        self.db.set_flag(SUMMARY_FLAG, day)
        from reports import build_day_report, net_pnl_text

        report = build_day_report(self.db, day)
        reasons = ", ".join(f"{k} {v}" for k, v in report.exit_reasons().items()) or "none"
        win = "-" if report.win_rate is None else f"{report.win_rate:.0f}%"
        body = (f"{net_pnl_text(report)}; {len(report.round_trips)} round trips, win rate {win}; "
                f"exits: {reasons}; still open: {report.still_open or 'none'}")  # fmt: skip
        return Alert(AlertKind.DAILY_SUMMARY, day, f"day summary {day}", body)

    def start(self) -> AlertWatcher:
        self._thread = threading.Thread(target=self._run, name="alert-watcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        log.info("alerts_started", channels=len(self.config.urls), off=sorted(self.config.off))
        while not self._stop.wait(POLL_S):
            try:
                self.poll_once()
            except (DatabaseError, OSError) as exc:
                log.error("alerts_poll_failed", error=str(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sender.drain(self.config.timeout_s)
        self.sender.stop()


def start_alert_watcher(db: TradingDatabase, settings: Settings, log_dir: Path) -> AlertWatcher:
    """The running watcher for the settings' channels. Raises SettingsError (ALERTS_OFF)."""
    config = AlertConfig.from_settings(settings)
    if not config.urls:
        log.warning("alerts_without_channels", action="set ALERT_URLS (apprise URLs) in .env")
    sender = AlertSender(config.urls, config.timeout_s, db)
    return AlertWatcher(db, config, log_dir, sender, mode=settings.trading_mode).start()


# -- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog="alerts.py", description="List alert kinds or send a test.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--kinds", action="store_true", help="list the alert kinds (ALERTS_OFF)")
    group.add_argument("--send-test", action="store_true", help="one test alert to every channel")
    return parser


def send_test(settings: Settings) -> int:
    config = AlertConfig.from_settings(settings)
    if not config.urls:
        print("alerts: error: ALERT_URLS is empty: set apprise URLs in .env", file=sys.stderr)
        return 2
    sender = AlertSender(config.urls, config.timeout_s)
    sender.submit(Alert(AlertKind.FILL, "test", "test alert", "alerts reach you"))
    deadline = time.monotonic() + config.timeout_s + 2
    while sender.sent + sender.failed < len(config.urls) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"alerts: {sender.sent} of {len(config.urls)} channel(s) took the test alert")
    return 0 if sender.sent == len(config.urls) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kinds:
        for kind in AlertKind:
            print(f"{kind.value:<18} {KIND_MEANING[kind]}")
        return 0
    try:
        settings = get_settings()
        setup_logging("alerts", log_dir=settings.log_dir, level=settings.log_level)
        return send_test(settings)
    except SettingsError as exc:
        print(f"alerts: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
