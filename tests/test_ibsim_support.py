"""Shared helpers for the ibsim tests (no tests here): gateways, clients, waiting, log checks."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from datetime import time as dtime

import pytest
from ib_async import IB, Stock

from ibsim.config import GatewayConfig
from ibsim.thread import GatewayThread

TRADING_DATE = date(2026, 11, 24)  # a Tuesday
SYMBOLS = ("AAA", "BBB", "CCC", "BYND")
BAD_LOG_MARKERS = ("Error handling fields", "Error for ", "No order found")


def config(**overrides: object) -> GatewayConfig:
    base: dict[str, object] = dict(
        port=0,
        symbol_names=SYMBOLS,
        trading_date=TRADING_DATE,
        start=dtime(10, 0),
        speed=60.0,
    )
    base.update(overrides)
    return GatewayConfig(**base)  # type: ignore[arg-type]


@contextlib.contextmanager
def gateway(**overrides: object) -> Iterator[GatewayThread]:
    with GatewayThread(config(**overrides)) as gw:
        yield gw


@contextlib.contextmanager
def client(gw: GatewayThread, client_id: int, **kwargs: object) -> Iterator[IB]:
    ib = IB()
    ib.connect("127.0.0.1", gw.port, clientId=client_id, timeout=5, raiseSyncErrors=True, **kwargs)
    try:
        yield ib
    finally:
        ib.disconnect()


def stock(symbol: str) -> Stock:
    return Stock(symbol, "SMART", "USD")


def wait_for(
    ib: IB,
    predicate: Callable[[], object],
    timeout: float = 5.0,
    what: str = "",
    disconnect_expected: bool = False,
) -> None:
    """Run ib's loop until predicate() is truthy; fail after `timeout` real seconds.

    ib_async raises ConnectionError out of ib.sleep() when any socket closes; tests that
    provoke a disconnect pass disconnect_expected=True.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        try:
            ib.sleep(0.01)
        except ConnectionError:
            if not disconnect_expected:
                raise


def collect_errors(ib: IB) -> list[tuple[int, int, str]]:
    """A list that fills with (reqId, code, message) from ib.errorEvent."""
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((req_id, code, text))
    return errors


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
    """Fails a test whose ib_async client logged a decode error, or that leaked a gateway."""
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
