"""One API client connection: handshake, startApi, request dispatch, buffered output.

Runs entirely on the gateway's event loop. Output is buffered in `push` and written once per
request batch or engine step (`flush`), so a burst of ticks costs one socket write.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import TYPE_CHECKING

from ibsim import messages as msg
from ibsim import requests as rq
from ibsim.config import SERVER_VERSION
from ibsim.wire import FrameReader, ProtocolError

if TYPE_CHECKING:
    from ibsim.server import SimulatedGateway

log = logging.getLogger("ibsim.session")
MAX_UNREAD_BYTES = 64 * 1024 * 1024
_VERSION_RE = re.compile(r"^v(\d+)(?:\.\.(\d+))?(?:\s.*)?$")


class ClientSession(asyncio.Protocol):
    def __init__(self, gateway: SimulatedGateway) -> None:
        self.gw = gateway
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.client_id: int | None = None
        self.peer = "?"
        self.out: list[bytes] = []
        self.data_type = 1
        self.positions_sub = False
        self.account_sub = False
        self.lost = False  # between a 1100 and its 1101/1102
        self.silent = False  # fault: socket open, nothing read or written
        self.closed = False

    # -- transport ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gw.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.out.clear()
        self.gw.on_session_closed(self)

    @property
    def receiving(self) -> bool:
        """True when server messages should reach this client now."""
        return not (self.closed or self.lost or self.silent or self.gw.silent) and (
            self.client_id is not None
        )

    def push(self, data: bytes) -> None:
        if not self.closed and not self.silent and not self.gw.silent:
            self.out.append(data)

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.closed:
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            self.transport.write(data)
            if self.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
                # A client that stopped reading would make the gateway hoard memory.
                log.warning("client %s is not reading (%d bytes queued); dropping it",
                            self.client_id, self.transport.get_write_buffer_size())  # fmt: skip
                self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.closed:
            self.flush()
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self.closed = True

    # -- input ----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.reader.feed(data)
        try:
            if not self.reader.handshake_done:
                version = self.reader.read_handshake()
                if version is None:
                    return
                self._on_handshake(version)
            for fields in self.reader.read_messages():
                if self.closed:
                    break
                if self.silent or self.gw.silent:
                    continue  # a hung gateway answers nothing (framing stays in step)
                self._on_message(fields)
        except ProtocolError as exc:
            log.warning(
                "client %s (%s) sent bad bytes: %s; dropping it", self.client_id, self.peer, exc
            )
            self.close(abort=True)
            return
        self.gw.flush_all()

    def _on_handshake(self, text: str) -> None:
        match = _VERSION_RE.match(text.strip())
        if not match:
            raise ProtocolError(f"bad version range {text!r}")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < SERVER_VERSION or low > SERVER_VERSION:
            raise ProtocolError(
                f"client versions {low}..{high} exclude server version {SERVER_VERSION}"
            )
        self.push(msg.server_hello(SERVER_VERSION, self.gw.now()))

    def _on_message(self, fields: list[str]) -> None:
        try:
            request = rq.parse_request(fields)
        except rq.UnknownMessage as exc:
            log.warning("client %s: %s; dropping it", self.client_id, exc)
            self.push(msg.error(-1, 505, f"Fatal Error: Unknown message id. {exc}"))
            self.close(abort=False)
            return
        except rq.RequestError as exc:
            log.info("client %s: rejected %s: %s", self.client_id, fields[:3], exc)
            self.push(msg.error(exc.req_id, exc.code, exc.text))
            return
        if self.client_id is None and not isinstance(request, rq.StartApi):
            raise ProtocolError(f"message {request.msg_id} before startApi")
        try:
            self.gw.handle(self, request)
        except rq.RequestError as exc:
            log.info("client %s: request %s refused: %s", self.client_id, request.msg_id, exc)
            self.push(msg.error(exc.req_id, exc.code, exc.text))
        except Exception:  # a bug in the simulator must not take the other clients down
            log.exception("client %s: internal error on %s", self.client_id, fields[:4])
            self.push(msg.error(-1, 321, "Error validating request: simulator internal error"))
