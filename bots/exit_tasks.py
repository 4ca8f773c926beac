"""The exit manager's tasks: one lock per symbol (one exit owner), background tasks, and the
per-symbol re-check that coalesces bursts of events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bots.exit_parts import ExitParts, log


class SymbolTasks:
    """Per-symbol locks, background tasks and coalesced per-symbol re-checks."""

    def __init__(self, parts: ExitParts, sync: Callable[[str], Awaitable[None]]) -> None:
        self.parts = parts
        self._sync = sync  # brings one symbol in line (the reconciler's)
        self._locks: dict[str, asyncio.Lock] = {}
        self.dirty: set[str] = set()  # symbols waiting for a re-check
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.running: set[asyncio.Task[Any]] = set()

    def lock(self, symbol: str) -> asyncio.Lock:
        """The symbol's lock: every sell of it is placed under it."""
        return self._locks.setdefault(symbol, asyncio.Lock())

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.running.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", error=repr(task.exception()))

    def schedule(self, symbol: str) -> None:
        """Re-check one symbol soon (position changed, fill, reject); coalesces bursts."""
        self.dirty.add(symbol)
        worker = self._workers.get(symbol)
        if worker is None or worker.done():
            self._workers[symbol] = self.spawn(self._symbol_worker(symbol))

    def schedule_dirty(self) -> None:
        """Re-check every symbol whose events arrived while we could not act."""
        for symbol in list(self.dirty):
            self.schedule(symbol)

    async def _symbol_worker(self, symbol: str) -> None:
        parts = self.parts
        while symbol in self.dirty and not parts.stopping.is_set():
            if not (parts.reconciled and parts.can_trade()):
                return  # stays dirty: the next reconciliation reschedules it
            self.dirty.discard(symbol)
            await self._sync(symbol)

    def schedule_later(self, symbol: str, market_seconds: float) -> None:
        async def later() -> None:
            await self.parts.clock.sleep(market_seconds)
            self.schedule(symbol)

        self.spawn(later())

    async def cancel_all(self) -> None:
        """Stop every task but the caller's."""
        for task in list(self.running):
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
