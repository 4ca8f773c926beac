"""The pre-market phases and the LLM review inside the running day trader, end to end.

The real program (`day_trader.py` as a subprocess, LLM review on) trades a seeded simulated day
from 05:30 New York at 600x against the project's simulated gateway, with the DeepSeek API
answered by a local HTTP server (the OpenAI-compatible chat completions API, as in
tests/test_llm_review.py). Everything asserted is public: the JSON log lines (with their
exchange time), the database and the requests the LLM server saw.

It runs a whole morning (05:30 to the first entries after 09:37:30, about 30 real seconds):
the phases only happen at their times of day, one after the other, in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.clock import NEW_YORK
from core.settings import env_keys
from tests.test_day_trader import (
    DAY,
    ROOT,
    ExitManagerStandIn,
    entry_intents,
    events,
    gateway,
    sim_db,
    stop_trader,
    wait_until,
)
from tests.test_llm_review import APPROVE, VETO, _openai_completion

START, SPEED = dtime(5, 30), 600.0  # 90 market minutes (9 real s) to start and connect


@dataclass
class FakeDeepSeek:
    """Answers chat completions: a veto for the first symbol it is asked about, approval for
    every other. `asked` lists the symbols in the order of the requests."""

    symbols: tuple[str, ...]
    asked: list[str] = field(default_factory=list)

    @property
    def vetoed(self) -> str | None:
        return self.asked[0] if self.asked else None

    def answer(self, body: bytes) -> str:
        prompt = json.loads(body)["messages"][-1]["content"]
        symbol = next(s for s in self.symbols if f'"symbol": "{s}"' in prompt)
        self.asked.append(symbol)
        return VETO if symbol == self.vetoed else APPROVE


@pytest.fixture
def deepseek() -> Iterator[tuple[FakeDeepSeek, str]]:
    state = FakeDeepSeek(symbols=())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if not self.path.endswith("/chat/completions"):
                self.send_error(404)
                return
            payload = json.dumps(_openai_completion(state.answer(body))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/deepseek/v1"
    server.shutdown()
    server.server_close()


def start_trader_with_llm(port: int, symbols: str, tmp_path: Path, llm_url: str) -> Any:
    """day_trader.py with its LLM review on, the DeepSeek API at `llm_url`."""
    env = {k: v for k, v in os.environ.items() if k not in env_keys()}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env.pop(proxy, None)
    env.update(
        {
            "CLOCK_FILE": str(tmp_path / "clock.json"),
            "LOG_DIR": str(tmp_path / "logs"),
            "KILL_SWITCH_FILE": str(tmp_path / "KILL_SWITCH"),
            "WATCHLIST_PATH": str(tmp_path / "watchlist.json"),
            "BACKUP_DIR": str(tmp_path / "archive"),
            "STALE_TICK_SECONDS": "300",  # 0.5 real s at 600x: slack for a busy machine
            "DEEPSEEK_API_KEY": "sk-fake-deepseek-0123456789abcdef",
            "DEEPSEEK_BASE_URL": llm_url,
            "NO_PROXY": "*",
            "LANGSMITH_TRACING": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    command = [sys.executable, str(ROOT / "day_trader.py"), "--port", str(port)]
    command += ["--client-id", "2", "--db", str(tmp_path / "trading.db"), "--symbols", symbols]
    console = (tmp_path / "logs.console").open("ab")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=console, stderr=console)


class HeartbeatWatch:
    """Reads the day trader's heartbeat row (the phase it is in, as the supervisor and the
    dashboard see it) every 20 real ms and keeps each change with the gateway's time."""

    def __init__(self, tmp_path: Path, gw: Any) -> None:
        self.seen: list[tuple[datetime, str]] = []
        self._stop = threading.Event()
        self._db_path, self._gw = tmp_path, gw
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sim_db(self._db_path)
        while not self._stop.wait(0.02):
            row = db.get_heartbeats().get("day_trader")
            if row and (not self.seen or self.seen[-1][1] != row["state"]):
                self.seen.append((datetime.fromtimestamp(self._gw.now(), NEW_YORK), row["state"]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def at(hh: int, mm: int) -> datetime:
    return datetime.combine(DAY, dtime(hh, mm), NEW_YORK)


def when(line: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(line["exchange_time"])


def test_pre_market_phases_and_the_llm_review_run_at_their_times_inside_the_day_trader(
    tmp_path: Path, deepseek: tuple[FakeDeepSeek, str]
) -> None:
    llm, llm_url = deepseek
    logs = tmp_path / "logs"
    stand_in = ExitManagerStandIn(tmp_path / "trading.db")  # entries wait for its heartbeat
    try:
        with gateway(tmp_path, START, SPEED) as gw:
            symbols = tuple(gw.gateway.market.symbols)
            llm.symbols = symbols
            db = sim_db(tmp_path)
            trader = start_trader_with_llm(gw.port, ",".join(symbols), tmp_path, llm_url)
            beats = HeartbeatWatch(tmp_path, gw)
            try:
                wait_until(
                    lambda: events(logs, "connected"),
                    30,
                    "the trader connected",
                    logs,
                )
                # An approved entry reaches the database; the first symbol asked was vetoed.
                wait_until(
                    lambda: (
                        len(llm.asked) >= 2
                        and any(i["symbol"] != llm.vetoed for i in entry_intents(db))
                    ),
                    60,
                    "an approved entry after a veto",
                    logs,
                )
            finally:
                beats.close()
                assert stop_trader(trader) == 0
    finally:
        stand_in.close()

    # 07:00 aggregation: the watchlist is taken up then, not at the connect before it.
    connected = events(logs, "connected")[0]
    assert when(connected) < at(7, 0)
    watchlist = events(logs, "watchlist")
    assert watchlist and at(7, 0) <= when(watchlist[0]) < at(7, 2)
    assert sorted(watchlist[0]["symbols"]) == sorted(symbols)
    seeded = events(logs, "seeded")
    assert len(seeded) == len(symbols) and all(when(s) < at(7, 30) for s in seeded)

    # 07:30 analysis: the phase the trader reports (a beat every 10 real s: 100 market minutes
    # at 600x, so at least one lands in the two hours before the open). It evaluates only
    # feeds with a new regular-hours bar, so its rules first log decisions after 09:30.
    analysis = [t for t, state in beats.seen if state == "analysis"]
    assert analysis and all(at(7, 30) <= t < at(9, 30) for t in analysis), beats.seen
    assert beats.seen[0][0] < at(7, 0) and beats.seen[0][1] != "analysis"

    # 08:15 ticker validation: once, at its time.
    (validated,) = events(logs, "tickers_validated")
    assert at(8, 15) <= when(validated) < at(8, 17)
    assert validated["symbols"] == len(symbols)

    # The LLM review: asked after the open, its veto kept that symbol out, its approvals let
    # entries through to the database and the gateway.
    vetoed = [e["symbol"] for e in events(logs, "entry_vetoed")]
    approved = [e["symbol"] for e in events(logs, "entry_approved")]
    assert vetoed and set(vetoed) == {llm.vetoed}
    entered = {i["symbol"] for i in entry_intents(db)}
    assert llm.vetoed not in entered
    assert entered and entered <= set(approved)
    assert all(when(e) >= at(9, 30) for e in events(logs, "llm_veto") + events(logs, "llm_approve"))
