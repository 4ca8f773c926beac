"""The control interface: JSON over HTTP on 127.0.0.1 (stdlib only).

    GET  /state               account, positions, orders, executions, time, clients
    GET  /health              {"ok": true, "result": {"port", "time", "steps", "symbols"}}
    POST /fault/<command>     body: JSON object of keyword arguments (see Faults.COMMANDS)

Replies are {"ok": true, "result": ...} or {"ok": false, "error": "..."} with status 400/404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from ibsim.faults import Faults

if TYPE_CHECKING:
    from ibsim.server import SimulatedGateway

log = logging.getLogger("ibsim.control")
_MAX_BODY = 64 * 1024


class ControlServer:
    def __init__(self, gateway: SimulatedGateway) -> None:
        self._gw = gateway
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            status, payload = await self._answer(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            status, payload = 400, {"ok": False, "error": f"bad request: {exc}"}
        body = json.dumps(payload, default=str).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > _MAX_BODY:
            return 400, {"ok": False, "error": "body too large"}
        body = await reader.readexactly(length) if length else b""
        return self.dispatch(method.upper(), path, body)

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == "/state":
            return 200, {"ok": True, "result": self._gw.account.state()}
        if method == "GET" and path == "/health":
            result = {
                "port": self._gw.port,
                "time": self._gw.now(),
                "steps": self._gw.steps,
                "symbols": list(self._gw.market.symbols),
            }
            return 200, {"ok": True, "result": result}
        if method == "POST" and path.startswith("/fault/"):
            name = path.removeprefix("/fault/")
            if name not in Faults.COMMANDS:
                return 404, {"ok": False, "error": f"unknown command {name!r}"}
            try:
                kwargs = json.loads(body or b"{}")
                if not isinstance(kwargs, dict):
                    raise TypeError("body must be a JSON object")
                result = getattr(self._gw.faults, name)(**kwargs)
            except (TypeError, ValueError, KeyError) as exc:
                return 400, {"ok": False, "error": f"{name}: {exc}"}
            log.info("control: %s %s -> %s", name, kwargs, result)
            return 200, {"ok": True, "result": result}
        return 404, {"ok": False, "error": f"no route {method} {path}"}
