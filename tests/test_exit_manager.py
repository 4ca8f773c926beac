"""Exit manager on the simulated gateway: real ib_async clients, no mocked IB.

Each test starts its own gateway (a thread), runs the ExitManager on the test's event loop
(or as a subprocess where it must die by kill -9), and plays the day trader with its own
ib_async connection (client id 2). Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import date, datetime
from datetime import time as dtime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from ib_async import IB, MarketOrder, Stock

from core.clock import NEW_YORK, MarketClock
from core.money import stop_loss_price
from core.settings import SettingsError, check_trading_mode, get_settings
from exit_manager import AGENT, ExitManager, blocked_flag
from ib.session import BrokerSession
from ibsim.thread import GatewayThread
from observability import TradingDatabase
from tests import sim_support
from tests.mode_rule import COMBOS, combo_id, rule_refusal, set_environment
from tests.sim_support import buy, buy_async, sim_db, until, until_gateway
from tests.sim_support import client as sim_client
from trading.exits import ExitConfig
from trading.phases import DayPhase

ROOT = Path(__file__).resolve().parent.parent
TRADING_DATE = date(2026, 11, 25)  # a full Wednesday session
HALF_DAY = date(2026, 11, 27)  # the day after Thanksgiving: close 13:00
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMD")
# Wide bands: the synthetic market must not reach them by itself during a test.
CONFIG = ExitConfig(
    profit_target_pct=4.0,
    stop_loss_pct=3.0,
    backstop_gap_pct=2.0,
    adopt_grace_s=1.0,
    target_fill_grace_s=1.0,
    exit_fill_timeout_s=2.0,
    stale_tick_seconds=30.0,
)
DT = 2  # the day trader's client id
EM = 10  # the exit manager's


# -- harness (tests/sim_support.py) with this file's market -------------------------------------
gateway = partial(sim_support.gateway, symbols=SYMBOLS, trading_date=TRADING_DATE, no_shorting=True)


async def gw_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A gateway call off our loop (the gateway thread answers; our loop keeps running)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def em_sells(state: dict, symbol: str) -> list[dict]:
    return [
        o
        for o in state["open_orders"]
        if o["client_id"] == EM and o["symbol"] == symbol and o["action"] == "SELL"
    ]


def one_protective_set(state: dict, symbol: str, quantity: float) -> list[dict] | None:
    sells = em_sells(state, symbol)
    kinds = sorted(o["order_type"] for o in sells)
    if kinds != ["LMT", "STP"] or len({o["oca_group"] for o in sells}) != 1:
        return None
    if any(o["quantity"] != quantity for o in sells):
        return None
    return sells


def server_stop(state: dict, symbol: str) -> dict | None:
    """Our one working STP for `symbol` at the gateway (None when there is not exactly one)."""
    stops = [o for o in em_sells(state, symbol) if o["order_type"] == "STP"]
    return stops[0] if len(stops) == 1 else None


def stop_at(state: dict, symbol: str, price: float) -> dict | None:
    stop = server_stop(state, symbol)
    return stop if stop is not None and abs(stop["aux_price"] - price) < 1e-6 else None


async def protected(gw: GatewayThread, manager: ExitManager, symbol: str, quantity: float,
                    timeout: float = 3.0) -> list[dict]:  # fmt: skip
    """Wait for one protective set whose server STP sits at the backstop: where it goes once
    live quotes stream (until the first one it sits at the stop-loss price)."""

    def settled(state: dict) -> list[dict] | None:
        pos = manager.book.held().get(symbol)
        sells = one_protective_set(state, symbol, quantity)
        ok = sells and pos is not None and stop_at(state, symbol, pos.backstop_price)
        return sells if ok else None

    return await until_gateway(gw, settled, timeout, f"{symbol} protected, STP at the backstop")


def em_orders(state: dict, symbol: str) -> list[dict]:
    """Every order of ours for `symbol` the gateway ever accepted (working or done)."""
    return [
        o
        for o in state["open_orders"] + state["completed_orders"]
        if o["client_id"] == EM and o["symbol"] == symbol
    ]


def position(state: dict, symbol: str) -> float:
    return next((p["quantity"] for p in state["positions"] if p["symbol"] == symbol), 0.0)


def sells_executed(gw: GatewayThread, symbol: str) -> float:
    return sum(
        e["shares"] for e in gw.account.executions() if e["symbol"] == symbol and e["side"] == "SLD"
    )


@contextlib.asynccontextmanager
async def exit_manager(gw: GatewayThread, db: TradingDatabase, clock: MarketClock,
                       config: ExitConfig = CONFIG, retry_seconds: float = 0.3,
                       wait: bool = True) -> AsyncIterator[ExitManager]:  # fmt: skip
    """An ExitManager running on this loop against `gw`; stopped (not cleaned up) after."""
    settings = replace(get_settings(), ib_port=gw.port)
    session = BrokerSession(settings, EM, AGENT, retry_seconds=retry_seconds, connect_timeout=5)
    manager = ExitManager(session, db, config, clock)
    task = asyncio.ensure_future(manager.run())
    try:
        if wait:
            await until(lambda: manager.reconciled or task.done(), 10, "first reconciliation")
            assert not task.done(), task
        yield manager
    finally:
        manager.request_stop()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def day_trader(gw: GatewayThread) -> AsyncIterator[IB]:
    ib = IB()
    await ib.connectAsync("127.0.0.1", gw.port, clientId=DT, timeout=5)
    try:
        yield ib
    finally:
        ib.disconnect()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


# -- protection and closing from fills -------------------------------------------------------------
def test_entry_by_day_trader_is_protected_within_one_event_and_target_fill_closes_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                assert db.get_heartbeats()[AGENT]["state"] == "RECONCILED"
                entry = (
                    await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                ).orderStatus.avgFillPrice
                bought_at = time.monotonic()
                sells = await until_gateway(
                    gw, lambda s: one_protective_set(s, "AAPL", 100), 3, "protective pair"
                )
                reaction = time.monotonic() - bought_at
                assert reaction < 1.0, f"protection took {reaction:.3f}s: not event driven"
                row = db.get_active_position("AAPL")
                target = next(o for o in sells if o["order_type"] == "LMT")
                assert target["lmt_price"] == row["profit_target_price"]
                sells = await protected(gw, manager, "AAPL", 100)  # live quotes: the gap
                stop = next(o for o in sells if o["order_type"] == "STP")
                assert stop["aux_price"] < row["stop_loss_price"]  # the backstop sits below
                assert target["tif"] == stop["tif"] == "GTC"
                intents = db.get_open_intents(symbol="AAPL", agent=AGENT)
                assert {i["order_ref"] for i in intents} == {o["order_ref"] for o in sells}

                await gw_call(gw.faults.set_price, "AAPL", row["profit_target_price"] + 0.05)
                await until(lambda: db.was_closed_today("AAPL"), 5, "closed after target fill")
                state = await gw_call(gw.account.state)
                assert position(state, "AAPL") == 0 and not em_sells(state, "AAPL")
                closed = db.get_closed_today()[0]
                fill = next(e for e in gw.account.executions() if e["side"] == "SLD")
                assert closed["exit_reason"] == "PROFIT_TARGET"
                assert closed["exit_price"] == pytest.approx(fill["price"])
                assert closed["pnl"] == pytest.approx((fill["price"] - entry) * 100)
                trades = [t for t in db.get_trades_by_date("2026-11-25") if t["side"] == "SELL"]
                assert [t["exec_id"] for t in trades] == [fill["exec_id"]]
                assert trades[0]["pnl"] == pytest.approx((fill["price"] - entry) * 100)
                assert "AAPL" not in manager.book.held()

    run(scenario())


def _sell_rows(db: TradingDatabase, symbol: str) -> list[dict]:
    return [
        t
        for t in db.get_trades_by_date("2026-11-25")
        if t["symbol"] == symbol and t["side"] == "SELL"
    ]


def test_exit_fill_records_ib_commission_for_its_execution(tmp_path: Path) -> None:
    """Commissions were never stored: the trade row's commission stayed empty."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock), day_trader(gw) as dt:
                await buy_async(dt, "NVDA", 30, db=db, percentages=CONFIG)
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "NVDA", 30), 3, "protection"
                )
                row = db.get_active_position("NVDA")
                await gw_call(gw.faults.set_price, "NVDA", row["profit_target_price"] + 0.05)
                await until(lambda: db.was_closed_today("NVDA"), 5, "closed after target fill")
                sims = {e["exec_id"]: e for e in gw.account.executions() if e["side"] == "SLD"}
                await until(
                    lambda: all(t["commission"] is not None for t in _sell_rows(db, "NVDA")),
                    3, "commission recorded",
                )  # fmt: skip
                rows = _sell_rows(db, "NVDA")
                assert sorted(t["exec_id"] for t in rows) == sorted(sims)
                for t in rows:
                    assert t["commission"] == pytest.approx(sims[t["exec_id"]]["commission"])
                    assert t["commission"] > 0

    run(scenario())


def test_gap_through_bot_stop_exits_within_one_tick_even_with_the_kill_switch_on(
    tmp_path: Path,
) -> None:
    """The bot stop sells the live quantity by moving the protective STP through the market
    (no new order: the set's two are all there is); the day trader's kill switch (file and
    flag) must not stop it (failure mode 15)."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            get_settings().kill_switch_file.write_text("stop entries")
            db.set_flag("kill_switch", "on")
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "MSFT", 50, db=db, percentages=CONFIG)
                await protected(gw, manager, "MSFT", 50)
                row = db.get_active_position("MSFT")
                # Through the bot stop, still above the server-side backstop.
                gap_to = round(row["stop_loss_price"] - row["entry_price"] * 0.01, 2)
                started = time.monotonic()
                await gw_call(gw.faults.set_price, "MSFT", gap_to)
                await until(lambda: db.was_closed_today("MSFT"), 3, "bot stop exit")
                assert time.monotonic() - started < 1.0
                state = await gw_call(gw.account.state)
                assert position(state, "MSFT") == 0 and not em_sells(state, "MSFT")
                exits = [o for o in state["completed_orders"] if o["symbol"] == "MSFT"
                         and o["action"] == "SELL" and o["status"] == "Filled"]  # fmt: skip
                assert [(o["order_type"], o["tif"]) for o in exits] == [("STP", "GTC")]
                assert exits[0]["aux_price"] > gap_to  # moved through the market
                assert len(em_orders(state, "MSFT")) == 2  # the set; nothing new was sent
                assert db.get_closed_today()[0]["exit_reason"] == "STOP_LOSS"
                assert sells_executed(gw, "MSFT") == 50

    run(scenario())


@pytest.mark.parametrize("race", ["gap_through_backstop", "target_then_crash"])
def test_no_second_sell_when_server_orders_and_bot_stop_race(tmp_path: Path, race: str) -> None:
    """Server STP (or target LMT) and the bot stop both want to sell the same shares: exactly
    one sells, the account never goes short (the simulator rejects shorts: none may occur)."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock), day_trader(gw) as dt:
                await buy_async(dt, "NVDA", 40, db=db, percentages=CONFIG)
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "NVDA", 40), 3, "protection"
                )
                row = db.get_active_position("NVDA")
                if race == "gap_through_backstop":
                    await gw_call(gw.faults.set_price, "NVDA", row["entry_price"] * 0.90)
                    reason = "STOP_LOSS"
                else:
                    await gw_call(gw.faults.set_price, "NVDA", row["profit_target_price"] + 0.1)
                    await gw_call(gw.faults.set_price, "NVDA", row["stop_loss_price"] - 0.5)
                    reason = "PROFIT_TARGET"
                await until(lambda: db.was_closed_today("NVDA"), 3, "closed")
                await asyncio.sleep(0.3)  # room for a wrong second sell to show up
                state = await gw_call(gw.account.state)
                assert position(state, "NVDA") == 0
                assert sells_executed(gw, "NVDA") == 40
                rejected = [o for o in state["completed_orders"] if o["state"] == "REJECTED"]
                assert not rejected, rejected
                assert not em_sells(state, "NVDA")
                assert db.get_closed_today()[0]["exit_reason"] == reason

    run(scenario())


# -- crash and restart ------------------------------------------------------------------------------
def _subprocess_env(tmp_path: Path, gw: GatewayThread) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "TRADING_MODE"))}
    env.update(
        CLOCK_FILE=str(gw.config.clock_file),
        LOG_DIR=str(tmp_path / "logs"),
        KILL_SWITCH_FILE=str(tmp_path / "KILL_SWITCH"),
        WATCHLIST_PATH=str(tmp_path / "watchlist.json"),
        BACKUP_DIR=str(tmp_path / "archive"),
        PROFIT_TARGET_PCT=str(CONFIG.profit_target_pct),
        STOP_LOSS_PCT=str(CONFIG.stop_loss_pct),
        PYTHONPATH=str(ROOT),
    )
    return env


def _exit_manager_args(gw: GatewayThread, db: TradingDatabase, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "exit_manager.py"), "--port", str(gw.port), "--db", str(db.path),
        "--retry-seconds", "0.5", "--backstop-gap-pct", str(CONFIG.backstop_gap_pct), *extra,
    ]  # fmt: skip


def start_exit_manager(
    gw: GatewayThread,
    db: TradingDatabase,
    tmp_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    stderr: Any = subprocess.PIPE,
    python_flags: tuple[str, ...] = (),
) -> subprocess.Popen:
    """exit_manager.py as its own process on `gw` and `db` (`extra`: its flags;
    `python_flags`: the interpreter's, e.g. -X importtime)."""
    python, *args = _exit_manager_args(gw, db, *extra)
    return subprocess.Popen(
        [python, *python_flags, *args],
        env=env if env is not None else _subprocess_env(tmp_path, gw),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def exit_manager_reconciled(db: TradingDatabase, pid: int | None = None) -> bool:
    """The exit manager's heartbeat says RECONCILED (from process `pid`, when given)."""
    beat = db.get_heartbeats().get(AGENT, {})
    return beat.get("state") == "RECONCILED" and (pid is None or beat.get("pid") == pid)


def test_killed_exit_manager_leaves_the_server_stop_and_restart_sends_no_duplicate(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            env = _subprocess_env(tmp_path, gw)
            proc = start_exit_manager(gw, db, tmp_path, env=env)
            try:
                await until(lambda: exit_manager_reconciled(db), 30, "subprocess reconciled")
                async with day_trader(gw) as dt:
                    await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                    await buy_async(dt, "MSFT", 60, db=db, percentages=CONFIG)
                    await until_gateway(gw, lambda s: one_protective_set(s, "AAPL", 100)
                                   and one_protective_set(s, "MSFT", 60), 5, "both protected")  # fmt: skip
                    os.kill(proc.pid, signal.SIGKILL)  # no cleanup of any kind
                    proc.wait(10)
                    await until_gateway(gw, lambda s: EM not in s["clients"], 5, "client 10 gone")

                    # Dead exit manager: the server-side stop still sells.
                    row = db.get_active_position("AAPL")
                    await gw_call(gw.faults.set_price, "AAPL", row["entry_price"] * 0.90)
                    await until_gateway(gw, lambda s: position(s, "AAPL") == 0, 3, "backstop fired")
                    before = await gw_call(gw.account.state)
                    msft_set = sorted(o["perm_id"] for o in em_sells(before, "MSFT"))
                    orders_before = len(before["open_orders"]) + len(before["completed_orders"])

                    # Restart (--once): reconcile, print the table, exit.
                    done = await asyncio.to_thread(
                        subprocess.run, _exit_manager_args(gw, db, "--once"), env=env,
                        cwd=tmp_path, capture_output=True, text=True, timeout=60,
                    )  # fmt: skip
                    assert done.returncode == 0, done.stderr[-2000:]
                    assert "MSFT" in done.stdout and "True" in done.stdout
                    after = await gw_call(gw.account.state)
                    assert sorted(o["perm_id"] for o in em_sells(after, "MSFT")) == msft_set
                    assert (
                        len(after["open_orders"]) + len(after["completed_orders"]) == orders_before
                    )
                    closed = {r["symbol"]: r for r in db.get_closed_today()}
                    assert closed["AAPL"]["exit_reason"] == "STOP_LOSS"  # from reqExecutions
                    assert db.is_position_active("MSFT")
                    assert position(after, "AAPL") == 0

                    # SIGTERM: a clean stop that leaves the server-side protection in place.
                    proc = start_exit_manager(gw, db, tmp_path, env=env)
                    await until(
                        lambda: exit_manager_reconciled(db, proc.pid),
                        30, "restarted",
                    )  # fmt: skip
                    proc.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(proc.wait, 15) == 0
                    assert db.get_heartbeats()[AGENT]["state"] == "STOPPED"
                    final = await gw_call(gw.account.state)
                    assert sorted(o["perm_id"] for o in em_sells(final, "MSFT")) == msft_set
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)

    run(scenario())


def _log_events(folder: Path, name: str) -> list[dict[str, Any]]:
    import json

    found = []
    for path in sorted(folder.glob("exit_manager_run_*.json")):
        for line in path.read_text().splitlines():
            if f'"{name}"' in line:
                found.append(json.loads(line))
    return [e for e in found if e["event"] == name]


def test_restarted_exit_manager_protects_as_soon_as_it_connects_without_waiting_for_the_calendar(
    tmp_path: Path,
) -> None:
    """Killed 2 ms after exit_triggered (its set cancelled, the sell not yet sent), a position
    has no stop until the next exit manager protects it; that one built the exchange
    calendar (about 1 s) between connecting and placing the stop. Here the calendar (with no
    cached session table) takes 4 s to build, so a manager that waits for it places its
    stops 4 s or more after connecting, however loaded the machine; one that does not, well
    under 2 s."""
    slow = tmp_path / "slow_calendar"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import time\nimport exchange_calendars as xcals\n"
        "_get = xcals.get_calendar\n"
        "def get_calendar(*a, **k):\n    time.sleep(4.0)\n    return _get(*a, **k)\n"
        "xcals.get_calendar = get_calendar\n"
        # no cached session table either: this process builds the calendar itself
        f"import core.clock\ncore.clock.CALENDAR_CACHE_DIR = __import__('pathlib').Path({str(slow / 'cache')!r})\n"
    )

    async def scenario() -> None:
        with gateway(tmp_path, speed=60.0) as gw:
            db = sim_db(gw)
            async with day_trader(gw) as dt:
                await buy_async(
                    dt, "AAPL", 100, db=db, percentages=CONFIG
                )  # held with no stop: what the kill left
                await buy_async(dt, "NVDA", 20, db=db, percentages=CONFIG)
                env = _subprocess_env(tmp_path, gw)
                env["PYTHONPATH"] = f"{slow}{os.pathsep}{env['PYTHONPATH']}"
                proc = start_exit_manager(gw, db, tmp_path, env=env, stderr=subprocess.DEVNULL)
                try:
                    await until_gateway(gw, lambda s: one_protective_set(s, "AAPL", 100)
                                   and one_protective_set(s, "NVDA", 20), 30, "both protected")  # fmt: skip
                    logged = lambda: _log_events(tmp_path / "logs", "protection_placed")  # noqa: E731
                    await until(lambda: len(logged()) >= 2, 5, "both sets in the log")
                    placed = logged()
                finally:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(proc.wait, 15)
        ts = lambda e: datetime.fromisoformat(e["ts"]).timestamp()  # noqa: E731
        connected = ts(_log_events(tmp_path / "logs", "connected")[0])
        took = max(ts(e) for e in placed[:2]) - connected
        assert took < 2.0, f"stops placed {took:.2f} s after connecting"

    run(scenario())


def test_exit_manager_dying_between_the_two_orders_of_a_set_leaves_a_stop_not_a_lone_target(
    tmp_path: Path,
) -> None:
    """A kill between the target LMT and the STP of one set left a lone LMT and the position
    with no stop at IB until the next exit manager reconciled: the STP goes first."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock), day_trader(gw) as dt:
                # The set's first order reaches IB; nothing after it does (as from a process
                # that died right after sending it).
                await gw_call(gw.faults.go_silent_after_next_order, EM)
                await buy_async(dt, "AMD", 40, db=db, percentages=CONFIG)
                first = await until_gateway(gw, lambda s: em_orders(s, "AMD"), 3, "first leg at IB")
                await until(lambda: any(i["purpose"] == "PROTECT_TARGET" for i in
                                        db.get_intents_by_date("2026-11-25")), 3, "second leg sent")  # fmt: skip
                state = await gw_call(gw.account.state)
                assert em_orders(state, "AMD") == first, "only the first leg reached IB"
                assert [(o["order_type"], o["quantity"]) for o in first] == [("STP", 40)]
                assert first[0]["state"] in {"PRE_SUBMITTED", "SUBMITTED"}
                await gw_call(gw.faults.resume, EM)

    run(scenario())


def test_paper_run_on_a_live_account_is_refused_at_connect_and_a_live_run_protects_it(
    tmp_path: Path,
) -> None:
    """The rule through the running program: paper mode refuses a U... account before any
    order; --live with TRADING_MODE=live on a non-standard port trades it."""
    with gateway(tmp_path, account="U7654321") as gw:
        db = sim_db(gw)
        ib = sim_client(gw.port, DT)
        try:
            buy(ib, "AAPL", 100, db=db, protect=False)
        finally:
            ib.disconnect()
        env = _subprocess_env(tmp_path, gw)
        paper = subprocess.run(_exit_manager_args(gw, db, "--once"), env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert paper.returncode == 2 and "Traceback" not in paper.stderr
        assert paper.stderr.splitlines()[-1] == (  # after the console's connect log lines
            "exit_manager: error: account U7654321 is a live (non-paper) account but this is "
            "paper trading: connect to a gateway logged in to a paper account (DU...), or set "
            "TRADING_MODE=live and add --live to trade real money"
        )
        assert gw.account.open_orders() == []  # the position is left unprotected, untouched
        assert len(gw.account.completed_orders()) == 1  # only the entry

        live = subprocess.run(_exit_manager_args(gw, db, "--once", "--live"),
                              env={**env, "TRADING_MODE": "live"}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert live.returncode == 0, live.stderr[-2000:]
        assert one_protective_set(gw.account.state(), "AAPL", 100)


@pytest.mark.parametrize(("flag", "mode", "port"), COMBOS, ids=map(combo_id, COMBOS))
def test_start_follows_the_one_paper_live_rule(
    flag: bool,
    mode: str | None,
    port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bug pinned: --live without TRADING_MODE on a live port was told to "pass --live"."""
    import exit_manager

    set_environment(monkeypatch, tmp_path, mode, port)
    args = ["--live"] if flag else []
    refusal = rule_refusal(flag, mode, port)
    if refusal is None:
        parsed = exit_manager.build_parser().parse_args(args)
        assert exit_manager.settings_from_args(parsed).is_live is flag
        return

    async def protecting(*_: Any) -> int:
        return 99  # got past the start-up checks: it would connect and send orders

    monkeypatch.setattr(exit_manager, "_run", protecting)
    assert exit_manager.main(args) == 2
    assert capsys.readouterr().err.splitlines() == [f"exit_manager: error: {refusal}"]


# A console log line of the exit manager ("HH:MM:SS LEVEL exit_manager event ...").
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +exit_manager ")


def test_once_against_a_live_account_in_paper_mode_is_one_line_exit_2_and_sends_nothing(
    tmp_path: Path,
) -> None:
    with gateway(tmp_path, account="U7654321") as gw:
        db = sim_db(gw)
        db.schema_version()  # an existing database, as after any earlier day
        done = subprocess.run(
            _exit_manager_args(gw, db, "--once"), env=_subprocess_env(tmp_path, gw),
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        state = gw.account.state()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    refusals = [line for line in done.stderr.splitlines() if not _LOG_LINE.match(line)]
    with pytest.raises(SettingsError) as rule:  # the one paper/live rule's own words
        check_trading_mode(get_settings(), False, "U7654321")
    assert refusals == [f"exit_manager: error: {rule.value}"]
    assert not state["open_orders"] and not state["completed_orders"]
    assert db.get_heartbeats()[AGENT]["state"] == "STOPPED"  # shut down, not abandoned


def test_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from exit_manager import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--client-id" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--bogus" in err
    assert main(["--live", "--port", "4002"]) == 2  # --live needs TRADING_MODE=live
    assert "TRADING_MODE=live" in capsys.readouterr().err


# -- connection faults ----------------------------------------------------------------------------
def test_fill_missed_while_dropped_is_applied_after_reconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                await buy_async(dt, "AMD", 10, db=db, percentages=CONFIG)
                await until_gateway(gw, lambda s: one_protective_set(s, "AAPL", 100)
                               and one_protective_set(s, "AMD", 10), 3, "protection")  # fmt: skip
                connects = manager.session.health.connects
                await gw_call(gw.faults.drop_client, EM)
                row = db.get_active_position("AAPL")
                await gw_call(gw.faults.set_price, "AAPL", row["profit_target_price"] + 0.05)
                await until(lambda: manager.session.health.connects > connects, 5, "reconnected")
                await until(lambda: manager.reconciled, 5, "reconciled after reconnect")
                await until(lambda: db.was_closed_today("AAPL"), 3, "missed fill applied")
                assert db.get_closed_today()[0]["exit_reason"] == "PROFIT_TARGET"
                # The commission came with reqExecutions' answer, not as a live event.
                [sold] = [e for e in gw.account.executions() if e["side"] == "SLD"]
                assert [t["commission"] for t in _sell_rows(db, "AAPL")] == [
                    pytest.approx(sold["commission"])
                ]
                state = await gw_call(gw.account.state)
                assert one_protective_set(state, "AMD", 10)  # kept, not duplicated
                assert len(em_sells(state, "AMD")) == 2

    run(scenario())


def test_entry_filled_during_reconciliation_after_its_positions_snapshot_is_protected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The position event of a fill that lands mid-reconciliation was dropped (not yet
    reconciled) and its replays deduplicated: the position stayed naked (CI, e2e restart)."""
    monkeypatch.setattr("bots.exit_watch.AUDIT_SECONDS", 3600.0)  # pin the event path alone

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with day_trader(gw) as dt, exit_manager(gw, db, clock, wait=False) as manager:
                real_snapshot = manager.orders.snapshot

                async def snapshot_after_a_fill() -> Any:
                    if manager.book["MSFT"].seen_quantity is None:  # the first call
                        # Positions and orders are asked at once: the fill lands after the
                        # positions answer.
                        assert manager.broker.positions_task is not None
                        await asyncio.shield(manager.broker.positions_task)
                        await buy_async(dt, "MSFT", 50)
                        await until(lambda: manager.book["MSFT"].seen_quantity == 50, 3, "event")
                    return await real_snapshot()

                manager.orders.snapshot = snapshot_after_a_fill  # type: ignore[method-assign]
                await until(lambda: manager.reconciled, 10, "first reconciliation")
                assert "MSFT" not in manager.reconciler.last_report.get(
                    "held", []
                )  # missed by the plan
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "MSFT", 50), 5, "protection"
                )
                assert db.get_active_position("MSFT")["quantity"] == 50  # adopted

    run(scenario())


def test_protection_audit_protects_a_position_whose_event_never_came(tmp_path: Path) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                manager.ib.positionEvent -= manager._on_position  # a lost event, however
                await buy_async(dt, "NVDA", 30, db=db, percentages=CONFIG)
                await until_gateway(gw, lambda s: one_protective_set(s, "NVDA", 30), 8, "audit")
                assert "NVDA" in manager.book.held()

    run(scenario())


@pytest.mark.parametrize("data_lost", [True, False], ids=["1101", "1102"])
def test_connectivity_restored_resubscribes_and_reconciles(tmp_path: Path, data_lost: bool) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "MSFT", 70, db=db, percentages=CONFIG)
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "MSFT", 70), 3, "protection"
                )
                await until(lambda: "MSFT" in manager.book.quotes(), 3, "quotes streaming")
                await gw_call(gw.faults.connectivity_lost, EM)
                await until(lambda: not manager.reconciled, 3, "1100 seen")
                await gw_call(gw.faults.connectivity_restored, EM, data_lost)
                await until(lambda: manager.reconciled, 5, "reconciled after restore")
                state = await gw_call(gw.account.state)
                assert len(em_sells(state, "MSFT")) == 2 and one_protective_set(state, "MSFT", 70)
                # Ticks flow again (after 1101 only because we resubscribed): the bot stop works.
                await protected(gw, manager, "MSFT", 70)
                row = db.get_active_position("MSFT")
                gap_to = round(row["stop_loss_price"] - row["entry_price"] * 0.01, 2)
                await gw_call(gw.faults.set_price, "MSFT", gap_to)
                await until(lambda: db.was_closed_today("MSFT"), 3, "bot stop after restore")
                done = await gw_call(gw.account.completed_orders)  # the STP moved to exit
                assert any(o["order_type"] == "STP" and o["status"] == "Filled"
                           and o["aux_price"] > gap_to for o in done)  # fmt: skip

    run(scenario())


def test_exit_manager_that_loses_ib_or_reconciles_says_so_in_its_heartbeat_at_once(
    tmp_path: Path,
) -> None:
    """The day trader reads this row before each entry; beating every 2 s left it RECONCILED
    for up to 2 s after the exit manager could no longer protect a fill."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock, retry_seconds=5.0) as manager:
                state = lambda: db.get_heartbeats()[AGENT]["state"]  # noqa: E731
                assert state() == "RECONCILED"
                await gw_call(gw.faults.connectivity_lost, EM)  # 1100
                await until(lambda: not manager.reconciled, 3, "1100 seen")
                assert state() != "RECONCILED"
                at_start: list[str] = []
                reconcile = manager.reconciler._reconcile

                async def seen_at_start() -> Any:
                    at_start.append(state())
                    return await reconcile()

                manager.reconciler._reconcile = seen_at_start  # type: ignore[method-assign]
                await gw_call(gw.faults.connectivity_restored, EM)  # 1102: reconcile again
                await until(lambda: manager.reconciled and state() == "RECONCILED", 5, "back")
                assert at_start == ["RECONCILING"]
                await gw_call(gw.faults.drop_client, EM)
                await until(lambda: not manager.reconciled, 3, "disconnect seen")
                assert state() != "RECONCILED"

    run(scenario())


def test_client_id_in_use_at_startup_backs_off_and_connects_later(tmp_path: Path) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            squatter = IB()
            await squatter.connectAsync("127.0.0.1", gw.port, clientId=EM, timeout=5)
            async with exit_manager(gw, db, clock, wait=False) as manager:
                health = manager.session.health
                await until(lambda: health.errors_seen.get(326, 0) >= 1, 5, "error 326")
                assert not manager.reconciled
                assert db.get_heartbeats()[AGENT]["state"] != "RECONCILED"
                squatter.disconnect()
                await until(lambda: manager.reconciled, 5, "connected after the id was freed")

    run(scenario())


def _amd_sell_intents(db: TradingDatabase) -> list[dict]:
    return [
        i
        for i in db.get_intents_by_date("2026-11-25")
        if i["symbol"] == "AMD" and i["side"] == "SELL" and i["agent"] == AGENT
    ]


async def _prove_no_more_sells(gw: GatewayThread, manager: ExitManager, row: dict) -> None:
    """Two more ticks through the bot stop, each seen by the manager: a loop would sell."""
    for cents in (2, 4):
        price = round(row["stop_loss_price"] - row["entry_price"] * 0.01 - cents / 100, 2)
        await gw_call(gw.faults.set_price, "AMD", price)
        await until(lambda p=price: manager.book.quotes()["AMD"].last == p, 3, f"tick {price} seen")
    await until(lambda: not manager.book.busy() and not manager.book.give_up_pending(), 3, "idle")
    await asyncio.to_thread(manager.orders.flush)


def test_give_up_after_three_rejects_re_places_one_protective_set_for_the_live_quantity(
    tmp_path: Path,
) -> None:
    """Naked position after rejects: the exit attempt cancelled the OCA set, then every sell
    was rejected; giving up must leave exactly one server-side set, and sell nothing more."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "AMD", 50, db=db, percentages=CONFIG)
                await protected(gw, manager, "AMD", 50)
                # IB refuses moving the stop (one reject), then the two exit sells after it.
                await gw_call(gw.faults.refuse_next_modification, "simulated risk reject", EM)
                for _ in range(2):
                    await gw_call(gw.faults.reject_next_order, "simulated risk reject", EM)
                row = db.get_active_position("AMD")
                await gw_call(gw.faults.set_price, "AMD",
                              round(row["stop_loss_price"] - row["entry_price"] * 0.01, 2))  # fmt: skip
                await until(lambda: db.get_flag(blocked_flag("AMD")), 5, "symbol flagged")
                assert manager.book.is_blocked("AMD")
                sells = await until_gateway(
                    gw, lambda s: one_protective_set(s, "AMD", 50), 5, "protection re-placed"
                )
                assert {o["tif"] for o in sells} == {"GTC"}
                await _prove_no_more_sells(gw, manager, row)
                state = await gw_call(gw.account.state)
                assert one_protective_set(state, "AMD", 50) and len(em_sells(state, "AMD")) == 2
                assert position(state, "AMD") == 50
                intents = _amd_sell_intents(db)
                # The first set (cancelled), two rejected exits, the re-placed set: no more.
                assert len(intents) == 6, [(i["order_type"], i["state"]) for i in intents]
                assert sum(i["state"] == "REJECTED" for i in intents) == 2
                assert "AMD" not in manager.book.unprotected()
                manager._beat()
                assert db.get_heartbeats()[AGENT]["state"] == "DEGRADED"

                # Someone sells part by hand: the give-up set is resized, once, to what is left.
                await _other_client_sells(dt, "AMD", 20)
                await until_gateway(gw, lambda s: one_protective_set(s, "AMD", 30), 3, "resized")
                assert position(await gw_call(gw.account.state), "AMD") == 30

    run(scenario())


def test_give_up_whose_protective_set_is_rejected_too_alerts_and_never_loops(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "AMD", 50, db=db, percentages=CONFIG)
                await protected(gw, manager, "AMD", 50)
                await gw_call(gw.faults.refuse_next_modification, "simulated risk reject", EM)
                for _ in range(5):
                    await gw_call(gw.faults.reject_next_order, "simulated risk reject", EM)
                row = db.get_active_position("AMD")
                await gw_call(gw.faults.set_price, "AMD",
                              round(row["stop_loss_price"] - row["entry_price"] * 0.01, 2))  # fmt: skip
                await until(lambda: "AMD" in manager.book.unprotected(), 5, "unprotected alert")
                await _prove_no_more_sells(gw, manager, row)
                state = await gw_call(gw.account.state)
                assert not em_sells(state, "AMD") and position(state, "AMD") == 50
                # The refused stop move, two exits and the two legs of the one re-placed set:
                # the fifth order reject is unused.
                assert len(gw.gateway.engine.reject_next) == 1
                intents = _amd_sell_intents(db)
                assert sum(i["state"] == "REJECTED" for i in intents) == 4
                assert len(intents) == 6
                assert db.get_flag(blocked_flag("AMD"))  # left for a human

            # A restart (a new process) finds it blocked and naked: one set, once, no exits.
            await gw_call(gw.gateway.engine.reject_next.clear)
            async with exit_manager(gw, db, clock) as manager:
                await until_gateway(gw, lambda s: one_protective_set(s, "AMD", 50), 5, "one set")
                assert manager.book.is_blocked("AMD") and "AMD" not in manager.book.unprotected()
                await _prove_no_more_sells(gw, manager, row)
                state = await gw_call(gw.account.state)
                assert one_protective_set(state, "AMD", 50) and len(em_sells(state, "AMD")) == 2
                assert len(_amd_sell_intents(db)) == 8

    run(scenario())


# -- reconciliation ------------------------------------------------------------------------------
async def _other_client_sells(dt: IB, symbol: str, quantity: int) -> None:
    trade = dt.placeOrder(Stock(symbol, "SMART", "USD"), MarketOrder("SELL", quantity))
    await until(lambda: trade.orderStatus.status == "Filled", 5, f"{symbol} manual sell")


def test_other_client_selling_half_resizes_the_protective_set_at_once_and_never_shorts(
    tmp_path: Path,
) -> None:
    """A manual sell of half left our OCA set sized for the whole position: when its stop
    fired it sold twice the shares held (a margin account goes short)."""

    async def scenario() -> None:
        with gateway(tmp_path, no_shorting=False) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock), day_trader(gw) as dt:
                await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "AAPL", 100), 3, "protection"
                )
                await _other_client_sells(dt, "AAPL", 40)
                sold_at = time.monotonic()
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "AAPL", 60), 2, "resized set"
                )
                reaction = time.monotonic() - sold_at
                assert reaction < 1.0, f"resize took {reaction:.3f}s: not event driven"
                await until(lambda: db.get_active_position("AAPL")["quantity"] == 60, 2)
                row = db.get_active_position("AAPL")
                await gw_call(gw.faults.set_price, "AAPL", row["entry_price"] * 0.90)
                await until_gateway(gw, lambda s: position(s, "AAPL") <= 0, 3, "backstop fired")
                await until(lambda: db.was_closed_today("AAPL"), 3, "closed")
                state = await gw_call(gw.account.state)
                assert position(state, "AAPL") == 0 and not em_sells(state, "AAPL")
                assert sells_executed(gw, "AAPL") == 100  # 40 manual + 60 backstop

    run(scenario())


def _cancels_held(state: dict, symbol: str) -> bool:
    sells = em_sells(state, symbol)
    return len(sells) == 2 and all(o["status"] == "PendingCancel" for o in sells)


@pytest.mark.parametrize("left", [30, 0])
def test_set_after_confirmed_cancels_is_for_the_quantity_left_when_the_position_shrank_meanwhile(
    tmp_path: Path, left: int
) -> None:
    """The resize plan is made from a positions snapshot (60 here); another client sells more
    while our cancels wait for IB. The new set must be for what is held when it is sent, and
    there must be none when nothing is. (Margin account: an oversized set would be accepted.)"""

    async def scenario() -> None:
        with gateway(tmp_path, no_shorting=False) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                await protected(gw, manager, "AAPL", 100)
                await gw_call(gw.faults.hold_cancels, EM)
                await _other_client_sells(dt, "AAPL", 40)  # plan: cancel the set, protect 60
                await until_gateway(gw, lambda s: _cancels_held(s, "AAPL"), 3, "our cancels held")
                await _other_client_sells(dt, "AAPL", 60 - left)  # while they are pending
                await until_gateway(gw, lambda s: position(s, "AAPL") == left, 3, "shrunk")
                await gw_call(gw.faults.release_cancels)
                if left:
                    await until_gateway(
                        gw, lambda s: one_protective_set(s, "AAPL", left), 3, "new set"
                    )
                else:
                    await until(lambda: db.was_closed_today("AAPL"), 3, "closed as manual")
                await until(
                    lambda: not manager.tasks.dirty and not manager.book.busy(), 3, "settled"
                )
                await asyncio.to_thread(manager.orders.flush)
                state = await gw_call(gw.account.state)
                placed = sorted(o["quantity"] for o in em_orders(state, "AAPL"))
                assert placed == sorted([100, 100] + [left, left] * bool(left)), placed
                assert position(state, "AAPL") == left
                assert sells_executed(gw, "AAPL") == 100 - left  # the other client's only

    run(scenario())


@pytest.mark.parametrize("then", ["cancels_released", "held_stop_fills"])
def test_bot_stop_sends_no_exit_sell_until_the_cancels_of_the_set_are_confirmed(
    tmp_path: Path, then: str
) -> None:
    """A cancel is a request: until IB confirms it the order can still fill. When the bot
    stop cannot move the server STP (IB refuses the modification here) it cancels the set
    and must not sell while those cancels are pending; when the held stop fills instead,
    nothing more is sold. (Margin account: a second sell would open a short, not a reject.)"""

    async def scenario() -> None:
        with gateway(tmp_path, no_shorting=False) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "NVDA", 40, db=db, percentages=CONFIG)
                await protected(gw, manager, "NVDA", 40)
                pos = manager.book.held()["NVDA"]
                await gw_call(gw.faults.hold_cancels, EM)
                await gw_call(gw.faults.refuse_next_modification, "simulated refusal", EM)
                between = round((pos.stop_price + pos.backstop_price) / 2, 2)
                await gw_call(gw.faults.set_price, "NVDA", between)  # through the bot stop only
                await until_gateway(
                    gw, lambda s: _cancels_held(s, "NVDA"), 3, "the set's cancels held"
                )
                await asyncio.sleep(0.5)  # room for a wrong exit sell to show up
                if then == "held_stop_fills":
                    await gw_call(gw.faults.set_price, "NVDA", round(pos.backstop_price - 0.05, 2))
                    await until_gateway(
                        gw, lambda s: position(s, "NVDA") <= 0, 3, "held stop filled"
                    )
                released = await gw_call(gw.faults.release_cancels)
                await until(lambda: db.was_closed_today("NVDA"), 5, "closed")
                await until(
                    lambda: not manager.book.busy() and not manager.tasks.dirty, 3, "settled"
                )
                await asyncio.sleep(0.3)  # room for a wrong second sell to show up

                state = await gw_call(gw.account.state)
                exits = [o for o in em_orders(state, "NVDA") if o["tif"] in ("IOC", "DAY")]
                assert all(o["received_time"] >= released["time"] for o in exits), (
                    released,
                    exits,
                )
                assert position(state, "NVDA") == 0
                assert sells_executed(gw, "NVDA") == 40
                sold = {o["order_type"] for o in em_orders(state, "NVDA") if o["filled"]}
                assert sold == ({"STP"} if then == "held_stop_fills" else {"LMT"})
                if then == "held_stop_fills":
                    assert not exits and released["cancelled"] == 0
                assert db.get_closed_today()[0]["exit_reason"] == "STOP_LOSS"

    run(scenario())


@pytest.mark.parametrize("master", [False, True], ids=["own_executions", "master_client"])
def test_other_client_selling_everything_cancels_our_sells_and_closes_the_row_as_manual(
    tmp_path: Path, master: bool
) -> None:
    async def scenario() -> None:
        with gateway(tmp_path, no_shorting=False, master_client_id=EM if master else None) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "MSFT", 50, db=db, percentages=CONFIG)
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "MSFT", 50), 3, "protection"
                )
                await until(lambda: "MSFT" in manager.book.quotes(), 3, "quotes")
                await _other_client_sells(dt, "MSFT", 50)
                await until_gateway(gw, lambda s: not em_sells(s, "MSFT"), 2, "our sells cancelled")
                await until(lambda: db.was_closed_today("MSFT"), 3, "row closed")
                closed = db.get_closed_today()[0]
                assert closed["exit_reason"] == "MANUAL"
                [manual] = [e for e in gw.account.executions() if e["side"] == "SLD"]
                if master:  # IB shows the master client every execution: the real price
                    assert closed["exit_price"] == pytest.approx(manual["price"])
                else:  # only its own executions: the last quote's price
                    assert closed["exit_price"] == pytest.approx(manual["price"], rel=0.01)
                await gw_call(gw.faults.set_price, "MSFT", closed["exit_price"] * 0.85)
                await until(lambda: manager.book.quotes().get("MSFT") is None, 2, "unsubscribed")
                state = await gw_call(gw.account.state)
                assert position(state, "MSFT") == 0 and sells_executed(gw, "MSFT") == 50

    run(scenario())


def test_short_position_is_alerted_every_reconciliation_and_never_sold(tmp_path: Path) -> None:
    async def scenario() -> None:
        with gateway(tmp_path, no_shorting=False) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with day_trader(gw) as dt:
                await _other_client_sells(dt, "AMD", 20)  # someone shorted it by hand
                async with exit_manager(gw, db, clock) as manager:
                    assert any("SHORT" in a for a in manager.reconciler.last_report["alerts"])
                    connects = manager.session.health.connects
                    await gw_call(gw.faults.drop_client, EM)
                    await until(lambda: manager.session.health.connects > connects, 5)
                    await until(lambda: manager.reconciled, 5, "reconciled again")
                    assert any("SHORT" in a for a in manager.reconciler.last_report["alerts"])
                    assert manager.book.shorts() == {"AMD": -20}
                    manager._beat()
                    assert db.get_heartbeats()[AGENT]["state"] == "DEGRADED"
                    state = await gw_call(gw.account.state)
                    assert position(state, "AMD") == -20 and not em_sells(state, "AMD")
                    assert not [o for o in state["completed_orders"] if o["client_id"] == EM]

    run(scenario())


def test_positions_answer_requested_before_the_caller_asked_is_never_used(tmp_path: Path) -> None:
    """Coalescing joined an in-flight reqPositions sent before a fill the caller had seen:
    the stale quantity kept a full-size protective set (or sold twice)."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager:
                idle = manager.broker.positions_task
                await until(lambda: idle is None or idle.done(), 3, "startup requests answered")
                sent: list[float] = []
                later: list[asyncio.Future[Any]] = []
                real = manager.ib.reqPositionsAsync

                def counted() -> Any:
                    request = real()  # the request is on the wire...
                    sent.append(time.monotonic())
                    if len(sent) == 1:  # ...before these callers ask (its answer is not in)
                        later.extend(
                            asyncio.ensure_future(manager.broker.positions()) for _ in range(3)
                        )
                    return request

                manager.ib.reqPositionsAsync = counted  # type: ignore[method-assign]
                first = asyncio.ensure_future(manager.broker.positions())
                await until(lambda: later, 2, "first request sent")
                await asyncio.gather(first, *later)
                # Before: the later callers joined the first request (one request in all).
                assert len(sent) >= 2, sent
                assert len(sent) <= 3  # still coalesced: not one request per caller
                assert all(t.result() == first.result() for t in later)

    run(scenario())


def test_unknown_broker_position_is_adopted_and_orphan_row_closed_as_reconcile(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with day_trader(gw) as dt:
                await buy_async(dt, "MSFT", 30)  # at the broker, not in the database
                db.add_active_position(  # in the database only, from earlier this morning
                    "NVDA", 10, 40.0, 41.6, 38.8, entry_time="2026-11-25T09:45:00-05:00"
                )
                async with exit_manager(gw, db, clock) as manager:
                    adopted = db.get_active_position("MSFT")
                    assert adopted["agent"] == "adopted" and adopted["quantity"] == 30
                    closed = {r["symbol"]: r for r in db.get_closed_today()}
                    assert closed["NVDA"]["exit_reason"] == "RECONCILE"
                    assert manager.reconciler.last_report["adopted"] == ["MSFT"]
                    assert manager.reconciler.last_report["closed"] == ["NVDA"]
                    await until_gateway(
                        gw, lambda s: one_protective_set(s, "MSFT", 30), 3, "adopted set"
                    )

                    # Live: an unregistered fill is adopted after the grace period...
                    await buy_async(dt, "AMD", 20)
                    await until_gateway(
                        gw, lambda s: one_protective_set(s, "AMD", 20), 5, "AMD set"
                    )
                    assert db.get_active_position("AMD")["agent"] == "adopted"
                    # ...but a row the day trader writes within the grace wins.
                    trade = dt.placeOrder(Stock("AAPL", "SMART", "USD"), MarketOrder("BUY", 10))
                    await until(lambda: trade.orderStatus.status == "Filled", 5, "AAPL fill")
                    await asyncio.sleep(clock.real_seconds(CONFIG.adopt_grace_s) / 3)
                    entry = trade.orderStatus.avgFillPrice
                    db.add_active_position("AAPL", 10, entry, round(entry * 1.05, 2),
                                           round(entry * 0.96, 2))  # fmt: skip
                    sells = await until_gateway(gw, lambda s: one_protective_set(s, "AAPL", 10), 5)
                    target = next(o for o in sells if o["order_type"] == "LMT")
                    assert target["lmt_price"] == round(entry * 1.05, 2)
                    assert db.get_active_position("AAPL")["agent"] == "day_trader"

    run(scenario())


def test_stale_ticks_move_the_server_stop_to_the_stop_loss_price_and_it_sells_there(
    tmp_path: Path,
) -> None:
    """The bot does not act on quotes it cannot trust; its stop price must then be the server
    STP's, not stop% + gap (a drop through the bot stop went unsold)."""
    config = replace(CONFIG, stale_tick_seconds=1.5)

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock, config) as manager, day_trader(gw) as dt:
                await buy_async(dt, "NVDA", 25, db=db, percentages=CONFIG)
                await protected(gw, manager, "NVDA", 25)
                await gw_call(gw.faults.stop_ticks, "NVDA")
                await until(
                    lambda: manager.book.quote_faults().get("NVDA") == "stale", 5, "stale fault"
                )
                manager._beat()
                assert db.get_heartbeats()[AGENT]["state"] == "DEGRADED"
                row = db.get_active_position("NVDA")
                await until_gateway(gw, lambda s: stop_at(s, "NVDA", row["stop_loss_price"]), 3,
                               "server STP at the stop-loss price")  # fmt: skip
                # Through the bot stop, above the backstop: the server stop sells, not the bot.
                await gw_call(gw.faults.set_price, "NVDA",
                              round(row["stop_loss_price"] - row["entry_price"] * 0.01, 2))  # fmt: skip
                await until(lambda: db.was_closed_today("NVDA"), 3, "server stop closed it")
                assert db.get_closed_today()[0]["exit_reason"] == "STOP_LOSS"
                state = await gw_call(gw.account.state)
                sold = [o for o in em_orders(state, "NVDA") if o["status"] == "Filled"]
                assert [o["order_type"] for o in sold] == ["STP"]
                assert sold[0]["aux_price"] == row["stop_loss_price"]
                assert position(state, "NVDA") == 0 and sells_executed(gw, "NVDA") == 25

    run(scenario())


def test_server_stop_moves_to_the_stop_loss_price_while_ticks_stop_and_back_when_they_resume(
    tmp_path: Path,
) -> None:
    """One STP, modified in place both ways: same order id, permId and orderRef, never
    cancelled (no moment without a stop), no second set; its intent follows the price."""
    config = replace(CONFIG, stale_tick_seconds=1.5)

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock, config) as manager, day_trader(gw) as dt:
                await buy_async(dt, "AMD", 40, db=db, percentages=CONFIG)
                sells = await protected(gw, manager, "AMD", 40)
                pos = manager.book.held()["AMD"]
                [stop] = [o for o in sells if o["order_type"] == "STP"]
                same = ("order_id", "perm_id", "order_ref", "oca_group", "quantity")
                intents_before = len(_amd_sell_intents(db))

                await gw_call(gw.faults.stop_ticks, "AMD")
                state = await until_gateway(gw, lambda s: stop_at(s, "AMD", pos.stop_price) and s,
                                       5, "STP up to the stop-loss price")  # fmt: skip
                assert manager.book.quote_faults()["AMD"] == "stale"
                moved = server_stop(state, "AMD")
                assert moved is not None and all(moved[k] == stop[k] for k in same)
                assert one_protective_set(state, "AMD", 40)
                await asyncio.to_thread(manager.orders.flush)
                assert db.get_order_intent(stop["order_ref"])["stop_price"] == pos.stop_price

                await gw_call(gw.faults.resume_ticks, "AMD")
                state = await until_gateway(gw, lambda s: stop_at(s, "AMD", pos.backstop_price) and s,
                                       5, "STP back at the backstop")  # fmt: skip
                back = server_stop(state, "AMD")
                assert back is not None and all(back[k] == stop[k] for k in same)
                assert one_protective_set(state, "AMD", 40)
                assert not [o for o in em_orders(state, "AMD") if o["status"] == "Cancelled"]
                await asyncio.to_thread(manager.orders.flush)
                assert db.get_order_intent(stop["order_ref"])["stop_price"] == pos.backstop_price
                assert len(_amd_sell_intents(db)) == intents_before  # no order of any kind
                notes = [e["note"] for e in db.get_intent_log(stop["order_ref"]) if e["note"]]
                assert [n.split(":")[0] for n in notes if n.startswith("stop ")] == [
                    f"stop {pos.backstop_price:g} -> {pos.stop_price:g}",
                    f"stop {pos.stop_price:g} -> {pos.backstop_price:g}",
                ]
                assert position(state, "AMD") == 40

    run(scenario())


def test_delayed_only_account_puts_the_server_stop_at_the_stop_loss_price_and_it_sells_there(
    tmp_path: Path,
) -> None:
    """The seed guide's user has free delayed data only: no live quotes, so the bot's -0.9%
    stop never acts, and the server STP sat at -1.4% (stop + backstop gap): a drop to -1.0%
    was never sold."""
    config = replace(CONFIG, stop_loss_pct=0.9, backstop_gap_pct=0.5)

    async def scenario() -> None:
        with gateway(tmp_path, market_data_subscribed=False) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock, config) as manager, day_trader(gw) as dt:
                entry = (
                    await buy_async(dt, "MSFT", 100, db=db, percentages=config)
                ).orderStatus.avgFillPrice
                row = db.get_active_position("MSFT")
                assert row["stop_loss_price"] == stop_loss_price(entry, 0.9)
                sells = await until_gateway(
                    gw, lambda s: one_protective_set(s, "MSFT", 100), 3, "protection"
                )
                [stop] = [o for o in sells if o["order_type"] == "STP"]
                assert stop["aux_price"] == row["stop_loss_price"]  # -0.9%, not -1.4%
                await until(
                    lambda: manager.book.quote_faults().get("MSFT") == "no_quote", 3, "fault"
                )
                await asyncio.sleep(0.5)  # room for a wrong move back to the backstop
                state = await gw_call(gw.account.state)
                assert stop_at(state, "MSFT", row["stop_loss_price"])["perm_id"] == stop["perm_id"]

                await gw_call(gw.faults.set_price, "MSFT", round(entry * 0.99, 2))  # -1.0%
                await until(lambda: db.was_closed_today("MSFT"), 5, "server stop sold at -1%")
                assert db.get_closed_today()[0]["exit_reason"] == "STOP_LOSS"
                state = await gw_call(gw.account.state)
                sold = [o for o in em_orders(state, "MSFT") if o["status"] == "Filled"]
                assert [o["perm_id"] for o in sold] == [stop["perm_id"]]
                assert position(state, "MSFT") == 0 and sells_executed(gw, "MSFT") == 100

    run(scenario())


def test_outside_regular_hours_keeps_protection_and_does_not_trade(tmp_path: Path) -> None:
    async def scenario() -> None:
        with gateway(tmp_path, start=dtime(9, 0)) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                order = MarketOrder("BUY", 15)
                order.outsideRth = True  # pre-market entry
                trade = dt.placeOrder(Stock("AMD", "SMART", "USD"), order)
                await until(lambda: trade.orderStatus.status == "Filled", 5, "pre-market fill")
                db.add_active_position("AMD", 15, trade.orderStatus.avgFillPrice)
                await until_gateway(gw, lambda s: one_protective_set(s, "AMD", 15), 3, "protection")
                # The row gets the prices it is protected at once the stop is at IB.
                await until(
                    lambda: db.get_active_position("AMD")["stop_loss_price"] is not None,
                    3,
                    "the protected prices in the row",
                )
                row = db.get_active_position("AMD")
                await gw_call(gw.faults.set_price, "AMD", row["stop_loss_price"] - 0.05)
                await until(lambda: "AMD" in manager.book.quotes(), 3, "pre-market quotes")
                await asyncio.sleep(0.3)
                state = await gw_call(gw.account.state)
                assert position(state, "AMD") == 15 and one_protective_set(state, "AMD", 15)

    run(scenario())


# -- end of day ---------------------------------------------------------------------------------
def test_half_day_flattens_at_12_45_and_the_sweep_verifies_flat(tmp_path: Path) -> None:
    async def flatten() -> None:
        with gateway(tmp_path, trading_date=HALF_DAY, start=dtime(12, 44, 57)) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "AAPL", 100), 3, "protection"
                )
                await until(lambda: db.was_closed_today("AAPL"), 8, "EOD flatten")
                assert db.get_closed_today()[0]["exit_reason"] == "EOD"
                sold = [e for e in gw.account.executions() if e["side"] == "SLD"]
                when = datetime.fromtimestamp(sold[0]["time"], NEW_YORK)
                assert (when.hour, when.minute) == (12, 45), when
                state = await gw_call(gw.account.state)
                assert position(state, "AAPL") == 0 and not em_sells(state, "AAPL")
                await until(lambda: manager.book.eod_verified.get(DayPhase.FLATTEN), 3, "verified")

    async def sweep() -> None:
        with gateway(tmp_path, trading_date=HALF_DAY, start=dtime(12, 54, 58)) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager:
                await until(lambda: manager.book.eod_verified.get(DayPhase.SWEEP), 8, "sweep")

    run(flatten())
    run(sweep())


def test_eod_flatten_of_twelve_positions_is_flat_before_the_sweep_and_never_short(
    tmp_path: Path,
) -> None:
    """A 20-position flatten must not serialise round trips per symbol (ib_async throttles
    above 45 requests/s): twelve here, measured in market seconds at speed 1."""

    async def scenario() -> None:
        with gateway(tmp_path, symbols=12, start=dtime(15, 44, 56),
                     no_shorting=False) as gw:  # fmt: skip
            names = sorted(gw.gateway.market.symbols)
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await asyncio.gather(
                    *(buy_async(dt, name, 10 + i, db=db, percentages=CONFIG)
                      for i, name in enumerate(names))
                )  # fmt: skip
                await until_gateway(
                    gw,
                    lambda s: all(one_protective_set(s, n, 10 + i) for i, n in enumerate(names)),
                    5, "twelve protective sets",
                )  # fmt: skip
                assert clock.now().time() < dtime(15, 45), "setup overran the flatten time"
                await until(lambda: manager.book.eod_verified.get(DayPhase.FLATTEN), 20, "flat")
                sold = [e for e in gw.account.executions() if e["side"] == "SLD"]
                first_sell, last_sell = min(e["time"] for e in sold), max(e["time"] for e in sold)
                flatten_at = datetime(2026, 11, 25, 15, 45, tzinfo=NEW_YORK).timestamp()
                print(f"EOD flatten of {len(names)}: first sell +{first_sell - flatten_at:.3f}s,"
                      f" all flat +{last_sell - flatten_at:.3f}s (market seconds, speed 1)")  # fmt: skip
                assert last_sell < flatten_at + 10 * 60  # flat by close - 5 min
                state = await gw_call(gw.account.state)
                assert not state["positions"], state["positions"]
                for i, name in enumerate(names):
                    assert sells_executed(gw, name) == 10 + i  # never short
                await until(lambda: len(db.get_closed_today()) == 12, 3, "rows closed")
                assert {r["exit_reason"] for r in db.get_closed_today()} == {"EOD"}

    run(scenario())


def test_partial_fill_keeps_the_rest_protected(tmp_path: Path) -> None:
    async def scenario() -> None:
        with gateway(tmp_path, partial_fills=True) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock), day_trader(gw) as dt:
                bought = await buy_async(dt, "MSFT", 600, db=db, percentages=CONFIG, timeout=20)
                entry = bought.orderStatus.avgFillPrice  # it fills in parts, too
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "MSFT", 600), 5, "protection"
                )
                row = db.get_active_position("MSFT")

                def touch_target_once() -> None:  # one print at the target, then back
                    gw.gateway.faults.set_price("MSFT", row["profit_target_price"] + 0.02)
                    gw.gateway.faults.set_price("MSFT", entry)

                await gw_call(gw.call, touch_target_once)
                state = await gw_call(gw.account.state)
                held = position(state, "MSFT")
                assert 0 < held < 600, "the touch should fill only part of the target"
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "MSFT", held), 5, "resized set"
                )
                await until(lambda: db.get_active_position("MSFT")["quantity"] == held, 3)
                trades = [t for t in db.get_trades_by_date("2026-11-25") if t["side"] == "SELL"]
                assert sum(t["quantity"] for t in trades) == 600 - held

    run(scenario())


# -- the dashboard's view and requests -------------------------------------------------------------
def test_flatten_request_is_sold_by_the_exit_manager_as_manual_and_its_last_price_is_published(
    tmp_path: Path,
) -> None:
    """The dashboard cannot sell by itself (the protective set belongs to the exit manager):
    its flatten request must be taken and sold, and the heartbeat must carry the last prices
    the dashboard's unrealised P&L is computed from."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock), day_trader(gw) as dt:
                await buy_async(dt, "MSFT", 40, db=db, percentages=CONFIG)
                await until_gateway(
                    gw, lambda s: one_protective_set(s, "MSFT", 40), 3, "protection"
                )
                mark = await until(lambda: db.get_marks().get("MSFT"), 6, "MSFT's last price")
                assert mark.last > 0 and abs(mark.quote_at - clock.epoch()) < 60

                assert db.request_exit("MSFT", "tester (127.0.0.1)")
                await until(lambda: db.was_closed_today("MSFT"), 8, "MSFT sold on request")

                state = await gw_call(gw.account.state)
                assert position(state, "MSFT") == 0 and not em_sells(state, "MSFT")
                assert db.get_closed_today()[0]["exit_reason"] == "MANUAL"
                assert db.pending_exit_requests() == {}
                await until(lambda: "MSFT" not in db.get_marks(), 6, "MSFT's mark withdrawn")

    run(scenario())


# -- the exit path: the protective stop moved through the market ------------------------------------
def test_bot_stop_exit_reaches_the_gateway_while_another_process_holds_the_database(
    tmp_path: Path,
) -> None:
    """The exit writes nothing before its send: with another writer holding the database
    (BEGIN EXCLUSIVE, as the day trader's busiest write or a backup might), the sell still
    reaches IB at once. It used to write a new intent row first and wait out the lock."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                await protected(gw, manager, "AAPL", 100)
                pos = manager.book.held()["AAPL"]
                held, seen = threading.Event(), {}

                def hold_the_database() -> None:  # another process's long write
                    conn = sqlite3.connect(db.path, timeout=10)
                    conn.execute("BEGIN EXCLUSIVE")
                    held.set()
                    deadline = time.monotonic() + 2.0
                    while time.monotonic() < deadline:
                        if position(gw.account.state(), "AAPL") == 0:
                            break
                        time.sleep(0.005)
                    seen["flat_while_held"] = position(gw.account.state(), "AAPL") == 0
                    conn.rollback()
                    conn.close()

                holder = asyncio.ensure_future(asyncio.to_thread(hold_the_database))
                assert await asyncio.to_thread(held.wait, 5)
                between = round((pos.stop_price + pos.backstop_price) / 2, 2)
                await gw_call(gw.faults.set_price, "AAPL", between)  # through the bot stop
                await holder
                assert seen["flat_while_held"], "the exit waited for the database"
                await until(lambda: db.was_closed_today("AAPL"), 10, "closed once it is free")
                assert db.get_closed_today()[0]["exit_reason"] == "STOP_LOSS"
                assert sells_executed(gw, "AAPL") == 100

    run(scenario())


def test_exit_under_partial_fills_sells_exactly_the_position_through_the_one_stop(
    tmp_path: Path,
) -> None:
    """The triggered STP fills in parts; it stays the one working sell for what is left, so
    the exit never sends a second order and never sells beyond the position (margin
    account: an extra sell would open a short, not be rejected)."""

    async def scenario() -> None:
        with gateway(tmp_path, partial_fills=True, no_shorting=False) as gw:
            db = sim_db(gw)
            clock = db.clock
            config = replace(CONFIG, exit_fill_timeout_s=20.0)
            async with exit_manager(gw, db, clock, config) as manager, day_trader(gw) as dt:
                await buy_async(dt, "MSFT", 600, db=db, percentages=CONFIG, timeout=20)
                the_set = await protected(gw, manager, "MSFT", 600, timeout=5)
                [stop] = [o for o in the_set if o["order_type"] == "STP"]
                placed = len(em_orders(await gw_call(gw.account.state), "MSFT"))
                pos = manager.book.held()["MSFT"]
                between = round((pos.stop_price + pos.backstop_price) / 2, 2)
                await gw_call(gw.faults.set_price, "MSFT", between)
                await until(lambda: db.was_closed_today("MSFT"), 20, "closed")
                state = await gw_call(gw.account.state)
                assert position(state, "MSFT") == 0 and sells_executed(gw, "MSFT") == 600
                sells = [e for e in gw.account.executions() if e["side"] == "SLD"]
                assert len(sells) > 1, "the exit should have filled in parts"
                assert len(em_orders(state, "MSFT")) == placed  # nothing new was sent
                assert {e["order_id"] for e in sells} == {stop["order_id"]}
                assert db.get_closed_today()[0]["exit_reason"] == "STOP_LOSS"

    run(scenario())


def test_exit_manager_killed_right_after_the_trigger_leaves_a_sell_working_that_sells(
    tmp_path: Path,
) -> None:
    """kill -9 the moment the gateway receives the exit's first message: the order at IB
    must still sell (here in parts, long after the process died). The exit used to cancel
    the set first, so a kill right after left the position with no stop at all."""

    async def scenario() -> None:
        with gateway(tmp_path, partial_fills=True) as gw:
            db = sim_db(gw)
            proc = start_exit_manager(gw, db, tmp_path, stderr=subprocess.DEVNULL)
            engine = gw.gateway.engine
            armed, killed = threading.Event(), threading.Event()

            def kill_on_first(original: Callable[..., Any]) -> Callable[..., Any]:
                def wrapped(client_id: int, *args: Any) -> Any:
                    if client_id == EM and armed.is_set() and not killed.is_set():
                        os.kill(proc.pid, signal.SIGKILL)  # before IB even handles it
                        killed.set()
                    return original(client_id, *args)

                return wrapped

            engine.place = kill_on_first(engine.place)  # type: ignore[method-assign]
            engine.cancel = kill_on_first(engine.cancel)  # type: ignore[method-assign]
            try:
                await until(lambda: exit_manager_reconciled(db), 30, "subprocess reconciled")
                async with day_trader(gw) as dt:
                    await buy_async(dt, "MSFT", 600, db=db, percentages=CONFIG, timeout=20)
                    row = db.get_active_position("MSFT")
                    await until_gateway(gw, lambda s: one_protective_set(s, "MSFT", 600)
                                   and server_stop(s, "MSFT")["aux_price"] < row["stop_loss_price"],
                                   10, "protected, STP at the backstop")  # fmt: skip
                    armed.set()
                    between = round(row["stop_loss_price"] - row["entry_price"] * 0.01, 2)
                    await gw_call(gw.faults.set_price, "MSFT", between)  # through the bot stop
                    await until(killed.is_set, 5, "the exit's first message")
                    await asyncio.to_thread(proc.wait, 10)
                    await until_gateway(gw, lambda s: position(s, "MSFT") == 0, 20,
                                   "the order at IB selling everything")  # fmt: skip
                    assert sells_executed(gw, "MSFT") == 600
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)

    run(scenario())


def test_refused_stop_modification_leaves_one_set_working_and_never_a_second(
    tmp_path: Path,
) -> None:
    """IB refuses a modification of the server STP (error 201) and the order keeps working;
    ib_async marks it Cancelled all the same. Believing that placed a second set beside the
    first (two stops for one position). The exit manager asks IB, finds it working, and
    moves it on a later try: one STP, the same order, throughout."""
    config = replace(CONFIG, stale_tick_seconds=1.5)

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock, config) as manager, day_trader(gw) as dt:
                await buy_async(dt, "NVDA", 25, db=db, percentages=CONFIG)
                [stop] = [o for o in await protected(gw, manager, "NVDA", 25)
                          if o["order_type"] == "STP"]  # fmt: skip
                row = db.get_active_position("NVDA")
                await gw_call(gw.faults.refuse_next_modification, "simulated refusal", EM)
                await gw_call(gw.faults.stop_ticks, "NVDA")  # stale: the STP must move up
                most_stops, deadline = 0, time.monotonic() + 10
                while time.monotonic() < deadline:
                    state = await gw_call(gw.account.state)
                    stops = [o for o in em_sells(state, "NVDA") if o["order_type"] == "STP"]
                    most_stops = max(most_stops, len(stops))
                    if stop_at(state, "NVDA", row["stop_loss_price"]):
                        break
                    await asyncio.sleep(0.01)
                assert most_stops == 1
                moved = stop_at(state, "NVDA", row["stop_loss_price"])
                assert moved and moved["order_id"] == stop["order_id"], state["open_orders"]
                assert one_protective_set(state, "NVDA", 25)
                await until(
                    lambda: not manager.tasks.dirty and not manager.book.busy(), 3, "settled"
                )
                intent = db.get_order_intent(stop["order_ref"])
                assert intent["state"] == "SUBMITTED", intent  # never recorded as cancelled

    run(scenario())


def test_a_cancel_whose_answer_a_1100_swallowed_does_not_hold_up_the_restores_protection(
    tmp_path: Path,
) -> None:
    """Our set's cancels went out, then IB's link went (1100) and their confirmation with
    it. The exit manager waited the full 5 s for it with the symbol locked, so the restore's
    reconciliation waited too and the position had no stop for seconds after the link came
    back. The wait ends at the 1100; the restore protects at once."""

    async def scenario() -> None:
        with gateway(tmp_path, no_shorting=False) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager, day_trader(gw) as dt:
                await buy_async(dt, "AAPL", 100, db=db, percentages=CONFIG)
                await protected(gw, manager, "AAPL", 100)
                await gw_call(gw.faults.hold_cancels, EM)
                await _other_client_sells(dt, "AAPL", 40)  # plan: cancel the set, protect 60
                await until_gateway(gw, lambda s: _cancels_held(s, "AAPL"), 3, "our cancels held")
                await gw_call(gw.faults.connectivity_lost, EM)
                await until(lambda: not manager.reconciled, 3, "1100 seen")
                await gw_call(gw.faults.release_cancels)  # cancelled: the news is lost
                await asyncio.sleep(0.3)
                await gw_call(gw.faults.connectivity_restored, EM, False)
                restored = time.monotonic()
                await until_gateway(gw, lambda s: one_protective_set(s, "AAPL", 60), 4, "new set")
                assert time.monotonic() - restored < 1.5
                assert position(await gw_call(gw.account.state), "AAPL") == 60

    run(scenario())


def test_a_routine_heartbeat_written_late_never_overwrites_a_later_state_change(
    tmp_path: Path,
) -> None:
    """Routine beats are written on the intent writer's thread; one computed before the
    reconciliation but written after its RECONCILED beat said CONNECTING again, and the day
    trader would have held its entries for nothing."""

    async def scenario() -> None:
        with gateway(tmp_path) as gw:
            db = sim_db(gw)
            clock = db.clock
            async with exit_manager(gw, db, clock) as manager:
                assert manager.orders.writer is not None
                queued: list[Callable[[], object]] = []
                submit = manager.orders.writer.submit
                manager.orders.writer.submit = queued.append  # type: ignore[method-assign]
                manager.parts.reconciled, manager.parts.state = False, "CONNECTING"
                manager._beat(behind=True)  # computed now, written below
                manager.orders.writer.submit = submit  # type: ignore[method-assign]
                manager.parts.reconciled, manager.parts.state = True, "RECONCILED"
                manager._beat()  # the state change, at once
                for write in queued:
                    with manager.orders.exclusive():
                        write()
                assert db.get_heartbeats()[AGENT]["state"] == "RECONCILED"

    run(scenario())
