"""The dashboard's web app (Starlette): the page, a server-sent-events stream, JSON and actions.

    GET  /                  the page (live through /api/stream)
    GET  /health            200 {"ok": true} or 503 with the problems (bot down, stale
                            heartbeat, position without a stop, stale data)
    GET  /api/snapshot      everything the page shows
    GET  /api/positions | /api/trades | /api/bots | /api/alerts | /api/actions
    GET  /api/stream        text/event-stream: a snapshot each time it changes
    POST /api/actions/halt-entries | resume-entries | flatten-all | flatten/{symbol}
                            body {"who": "name", "confirm": true}; header
                            Authorization: Bearer <DASHBOARD_TOKEN>

Every response passes through core.logs.scrub: no configured secret can leave.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from core.logs import scrub
from webui.actions import ActionRefused, Actions
from webui.state import Sources, build_snapshot

PAGE = Path(__file__).with_name("page.html")
_WHO = re.compile(r"^[\w .@'-]{1,40}$")


class SnapshotCache:
    """One snapshot shared by every client, rebuilt at most every `max_age_s` real seconds."""

    def __init__(self, build: Callable[[], dict[str, Any]], max_age_s: float) -> None:
        self.build = build
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = 0.0
        self._value: dict[str, Any] | None = None

    def get(self, fresh: bool = False) -> dict[str, Any]:
        with self._lock:
            if fresh or self._value is None or time.monotonic() - self._at >= self.max_age_s:
                self._value = self.build()
                self._at = time.monotonic()
            return self._value


def _json(payload: Any, status: int = 200) -> Response:
    body = scrub(json.dumps(payload, default=str))
    return Response(body, status_code=status, media_type="application/json")


def create_app(
    sources: Sources,
    actions: Actions,
    token: str,
    *,
    refresh_s: float = 1.0,
) -> Starlette:
    """The app. `token`: what every action must present (never empty)."""
    if not token:
        raise ValueError("the dashboard needs a token for its actions")
    cache = SnapshotCache(lambda: build_snapshot(sources), max_age_s=refresh_s / 2)

    async def snapshot(fresh: bool = False) -> dict[str, Any]:
        return await asyncio.to_thread(cache.get, fresh)

    async def page(_: Request) -> Response:
        return HTMLResponse(scrub(PAGE.read_text(encoding="utf-8")))

    async def health(_: Request) -> Response:
        state = await snapshot()
        verdict = state["health"]
        return _json(verdict, 200 if verdict["ok"] else 503)

    def part(key: str) -> Callable[[Request], Any]:
        async def endpoint(_: Request) -> Response:
            state = await snapshot()
            return _json(state if key == "snapshot" else {key: state[key]})

        return endpoint

    async def trades(_: Request) -> Response:
        state = await snapshot()
        return _json({"day": state["day"]})

    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            last = None
            quiet_since = time.monotonic()
            while not await request.is_disconnected():
                body = scrub(json.dumps(await snapshot(), default=str))
                if body != last:
                    last, quiet_since = body, time.monotonic()
                    yield f"event: snapshot\ndata: {body}\n\n"
                elif time.monotonic() - quiet_since > 15:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"  # a comment: proxies keep the stream open
                await asyncio.sleep(refresh_s)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def act(request: Request) -> Response:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not presented or not hmac.compare_digest(presented.encode(), token.encode()):
            return _json({"error": "the dashboard token is missing or wrong"}, 401)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("confirm") is not True:
            return _json({"error": 'not confirmed: send {"who": ..., "confirm": true}'}, 400)
        name = str(body.get("who", "")).strip()
        if not _WHO.match(name):
            return _json({"error": "say who you are: 1-40 letters, digits, spaces or .@'-"}, 400)
        host = request.client.host if request.client else "?"
        who = f"{name} ({host})"
        kind = request.path_params.get("action", "flatten")
        try:
            if kind == "halt-entries":
                done = await asyncio.to_thread(actions.halt_entries, who)
            elif kind == "resume-entries":
                done = await asyncio.to_thread(actions.resume_entries, who)
            elif kind == "flatten-all":
                done = await asyncio.to_thread(actions.flatten_all, who)
            elif kind == "flatten":
                symbol = str(request.path_params.get("symbol", ""))
                done = await asyncio.to_thread(actions.flatten_one, who, symbol)
            else:
                return _json({"error": f"no action {kind!r}"}, 404)
        except ActionRefused as exc:
            return _json({"error": str(exc)}, 409)
        await snapshot(fresh=True)
        return _json({"ok": True, **done}, 202 if kind == "flatten-all" else 200)

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/api/snapshot", part("snapshot")),
        Route("/api/positions", part("positions")),
        Route("/api/bots", part("bots")),
        Route("/api/alerts", part("alerts")),
        Route("/api/actions", part("actions")),
        Route("/api/trades", trades),
        Route("/api/stream", stream),
        Route("/api/actions/{action}", act, methods=["POST"]),
        Route("/api/actions/flatten/{symbol}", act, methods=["POST"]),
    ]
    return Starlette(routes=routes)
