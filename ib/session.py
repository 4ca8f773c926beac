"""The connection to IB shared by every program: connect, retry, classify IB's messages, health.

Failure modes handled here (../shared/reference/failure-modes.md): 5 (silent disconnects:
1100/1101/1102/2110), 7 (client id in use: 326), 12 (dead feeds: 2103/2105 then 2104/2106),
14 (competing session: 10197), 13 (order ids only from nextValidId after each connect).
Programs register async callbacks for "connected" (run reconciliation before any order)
and "resubscribe" (market data was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias

from ib_async import IB

from core.logs import get_logger
from core.settings import Settings, SettingsError, check_trading_mode
from ib.account import account_of

Callback = Callable[[], Awaitable[None]]

# The session's ib_async connection as the bots hold it, to hand to the adapter's functions
# (market data, contracts, intents, positions). A bot that still calls its methods itself
# (the exit side's broker queries, the day trader's book) is reaching past the adapter.
IBConnection: TypeAlias = IB


def quiet_ib_async_logs(floor: int = logging.WARNING) -> None:
    """Keep ib_async's logger at `floor` or the root's level, whichever is higher: it prints
    every order status in full at INFO, and our own events carry what matters. Its wrapper
    logs every IB message (a cancel's 202 too) as an ERROR: BrokerSession logs each with its
    meaning instead (ib_message), so only ib_async's own failures are kept."""
    logging.getLogger("ib_async").setLevel(max(floor, logging.getLogger().level))
    logging.getLogger("ib_async.wrapper").setLevel(logging.CRITICAL)


class ErrorKind(Enum):
    CONNECTIVITY_LOST = "connectivity_lost"  # 1100
    RESTORED_DATA_LOST = "restored_data_lost"  # 1101: subscriptions are gone
    RESTORED_DATA_KEPT = "restored_data_kept"  # 1102
    FEED_DOWN = "feed_down"  # 2103, 2105, 2110
    FEED_OK = "feed_ok"  # 2104, 2106, 2158
    CLIENT_ID_IN_USE = "client_id_in_use"  # 326
    COMPETING_SESSION = "competing_session"  # 10197
    PACING = "pacing"  # 162 (also "no data": read the text), 420
    NO_SUBSCRIPTION = "no_subscription"  # 354, 10089, 10168
    DELAYED_DATA = "delayed_data"  # 10167
    ORDER_REJECTED = "order_rejected"  # 201, 202 is a cancel confirmation
    ORDER_CANCELLED = "order_cancelled"  # 202
    CANCEL_UNKNOWN = "cancel_unknown"  # 10147 / 10148
    UNKNOWN_CONTRACT = "unknown_contract"  # 200
    OTHER = "other"


ERROR_KINDS: dict[int, ErrorKind] = {
    1100: ErrorKind.CONNECTIVITY_LOST,
    1101: ErrorKind.RESTORED_DATA_LOST,
    1102: ErrorKind.RESTORED_DATA_KEPT,
    2103: ErrorKind.FEED_DOWN,
    2105: ErrorKind.FEED_DOWN,
    2110: ErrorKind.FEED_DOWN,
    2104: ErrorKind.FEED_OK,
    2106: ErrorKind.FEED_OK,
    2158: ErrorKind.FEED_OK,
    326: ErrorKind.CLIENT_ID_IN_USE,
    10197: ErrorKind.COMPETING_SESSION,
    162: ErrorKind.PACING,
    420: ErrorKind.PACING,
    354: ErrorKind.NO_SUBSCRIPTION,
    10089: ErrorKind.NO_SUBSCRIPTION,
    10168: ErrorKind.NO_SUBSCRIPTION,
    10167: ErrorKind.DELAYED_DATA,
    201: ErrorKind.ORDER_REJECTED,
    202: ErrorKind.ORDER_CANCELLED,
    10147: ErrorKind.CANCEL_UNKNOWN,
    10148: ErrorKind.CANCEL_UNKNOWN,
    200: ErrorKind.UNKNOWN_CONTRACT,
}
# Informational codes logged at INFO rather than WARNING.
# Real seconds before the first retry of a connect or after a drop; each later retry waits
# twice as long, up to the session's retry_seconds.
FIRST_RECONNECT_S = 0.1

_QUIET = frozenset({ErrorKind.FEED_OK, ErrorKind.DELAYED_DATA, ErrorKind.ORDER_CANCELLED})


def connect_failure(host: str, port: int, timeout: float, exc: BaseException) -> str:
    """What a failed connect means, in words a user can act on."""
    where = f"{host}:{port}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}: is the gateway running with its API enabled?"
    if isinstance(exc, TimeoutError):
        # TCP was accepted (or hung) but no TWS API answer came: not a gateway, or a hung one.
        return (
            f"no IB API handshake from {where} within {timeout:g} s: "
            "is this the gateway's API port?"
        )
    detail = str(exc) or "connection closed"
    return f"cannot connect to {where}: {type(exc).__name__}: {detail}"


def classify_error(code: int) -> ErrorKind:
    return ERROR_KINDS.get(code, ErrorKind.OTHER)


@dataclass
class ConnectionHealth:
    """What the bot knows about its link; healthy = socket up, data flowing, no data loss."""

    connected: bool = False
    data_lost: bool = False
    feeds_suspect: bool = False
    competing_session: bool = False
    connects: int = 0
    last_error: tuple[int, str] | None = None
    last_connected_at: float = 0.0
    errors_seen: dict[int, int] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return (
            self.connected
            and not self.data_lost
            and not self.feeds_suspect
            and not self.competing_session
        )


class BrokerSession:
    """One IB connection with a fixed client id that comes back by itself.

    `connected_handlers` run after every (re)connect, before the program may send orders;
    `resubscribe_handlers` run when IB says market data subscriptions were lost (1101) or
    feeds came back (1102 / 2104 after 2103). `ready` is set only after the connected
    handlers finished without error.
    """

    def __init__(
        self,
        settings: Settings,
        client_id: int,
        bot: str,
        *,
        retry_seconds: float = 30.0,
        jitter: float = 0.2,
        connect_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.bot = bot
        self.retry_seconds = retry_seconds
        self.jitter = jitter
        self.connect_timeout = connect_timeout
        self.ib = IB()
        self.health = ConnectionHealth()
        self.ready = asyncio.Event()
        self.account = ""
        self.connected_handlers: list[Callback] = []
        self.resubscribe_handlers: list[Callback] = []
        self.error_listeners: list[Callable[[int, int, str], None]] = []
        self._log = get_logger(bot)
        self._stopping = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._connecting = False  # connect() is looping: disconnects must not start a 2nd loop
        self._client_id_rejected = False
        self._id_rejected_event = asyncio.Event()
        self.ib.errorEvent += self._on_error
        self.ib.disconnectedEvent += self._on_disconnected

    # -- connecting -------------------------------------------------------------
    async def connect(self, attempts: int | None = None) -> bool:
        """Connect (retrying every `retry_seconds` with jitter) and run the connected handlers.

        Returns False when `attempts` ran out or the session is stopping. Raises SettingsError
        when the gateway's account does not match paper/live: that is never retried.
        """
        quiet_ib_async_logs()
        tried = 0
        delays = self._retry_delays()
        self._connecting = True
        try:
            while not self._stopping:
                tried += 1
                delay = next(delays)
                if await self._connect_once(delay):
                    return True
                if attempts is not None and tried >= attempts:
                    return False
                await asyncio.sleep(delay)
            return False
        finally:
            self._connecting = False

    async def _connect_or_326(self, s: Settings) -> None:
        """ib_async's connect, abandoned as soon as IB answers 326: after that error IB
        closes the socket but ib_async would wait out the whole connect timeout."""
        connect = asyncio.ensure_future(
            self.ib.connectAsync(
                s.ib_host,
                s.ib_port,
                clientId=self.client_id,
                timeout=self.connect_timeout,
                account=s.ib_account,
            )
        )
        rejected = asyncio.ensure_future(self._id_rejected_event.wait())
        try:
            await asyncio.wait({connect, rejected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            rejected.cancel()
        if not connect.done():
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
            raise ConnectionError(f"client id {self.client_id} is in use (326)")
        connect.result()

    def _retry_delays(self) -> Iterator[float]:
        """FIRST_RECONNECT_S, doubling up to retry_seconds (then with jitter). The first retries
        come fast: a 326 as a standby takes over (the dead holder of our client id not yet
        gone from the gateway) or a dropped socket leaves a fill without its stop meanwhile."""
        delay = FIRST_RECONNECT_S
        while delay < self.retry_seconds:
            yield delay
            delay *= 2
        while True:
            spread = self.retry_seconds * self.jitter
            yield max(0.1, self.retry_seconds + random.uniform(-spread, spread))

    async def _connect_once(self, retry_in_s: float) -> bool:
        self._client_id_rejected = False
        self._id_rejected_event = asyncio.Event()
        s = self.settings
        try:
            await self._connect_or_326(s)
        except (OSError, TimeoutError, ConnectionError) as exc:
            if self._client_id_rejected:
                self._log.error(
                    "client_id_in_use",
                    client_id=self.client_id,
                    action=f"another program uses client id {self.client_id}; retrying",
                    retry_in_s=round(retry_in_s, 2),
                )
            else:
                self._log.warning(
                    "connect_failed",
                    host=s.ib_host,
                    port=s.ib_port,
                    client_id=self.client_id,
                    error=connect_failure(s.ib_host, s.ib_port, self.connect_timeout, exc),
                    retry_in_s=round(retry_in_s, 2),
                )
            return False
        try:
            self.account = account_of(self.ib, s.ib_account)
            # The program checked --live against TRADING_MODE at start; here the account, on
            # every (re)connect, before the connected handlers may send an order.
            check_trading_mode(s, s.is_live, self.account)
        except SettingsError:
            self.ib.disconnect()
            raise
        self.health.connected = True
        self.health.data_lost = False
        self.health.feeds_suspect = False
        self.health.connects += 1
        self.health.last_connected_at = time.time()
        self._log.info(
            "connected",
            host=s.ib_host,
            port=s.ib_port,
            client_id=self.client_id,
            account=self.account,
            server_version=self.ib.client.serverVersion(),
            connects=self.health.connects,
        )
        try:
            for handler in self.connected_handlers:
                await handler()
        except Exception as exc:  # reconciliation failed: no orders until it succeeds
            self._log.exception("connected_handler_failed", error=str(exc))
            self.ready.clear()
            self.ib.disconnect()
            return False
        self.ready.set()
        return True

    # -- events -------------------------------------------------------------------
    def _on_error(self, req_id: int, code: int, message: str, contract: object = None) -> None:
        kind = classify_error(code)
        self.health.last_error = (code, message)
        self.health.errors_seen[code] = self.health.errors_seen.get(code, 0) + 1
        fields = {"code": code, "req_id": req_id, "kind": kind.value, "text": message}
        if kind in _QUIET:
            self._log.info("ib_message", **fields)
        elif kind in {ErrorKind.COMPETING_SESSION, ErrorKind.CLIENT_ID_IN_USE}:
            self._log.critical("ib_alert", **fields)
        else:
            self._log.warning("ib_message", **fields)

        if kind is ErrorKind.CLIENT_ID_IN_USE:
            self._client_id_rejected = True
            self._id_rejected_event.set()
        elif kind is ErrorKind.CONNECTIVITY_LOST:
            self.health.data_lost = True
            self.ready.clear()
        elif kind in {ErrorKind.RESTORED_DATA_LOST, ErrorKind.RESTORED_DATA_KEPT}:
            # Resubscribe after 1102 too: feeds have been seen dead after it (IBC #143).
            self._spawn(self._restored(kind))
        elif kind is ErrorKind.FEED_DOWN:
            self.health.feeds_suspect = True
        elif kind is ErrorKind.FEED_OK and self.health.feeds_suspect:
            self.health.feeds_suspect = False
            self._spawn(self._resubscribe())
        elif kind is ErrorKind.COMPETING_SESSION:
            self.health.competing_session = True
        for listener in self.error_listeners:
            listener(req_id, code, message)

    async def _restored(self, kind: ErrorKind) -> None:
        self.health.data_lost = False
        self.health.feeds_suspect = False
        await self._resubscribe()
        # Fills may have happened while the link was down: the handlers reconcile again.
        try:
            for handler in self.connected_handlers:
                await handler()
        except Exception as exc:
            # No orders until a reconciliation succeeds: reconnect and run the handlers again.
            self._log.exception("reconcile_after_restore_failed", error=str(exc))
            self.ready.clear()
            if self.ib.isConnected():
                self.ib.disconnect()
            return
        self.ready.set()
        self._log.info("connectivity_restored", kind=kind.value)

    async def _resubscribe(self) -> None:
        for handler in self.resubscribe_handlers:
            try:
                await handler()
            except Exception as exc:
                self._log.exception("resubscribe_failed", error=str(exc))

    def _on_disconnected(self) -> None:
        self.health.connected = False
        self.ready.clear()
        if self._stopping or self._connecting:
            return  # closing, or connect() is already retrying
        self._log.error("disconnected", retry_in_s=FIRST_RECONNECT_S)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        # The first try comes at once: a dropped socket is mostly a gateway that is still
        # there, and until the reconciliation a fill has no stop. Then backing off.
        delays = self._retry_delays()
        delay = next(delays)
        while not self._stopping and not self.ib.isConnected():
            await asyncio.sleep(delay)
            delay = next(delays)
            if self._stopping:
                return
            try:
                if await self._connect_once(delay):
                    return
            except SettingsError as exc:
                self._log.critical("account_mismatch", error=str(exc))
                return

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_task_failure(self._log))
        return task

    # -- shutdown -------------------------------------------------------------------
    async def close(self) -> None:
        """Disconnect without reconnecting; orders already at IB stay there."""
        self._stopping = True
        self.ready.clear()
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self.ib.isConnected():
            self.ib.disconnect()
        self.health.connected = False


def _log_task_failure(log):  # type: ignore[no-untyped-def]
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", error=repr(task.exception()))

    return done
