"""Helpers for tests that run on the simulated gateway: start it, wait on conditions, run tools."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from datetime import time as dtime
from pathlib import Path
from typing import Any

from ib_async import IB, LimitOrder, MarketOrder, Order, Stock

from core.clock import FileTimeSource, MarketClock
from core.settings import PROJECT_ROOT, get_settings
from ibsim.config import GatewayConfig
from ibsim.thread import GatewayThread
from observability import TradingDatabase

SIM_DATE = date(2026, 11, 24)  # a Tuesday, a full session


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Deadline-based wait: polls `condition` until truthy (returned) or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_gateway(
    tmp_path: Path,
    *,
    start: dtime = dtime(10, 0),
    speed: float = 1.0,
    symbols: int = 8,
    seed: int = 7,
    **kw,
) -> GatewayThread:
    config = GatewayConfig(
        port=0, symbols=symbols, seed=seed, speed=speed, start=start, trading_date=SIM_DATE,
        clock_file=str(tmp_path / "sim_clock.json"), **kw,
    )  # fmt: skip
    return GatewayThread(config).start()


def sim_db(tmp_path: Path) -> TradingDatabase:
    """The test's view of the database, on the simulated clock."""
    clock = MarketClock(FileTimeSource(tmp_path / "sim_clock.json"))
    return TradingDatabase(tmp_path / "trading_history.db", clock=clock)


def tool_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "DATABASE", "TRADING"))}
    env.update(
        IB_PORT=str(port),
        CLOCK_FILE=str(tmp_path / "sim_clock.json"),
        DATABASE_PATH=str(tmp_path / "trading_history.db"),
        LOG_DIR=str(tmp_path / "logs"),
        BACKUP_DIR=str(tmp_path / "archive"),
        KILL_SWITCH_FILE=str(tmp_path / "KILL_SWITCH"),
        PYTHONPATH=str(PROJECT_ROOT),
    )
    return env


def run_tool(
    tmp_path: Path,
    port: int,
    *argv: str,
    stdin: str | None = None,
    timeout: float = 90,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one of the project's scripts as a real process against the simulator (`env` on top
    of tool_env)."""
    return subprocess.run(
        [sys.executable, *argv], cwd=PROJECT_ROOT, env={**tool_env(tmp_path, port), **(env or {})},
        input=stdin, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def client(port: int, client_id: int) -> IB:
    ib = IB()
    ib.connect("127.0.0.1", port, clientId=client_id, timeout=10)
    return ib


def stock(ib: IB, symbol: str) -> Stock:
    [contract] = ib.qualifyContracts(Stock(symbol, "SMART", "USD"))
    return contract


def buy_now(
    ib: IB,
    db: TradingDatabase,
    symbol: str,
    quantity: int,
    agent: str = "day_trader",
    protect: bool = True,
) -> float:
    """Enter like the bots do: intent, market buy, position row, then an OCA stop + target."""
    from core.money import profit_target_price, stop_loss_price
    from core.orders import IntentOrders

    orders = IntentOrders(ib, db, agent)
    contract = stock(ib, symbol)
    trade = orders.place(contract, MarketOrder("BUY", quantity), purpose="ENTRY", guard_entry=True)
    wait_for(lambda: (ib.sleep(0.05), trade.isDone())[1], 20, f"{symbol} entry fill")
    price = trade.orderStatus.avgFillPrice
    for fill in trade.fills:
        db.record_trade(
            symbol,
            "BUY",
            fill.execution.shares,
            fill.execution.price,
            agent,
            order_ref=trade.order.orderRef,
            exec_id=fill.execution.execId,
        )
    settings = get_settings()  # the bots' percentages, as the day trader writes its rows
    target = profit_target_price(price, settings.profit_target_pct)
    stop = stop_loss_price(price, settings.stop_loss_pct)
    db.add_active_position(
        symbol, quantity, price, target, stop, agent=agent, order_ref=trade.order.orderRef
    )
    if protect:
        oca = f"oca-{symbol}-{time.time_ns()}"
        legs: list[Order] = [
            LimitOrder("SELL", quantity, target, ocaGroup=oca, ocaType=1, tif="DAY"),
            Order(action="SELL", totalQuantity=quantity, orderType="STP", auxPrice=stop,
                  ocaGroup=oca, ocaType=1, tif="DAY"),
        ]  # fmt: skip
        for leg, purpose in zip(legs, ("PROFIT_TARGET", "STOP_LOSS"), strict=True):
            orders.place(contract, leg, purpose=purpose)
        ib.sleep(0.3)
    return price
