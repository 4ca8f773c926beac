"""The exit manager's questions to IB: positions (fresh, coalesced), open orders and
executions, contracts, confirmed cancels, and waiting for IB's answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ib_async import Contract, Fill, Position, Stock, Trade

from bots.exit_parts import BROKER_TIMEOUT_S, ExitParts, ReconcileError, log
from ib import convert
from ib.intents import LookupStatus
from ib.positions import is_our_stock_position
from trading.model import BrokerPosition

Snapshot = tuple[list[Trade], list[Trade], list[Fill]]


class ExitBroker:
    """Our questions to IB and the waits for its answers (one per exit manager)."""

    def __init__(self, parts: ExitParts) -> None:
        self.parts = parts
        self.ib = parts.ib
        self.contracts: dict[str, Contract] = {}
        self.last_fills: list[Fill] = []  # the latest reqExecutions answer
        self._waiters: list[asyncio.Future[None]] = []
        self._query_lock = asyncio.Lock()
        # Set from a 1100 or a disconnect until the next reconciliation: no answer can come.
        self.link_lost = asyncio.Event()
        self.positions_task: asyncio.Task[dict[str, BrokerPosition] | None] | None = None
        self._positions_seq = 0  # positions requests started so far
        self._positions_task_seq = 0  # which of them positions_task is

    # -- waiting for IB ----------------------------------------------------------------
    def pulse(self, *_: object) -> None:
        """Wake everything waiting for IB (an order event, an error, a disconnect)."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (real seconds) until `predicate()` holds; False on timeout, a disconnect or
        a 1100 (no answer can come: waiting on would hold the symbol's lock against the
        reconciliation of the restore)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0 or not self.ib.isConnected() or self.link_lost.is_set():
                return predicate()
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, remaining)
        return True

    def market_timeout(self, market_seconds: float) -> float:
        """Real seconds for a market-time wait, never below one broker round trip."""
        return max(self.parts.clock.real_seconds(market_seconds), 1.0)

    async def ask_ib(self, request: Awaitable[Any], timeout: float) -> Any:
        """`request`'s answer. Raises TimeoutError after `timeout` real seconds, or at once
        when IB's link is lost (1100, disconnect): its answer can no longer come, and a
        request left waiting would hold up the reconciliation after the restore."""
        task = asyncio.ensure_future(request)
        lost = asyncio.ensure_future(self.link_lost.wait())
        try:
            await asyncio.wait({task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise TimeoutError("IB's link was lost" if self.link_lost.is_set() else "no answer")

    # -- our orders ----------------------------------------------------------------------
    def our_sells(self, symbol: str) -> list[Trade]:
        return [
            t
            for t in self.ib.openTrades()
            if t.contract.symbol == symbol
            and t.order.action == "SELL"
            and t.order.clientId == self.parts.client_id
        ]

    def server_stops(self, symbol: str) -> list[Trade]:
        """Our working protective STP legs of `symbol` (exits are never STP orders)."""
        return [t for t in self.our_sells(symbol) if t.order.orderType == "STP"]

    # -- positions (coalesced: ib_async keys these requests by name) -------------------------
    async def positions(self) -> dict[str, BrokerPosition] | None:
        """Fresh positions from IB (symbol -> position); None when IB did not answer.

        Fresh means requested after this call began: a request already in flight may have
        been answered before a fill the caller has seen, and a stale quantity sells twice.
        Callers share any request started after they asked, so a burst costs two at most.
        """
        asked = self._positions_seq
        while True:
            task = self.positions_task
            if task is not None and self._positions_task_seq > asked:
                return await asyncio.shield(task)
            if task is None or task.done():
                self._positions_seq += 1
                self._positions_task_seq = self._positions_seq
                self.positions_task = asyncio.ensure_future(self._request_positions())
                continue
            with contextlib.suppress(Exception):  # in flight since before we asked: wait it out
                await asyncio.shield(task)

    async def _request_positions(self) -> dict[str, BrokerPosition] | None:
        try:
            # No query lock: positions() keeps one positions request in flight, and
            # ib_async keys it apart from the order queries, so both can run at once.
            rows = await self.ask_ib(self.ib.reqPositionsAsync(), BROKER_TIMEOUT_S)
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.warning("positions_unavailable", error=repr(exc))
            return None
        out: dict[str, BrokerPosition] = {}
        for p in rows:
            if self.is_ours(p):
                self.parts.book[p.contract.symbol].con_id = p.contract.conId
                out[p.contract.symbol] = convert.broker_position(p)
        return out

    async def quantity(self, symbol: str) -> int | None:
        """The broker's fresh quantity of `symbol` (0: flat), None when IB did not answer."""
        positions = await self.positions()
        if positions is None:
            return None
        pos = positions.get(symbol)
        return round(pos.quantity) if pos else 0

    def is_ours(self, p: Position) -> bool:
        return is_our_stock_position(p, self.parts.session.account)

    def streamed_quantity(self, symbol: str) -> int | None:
        """The position IB's stream last reported for `symbol` (no request), None if none."""
        for p in self.ib.positions():
            if self.is_ours(p) and p.contract.symbol == symbol:
                return round(p.position)
        return None

    # -- orders and executions ---------------------------------------------------------------
    async def snapshot(self) -> Snapshot | None:
        """IB's open orders, completed orders and executions (one at a time); None when IB
        did not answer or its link was lost meanwhile."""
        async with self._query_lock:
            try:
                return await self.ask_ib(self.parts.orders.snapshot(), BROKER_TIMEOUT_S + 1.0)
            except TimeoutError as exc:
                log.warning("order_snapshot_failed", error=repr(exc))
                return None

    async def contract(self, symbol: str) -> Contract:
        """The SMART-routed stock contract and its minTick (from contract details)."""
        if symbol in self.contracts:
            return self.contracts[symbol]
        state = self.parts.book[symbol]
        query = Stock(symbol, "SMART", "USD")
        if state.con_id:
            query = Contract(conId=state.con_id, exchange="SMART")
        try:
            details = await self.ask_ib(self.ib.reqContractDetailsAsync(query), BROKER_TIMEOUT_S)
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise ReconcileError(f"{symbol}: contract details unavailable ({exc!r})") from exc
        if not details:
            raise ReconcileError(f"{symbol}: IB knows no stock contract for it")
        contract = details[0].contract
        assert contract is not None
        contract.exchange = "SMART"
        self.contracts[symbol] = contract
        state.tick = details[0].minTick or 0.01
        return contract

    async def cancel_confirmed(self, symbol: str, trades: list[Trade]) -> bool:
        """Cancel `trades` and wait until IB confirms each is done (cancelled or filled)."""
        pending = [t for t in trades if not t.isDone()]
        for trade in pending:
            with contextlib.suppress(ConnectionError, OSError):
                self.ib.cancelOrder(trade.order)
        if await self.wait_until(lambda: all(t.isDone() for t in pending), BROKER_TIMEOUT_S):
            return True
        # No confirmation: ask IB by orderRef rather than assume (failure mode 1).
        snapshot = await self.snapshot()
        if snapshot is None:
            log.error("cancel_unconfirmed", symbol=symbol, refs=[t.order.orderRef for t in pending])
            return False
        still_open = {t.order.orderRef for t in snapshot[0] if not t.isDone()}
        ok = not any(t.order.orderRef in still_open for t in pending)
        if not ok:
            log.error("cancel_unconfirmed", symbol=symbol, refs=sorted(still_open))
        return ok

    async def settle_refusals(self, symbol: str) -> bool:
        """Ask IB about our orders of `symbol` whose modification it refused (ib_async shows
        them Cancelled though they may work): False while IB has not answered, and then
        nothing may be placed beside them."""
        for trade in self.parts.orders.refused_modifications(symbol):
            async with self._query_lock:
                try:
                    found = await self.ask_ib(
                        self.parts.orders.settle_refused(trade), BROKER_TIMEOUT_S
                    )
                except TimeoutError:
                    return False
            if found.status is LookupStatus.UNKNOWN:
                return False
        return True
