"""The one harness for tests on the simulated gateway: start it, connect clients, wait on
conditions, open the test's database on the simulated clock, buy like the bots, run tools.

    with gateway(tmp_path, start=dtime(9, 35), speed=60, no_shorting=True) as gw:
        with client(gw, 2) as ib:
            trade = buy(ib, "AAA", 100)                       # a plain market buy
            buy(ib, "BBB", 10, db=sim_db(gw))                 # the bots' way: intent, row, OCA
            wait_for(lambda: gw.account.positions(), 5, "positions", ib=ib)

Async tests wait with `until` (and `until_gateway` on the gateway's state) and buy with
`buy_async`. Every gateway, wait, database and buy helper of the tests and benches lives here
(tests/test_sim_support.py checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from datetime import time as dtime
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest
from ib_async import IB, LimitOrder, MarketOrder, Order, Stock, Trade

from core.clock import FileTimeSource, MarketClock
from core.settings import PROJECT_ROOT, get_settings
from ibsim.config import GatewayConfig
from ibsim.thread import GatewayThread
from observability import TradingDatabase

SIM_DATE = date(2026, 11, 24)  # a Tuesday, a full session
CLOCK_FILE = "sim_clock.json"  # in the test's tmp_path: the gateway's simulated clock
DB_FILE = "trading_history.db"
# The ibsim tests' small market: four names (BYND for the shorting cases), a minute a second.
IBSIM_SYMBOLS = ("AAA", "BBB", "CCC", "BYND")
BAD_LOG_MARKERS = ("Error handling fields", "Error for ", "No order found")


# -- the gateway ------------------------------------------------------------------------------
def gateway_config(
    tmp_path: Path | None = None,
    *,
    symbols: int | Sequence[str] = 8,
    seed: int = 7,
    start: dtime = dtime(10, 0),
    speed: float = 1.0,
    trading_date: date = SIM_DATE,
    **overrides: Any,
) -> GatewayConfig:
    """A gateway on a free loopback port. `symbols` is a count (generated names) or the names;
    with `tmp_path` its clock is published in tmp_path/CLOCK_FILE (unless `clock_file` is
    given) so programs and sim_db share the simulated time. Other GatewayConfig fields go in
    `overrides`."""
    count = {"symbols": symbols} if isinstance(symbols, int) else {"symbol_names": tuple(symbols)}
    options: dict[str, Any] = {
        "port": 0,
        **count,
        "seed": seed,
        "start": start,
        "speed": speed,
        "trading_date": trading_date,
    }
    if tmp_path is not None:
        options["clock_file"] = str(tmp_path / CLOCK_FILE)
    options.update(overrides)
    return GatewayConfig(**options)


@contextlib.contextmanager
def gateway(tmp_path: Path | None = None, **options: Any) -> Iterator[GatewayThread]:
    """A running simulated gateway (see gateway_config), stopped on exit."""
    with GatewayThread(gateway_config(tmp_path, **options)) as gw:
        yield gw


def start_gateway(tmp_path: Path, **options: Any) -> GatewayThread:
    """A running gateway the caller stops (for fixtures shared by several tests)."""
    return GatewayThread(gateway_config(tmp_path, **options)).start()


ibsim_gateway = partial(gateway, symbols=IBSIM_SYMBOLS, speed=60.0)


# -- clients --------------------------------------------------------------------------------
def client(
    where: GatewayThread | int, client_id: int, *, timeout: float = 10.0, **connect: Any
) -> IB:
    """An ib_async client connected to the gateway (or port) `where`; `with client(...) as
    ib:` disconnects it on exit. Sync request errors raise (raiseSyncErrors) unless told."""
    port = where if isinstance(where, int) else where.port
    connect.setdefault("raiseSyncErrors", True)
    ib = IB()
    ib.connect("127.0.0.1", port, clientId=client_id, timeout=timeout, **connect)
    return ib


def us_stock(symbol: str) -> Stock:
    """The contract the bots trade `symbol` as, not yet qualified."""
    return Stock(symbol, "SMART", "USD")


def stock(ib: IB, symbol: str) -> Stock:
    """`symbol` qualified at the gateway (conId set)."""
    [contract] = ib.qualifyContracts(us_stock(symbol))
    return contract


def collect_errors(ib: IB) -> list[tuple[int, int, str]]:
    """A list that fills with (reqId, code, message) from ib.errorEvent."""
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((req_id, code, text))
    return errors


# -- waiting --------------------------------------------------------------------------------
def wait_for(
    condition: Callable[[], Any],
    timeout: float = 5.0,
    what: str = "",
    *,
    ib: IB | None = None,
    disconnect_expected: bool = False,
    detail: Callable[[], str] | None = None,
    every: float = 0.02,
) -> Any:
    """Poll `condition` until truthy (returned); fail naming `what` after `timeout` real s,
    with `detail()` (say a program's log tail) appended to the failure. Without `ib`, polls
    `every` real seconds (longer for a costly condition: one that reads log files).

    With `ib` its event loop runs between polls (the condition is about what that client
    receives); ib_async raises ConnectionError out of ib.sleep() when a socket closes, which
    fails the wait unless `disconnect_expected`. Without, another thread or process makes
    the condition true.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            _timed_out(timeout, what or condition, detail() if detail else "")
        if ib is None:
            time.sleep(every)
            continue
        try:
            ib.sleep(0.01)
        except ConnectionError:
            if not disconnect_expected:
                raise


async def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """wait_for for async tests: the running event loop works between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            _timed_out(timeout, what or condition)
        await asyncio.sleep(0.01)


async def until_gateway(
    gw: GatewayThread, condition: Callable[[dict], Any], timeout: float = 5.0, what: str = ""
) -> Any:
    """until on the gateway's account state (`condition(state)`), read off the event loop so
    the test's clients keep working; the failure shows the last state."""
    deadline = time.monotonic() + timeout
    while True:
        state = await asyncio.to_thread(gw.account.state)
        value = condition(state)
        if value:
            return value
        if time.monotonic() > deadline:
            _timed_out(timeout, f"{what or condition}: {state}")
        await asyncio.sleep(0.02)


def _timed_out(timeout: float, what: object, detail: str = "") -> NoReturn:
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")


# -- the database ---------------------------------------------------------------------------
def sim_db(where: Path | GatewayThread, name: str = DB_FILE) -> TradingDatabase:
    """The test's view of the database, on the gateway's simulated clock: `where` is the
    tmp_path the gateway publishes its clock in, or the gateway (its clock_file's folder)."""
    if isinstance(where, GatewayThread):
        if not where.config.clock_file:
            raise ValueError("sim_db needs a gateway with a clock_file (pass tmp_path)")
        clock_file = Path(where.config.clock_file)
    else:
        clock_file = where / CLOCK_FILE
    clock = MarketClock(FileTimeSource(clock_file))
    return TradingDatabase(clock_file.parent / name, clock=clock)


# -- buying -----------------------------------------------------------------------------------
class Percentages(Protocol):
    """Where a position row's target and stop come from: the settings or an ExitConfig."""

    profit_target_pct: float
    stop_loss_pct: float


def buy(
    ib: IB,
    symbol: str,
    quantity: int,
    *,
    db: TradingDatabase | None = None,
    agent: str = "day_trader",
    order_ref: str = "",
    protect: bool = True,
    percentages: Percentages | None = None,
    timeout: float = 20.0,
) -> Trade:
    """A market buy of `quantity` shares, waited on until filled; returns its Trade.

    Without `db` a plain order (`order_ref` as given). With `db` the bots' way: the entry
    intent, the fills recorded, the position row with the target and stop at `percentages`
    (the settings' by default) and (`protect`) the OCA target + stop pair placed through the
    intent protocol.
    """
    contract = stock(ib, symbol)
    if db is None:
        trade = ib.placeOrder(contract, MarketOrder("BUY", quantity, orderRef=order_ref))
        wait_for(lambda: trade.orderStatus.status == "Filled", timeout, f"{symbol} buy filled",
                 ib=ib)  # fmt: skip
        return trade
    from ib.convert import fill_record
    from ib.intents import IntentOrders

    orders = IntentOrders(ib, db, agent)
    trade = orders.place(contract, MarketOrder("BUY", quantity), purpose="ENTRY", guard_entry=True)
    wait_for(lambda: trade.orderStatus.status == "Filled", timeout, f"{symbol} entry fill", ib=ib)
    for fill in trade.fills:
        db.record_fill(fill_record(fill), agent)
    target, stop = _position_row(db, trade, quantity, agent, percentages, trade.order.orderRef)
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
    return trade


async def buy_async(
    ib: IB,
    symbol: str,
    quantity: int,
    *,
    db: TradingDatabase | None = None,
    agent: str = "day_trader",
    percentages: Percentages | None = None,
    timeout: float = 5.0,
) -> Trade:
    """buy() for async tests (the running loop works while it waits): a plain market buy of
    an unqualified contract and, with `db`, only the position row the day trader writes
    from the fill (no intent, no protection: that is for the exit manager under test)."""
    trade = ib.placeOrder(us_stock(symbol), MarketOrder("BUY", quantity))
    await until(lambda: trade.orderStatus.status == "Filled", timeout, f"{symbol} entry fill")
    if db is not None:
        _position_row(db, trade, quantity, agent, percentages, order_ref=None)
    return trade


def _position_row(
    db: TradingDatabase,
    trade: Trade,
    quantity: int,
    agent: str,
    percentages: Percentages | None,
    order_ref: str | None,
) -> tuple[float, float]:
    """The filled entry's active position row, target and stop by the one rule; returns them."""
    from trading.exits import target_and_stop

    price = trade.orderStatus.avgFillPrice
    pcts = percentages or get_settings()  # the bots' percentages, as the day trader writes
    target, stop = target_and_stop(price, pcts.profit_target_pct, pcts.stop_loss_pct)
    symbol = trade.contract.symbol
    db.add_active_position(symbol, quantity, price, target, stop, agent=agent, order_ref=order_ref)
    return target, stop


# -- programs -------------------------------------------------------------------------------
def tool_env(tmp_path: Path, port: int) -> dict[str, str]:
    """The environment a program runs in against the gateway on `port`, all files in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "DATABASE", "TRADING"))}
    env.update(
        IB_PORT=str(port),
        CLOCK_FILE=str(tmp_path / CLOCK_FILE),
        DATABASE_PATH=str(tmp_path / DB_FILE),
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


# -- checks every gateway test can take -----------------------------------------------------
class _BadLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(marker in text for marker in BAD_LOG_MARKERS) or (
            record.name.startswith("ib_async") and record.exc_info
        ):
            self.lines.append(f"{record.name}: {text}")


@pytest.fixture(autouse=True)
def no_decode_errors_or_leaks() -> Iterator[None]:
    """Fails a test whose ib_async client logged a decode error, or that leaked a gateway:
    every test of a module that imports it (`# noqa: F401`)."""
    handler = _BadLines()
    logger = logging.getLogger("ib_async")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.lines, f"ib_async logged decode problems: {handler.lines[:3]}"
    leaked = [t.name for t in threading.enumerate() if t.name == "ibsim-gateway"]
    assert not leaked, f"gateway threads left running: {leaked}"
