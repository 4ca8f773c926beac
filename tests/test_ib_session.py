"""ib.session: connect, 326, reconnect and handler failures on the simulated gateway."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import date

import pytest
from ib_async import IB

from core.settings import Settings, SettingsError, get_settings
from ib.session import BrokerSession, ErrorKind, classify_error, quiet_ib_async_logs
from ibsim.thread import GatewayThread
from tests.sim_support import gateway, until

# One symbol on a Wednesday: what the connection tests need of a market.
MARKET = {"symbols": ("AAPL",), "trading_date": date(2026, 11, 25)}


def test_error_codes_are_classified() -> None:
    assert classify_error(326) is ErrorKind.CLIENT_ID_IN_USE
    assert classify_error(1101) is ErrorKind.RESTORED_DATA_LOST
    assert classify_error(201) is ErrorKind.ORDER_REJECTED
    assert classify_error(99999) is ErrorKind.OTHER


def test_ib_async_logs_are_kept_at_warning_or_the_programs_level_whichever_is_higher() -> None:
    """ib_async prints every order status at INFO: a session keeps that out of the run file."""
    root, ib_logger = logging.getLogger(), logging.getLogger("ib_async")
    wrapper = logging.getLogger("ib_async.wrapper")
    saved = root.level, ib_logger.level, wrapper.level
    try:
        root.setLevel(logging.INFO)
        quiet_ib_async_logs()
        assert ib_logger.level == logging.WARNING
        root.setLevel(logging.ERROR)
        quiet_ib_async_logs()
        assert ib_logger.level == logging.ERROR
        root.setLevel(logging.INFO)
        quiet_ib_async_logs(logging.CRITICAL)  # a tool: its own one-line answers only
        assert ib_logger.level == logging.CRITICAL
        # Both bots: IB's messages (a cancel's 202...) are our ib_message events, not ERRORs.
        assert logging.getLogger("ib_async.wrapper").level == logging.CRITICAL
    finally:
        root.setLevel(saved[0])
        ib_logger.setLevel(saved[1])
        wrapper.setLevel(saved[2])


def test_326_fails_fast_instead_of_waiting_out_the_connect_timeout() -> None:
    async def scenario(gw: GatewayThread) -> None:
        squatter = IB()
        await squatter.connectAsync("127.0.0.1", gw.port, clientId=10, timeout=5)
        session = BrokerSession(replace(get_settings(), ib_port=gw.port), 10, "t",
                                connect_timeout=20)  # fmt: skip
        started = time.monotonic()
        assert not await session.connect(attempts=1)
        assert time.monotonic() - started < 5, "326 waited out the connect timeout"
        assert session.health.errors_seen.get(326) == 1
        squatter.disconnect()
        assert await session.connect(attempts=1)
        await session.close()

    with gateway(**MARKET) as gw:
        asyncio.run(asyncio.wait_for(scenario(gw), 60))


def test_a_326_is_retried_within_a_second_then_backing_off_to_retry_seconds() -> None:
    """A standby exit manager connects ~10 ms after the one it replaces died; a gateway that
    has not yet let go of the dead client answers 326. With a 30 s retry interval the
    position would wait 30 s for its stop: the first retries come fast, doubling."""

    async def scenario(gw: GatewayThread) -> None:
        squatter = IB()
        await squatter.connectAsync("127.0.0.1", gw.port, clientId=13, timeout=5)
        session = BrokerSession(replace(get_settings(), ib_port=gw.port), 13, "t",
                                retry_seconds=30.0, jitter=0.0)  # fmt: skip
        connecting = asyncio.ensure_future(session.connect())
        await until(lambda: session.health.errors_seen.get(326), 5, "the first 326")
        squatter.disconnect()  # the dead holder is gone now
        released = time.monotonic()
        assert await asyncio.wait_for(connecting, 10), "not connected 10 s after the 326"
        assert time.monotonic() - released < 10
        await session.close()

    with gateway(**MARKET) as gw:
        asyncio.run(asyncio.wait_for(scenario(gw), 60))


def test_retry_delays_double_from_a_tenth_of_a_second_up_to_retry_seconds() -> None:
    session = BrokerSession(get_settings(), 14, "t", retry_seconds=1.0, jitter=0.0)
    delays = session._retry_delays()
    assert [round(next(delays), 2) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_failing_handler_blocks_ready_and_reconnect_runs_one_loop() -> None:
    """A connected handler (reconciliation) that fails: never ready, and exactly one
    reconnect loop (no second loop racing connect() on the same IB object)."""

    async def scenario(gw: GatewayThread) -> None:
        session = BrokerSession(replace(get_settings(), ib_port=gw.port), 11, "t",
                                retry_seconds=0.2)  # fmt: skip
        calls: list[float] = []

        async def failing_then_ok() -> None:
            calls.append(time.monotonic())
            if len(calls) < 3:
                raise RuntimeError("reconciliation failed")

        session.connected_handlers.append(failing_then_ok)
        assert await session.connect(attempts=5)
        assert session.ready.is_set() and len(calls) == 3
        assert session._reconnect_task is None  # connect() did the retrying alone

        # A drop after that: the session comes back by itself and runs the handler again.
        await asyncio.to_thread(gw.faults.drop_client, 11)
        await until(lambda: len(calls) == 4 and session.ready.is_set(), 5, "reconnected")
        await session.close()

    with gateway(**MARKET) as gw:
        asyncio.run(asyncio.wait_for(scenario(gw), 60))


def test_a_dropped_connection_is_retried_at_once_not_after_retry_seconds() -> None:
    """Bug pinned (a chaos day): the exit manager lost its socket 0.2 s after an entry filled
    and waited its whole 3 s retry interval before reconnecting, so the fill went 2.7 s
    without a stop. The first attempt comes at once."""

    async def scenario(gw: GatewayThread) -> None:
        session = BrokerSession(replace(get_settings(), ib_port=gw.port), 12, "t",
                                retry_seconds=30.0, jitter=0.0)  # fmt: skip
        connects: list[float] = []

        async def reconciled() -> None:
            connects.append(time.monotonic())

        session.connected_handlers.append(reconciled)
        assert await session.connect(attempts=1)
        dropped = time.monotonic()
        await asyncio.to_thread(gw.faults.drop_client, 12)
        # Far below the 30 s interval: only an immediate first attempt gets here in time.
        await until(lambda: len(connects) == 2 and session.ready.is_set(), 10, "reconnected")
        assert connects[1] - dropped < 10
        await session.close()

    with gateway(**MARKET) as gw:
        asyncio.run(asyncio.wait_for(scenario(gw), 60))


def test_dead_feed_then_farm_ok_resubscribes_and_competing_session_is_unhealthy() -> None:
    """Failure modes 12 and 14: 2103 marks feeds suspect until 2104 resubscribes; 10197
    (another login took the data) leaves the session unhealthy and says so loudly."""

    async def scenario(gw: GatewayThread) -> None:
        session = BrokerSession(replace(get_settings(), ib_port=gw.port), 31, "t")
        resubscribed: list[float] = []

        async def resubscribe() -> None:
            resubscribed.append(time.monotonic())

        session.resubscribe_handlers.append(resubscribe)
        assert await session.connect(attempts=1)
        assert session.health.healthy

        gw.faults.notice(2103, "Market data farm connection is broken:usfarm", client_id=31)
        await until(lambda: session.health.feeds_suspect, 5, "feeds marked suspect")
        assert not session.health.healthy and resubscribed == []
        gw.faults.notice(2104, "Market data farm connection is OK:usfarm", client_id=31)
        await until(lambda: resubscribed, 5, "resubscribe after the farm came back")
        assert session.health.healthy

        gw.faults.notice(10197, "No market data during competing live session", client_id=31)
        await until(lambda: session.health.competing_session, 5, "competing session seen")
        assert not session.health.healthy
        await session.close()

    with gateway(**MARKET) as gw:
        asyncio.run(asyncio.wait_for(scenario(gw), 60))


def test_account_that_does_not_fit_the_mode_is_refused_at_connect_before_any_handler() -> None:
    """Every bot connects through BrokerSession: a paper run on a U... account, or a live run on
    a DU... one, must stop before reconciliation (the first code that may send an order)."""

    async def scenario(gw: GatewayThread, settings: Settings, refusal: str) -> None:
        session = BrokerSession(replace(settings, ib_port=gw.port), 12, "t")
        handled: list[bool] = []

        async def reconcile() -> None:
            handled.append(True)

        session.connected_handlers.append(reconcile)
        with pytest.raises(SettingsError, match=refusal):
            await session.connect(attempts=1)
        assert handled == [] and not session.ready.is_set() and not session.ib.isConnected()
        await session.close()

    paper = get_settings()
    live = replace(paper, trading_mode="live")
    for account, settings, refusal in (
        ("U7654321", paper, r"U7654321 is a live \(non-paper\) account"),
        ("DU1234567", live, "DU1234567 is a paper account"),
    ):
        with gateway(**MARKET, account=account) as gw:
            asyncio.run(asyncio.wait_for(scenario(gw, settings, refusal), 60))


class _NotAGateway:
    """A TCP server on a free loopback port that is not an IB gateway: it accepts and then
    says nothing (`reply` None) or answers with something else and closes."""

    def __init__(self, reply: bytes | None) -> None:
        import socket
        import threading

        self.reply = reply
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.recv(1024)
            if self.reply is None:
                self.held.append(conn)
            else:
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_server_that_is_not_a_gateway_is_named_as_such_in_the_connect_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    silent = _NotAGateway(None)
    try:
        session = BrokerSession(
            replace(get_settings(), ib_port=silent.port), 13, "t", connect_timeout=1.0
        )
        assert not asyncio.run(session.connect(attempts=1))
    finally:
        silent.close()
    (failure,) = [r for r in caplog.records if getattr(r, "event", "") == "connect_failed"]
    assert failure.error == (
        f"no IB API handshake from 127.0.0.1:{silent.port} within 1 s: "
        "is this the gateway's API port?"
    )


def test_tool_against_a_server_that_is_not_a_gateway_says_so_in_one_line(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from core.settings import PROJECT_ROOT

    web = _NotAGateway(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    try:
        result = subprocess.run(
            [sys.executable, "test_connection.py", "--port", str(web.port), "--timeout", "2"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "LOG_DIR": str(tmp_path / "logs")},
        )  # fmt: skip
    finally:
        web.close()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{web.port}" in line and "gateway's API port" in line
