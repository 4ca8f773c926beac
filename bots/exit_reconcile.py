"""The exit manager's reconciliation: at startup, after every reconnect and for each symbol
whose position, fills or orders changed, make the broker (truth for quantities), the
database (truth for intent) and our protective orders agree (trading.reconcile decides,
this applies)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from bots.exit_fills import parse_time
from bots.exit_parts import ExitParts, ReconcileError, log
from core.clock import calendar_loaded, preload_calendar
from core.money import average_price
from ib import convert
from ib.fills import fills_of
from trading.exits import HeldPosition, covered_quantity
from trading.model import DAY_TRADER, PURPOSE_EOD, BrokerPosition, WorkingOrder
from trading.reconcile import ReconcilePlan, merge_plans, plan_reconciliation


class Reconciler:
    """Applies trading.reconcile's plans at startup, reconnect and per symbol."""

    def __init__(self, parts: ExitParts) -> None:
        self.parts = parts
        self.last_report: dict[str, Any] = {}

    async def reconcile(self) -> None:
        """Startup / reconnect: apply missed fills, then make the broker, the database and
        the protective orders agree. Raises ReconcileError (no orders until it succeeds)."""
        parts = self.parts
        parts.reconciled = False
        parts.reconciling = True
        parts.broker.link_lost.clear()  # connected, or IB's link restored: answers come again
        parts.state = "RECONCILING"
        parts.beat()  # at once: the day trader sends no entry until this says RECONCILED
        try:
            plan = await self._reconcile()
        except ReconcileError as exc:
            parts.state = "DEGRADED"
            log.error("reconcile_failed", reason=str(exc), action="no orders until it succeeds")
            parts.beat(str(exc))
            raise
        finally:
            parts.reconciling = False
        parts.reconciled = True
        parts.state = "RECONCILED"
        if not calendar_loaded():
            # Built once protected, not at start: its import (pandas) held the GIL against
            # connecting and reconciling. Server stops protect; bot exits wait for it.
            preload_calendar()
        self.last_report = plan.report()
        log.info("reconciliation_report", **self.last_report)
        parts.beat()
        parts.tasks.schedule_dirty()  # events that arrived while we reconciled

    async def _reconcile(self) -> ReconcilePlan:
        parts, broker = self.parts, self.parts.broker
        # Every request at once (a restart's time to protection is their slowest answer).
        positions, snapshot = await asyncio.gather(broker.positions(), broker.snapshot())
        if positions is None:
            raise ReconcileError("IB did not answer the positions request")
        if snapshot is None:
            raise ReconcileError("IB did not answer the open orders / executions requests")
        open_trades, _completed, fills = snapshot
        broker.last_fills = fills
        longs = [s for s, p in positions.items() if p.quantity > 0 and s not in broker.contracts]
        contracts = asyncio.gather(*(broker.contract(s) for s in longs), return_exceptions=True)
        # Fills missed while we were down (failure mode 11).
        for done in fills_of(parts.ib, fills, parts.clock.now()):
            parts.fills.record(done)
        await parts.orders.recover(snapshot)  # the same answer: no second round of requests
        await contracts  # a failure shows again (raised) where the symbol needs it
        working = [convert.working_order(t) for t in open_trades if not t.isDone()]
        rows = {r["symbol"]: r for r in parts.db.get_active_positions()}
        entries_in_flight = {
            i["symbol"] for i in parts.db.get_open_intents(agent=DAY_TRADER) if i["side"] == "BUY"
        }
        symbols = sorted(set(positions) | set(rows) | {o.symbol for o in working})
        plans = []
        for symbol in symbols:
            async with parts.tasks.lock(symbol):
                plans.append(
                    await self.sync_locked(
                        symbol,
                        positions.get(symbol),
                        [o for o in working if o.symbol == symbol],
                        young=symbol in entries_in_flight,
                        flat_reason="RECONCILE",
                    )
                )
        return merge_plans(plans)

    async def sync_symbol(self, symbol: str) -> None:
        """Bring one symbol in line with IB's fresh answer (the per-symbol re-check)."""
        parts = self.parts
        positions = await parts.broker.positions()
        if positions is None:
            return
        try:
            async with parts.tasks.lock(symbol):
                if not await parts.broker.settle_refusals(symbol):
                    raise ReconcileError("IB did not say whether an order whose "
                                         "modification it refused still works")  # fmt: skip
                ours = [convert.working_order(t) for t in parts.broker.our_sells(symbol)]
                await self.sync_locked(
                    symbol, positions.get(symbol), ours, young=False, flat_reason="MANUAL"
                )
        except ReconcileError as exc:
            log.error("symbol_sync_failed", symbol=symbol, reason=str(exc))

    async def sync_locked(
        self,
        symbol: str,
        position: BrokerPosition | None,
        orders: list[WorkingOrder],
        *,
        young: bool,
        flat_reason: str,
    ) -> ReconcilePlan:
        """Bring one symbol in line (caller holds its lock); returns what was planned."""
        parts, broker, book = self.parts, self.parts.broker, self.parts.book
        state = book[symbol]
        quantity = round(position.quantity) if position else 0
        if book.track_short(symbol, quantity):
            log.critical("short_position", symbol=symbol, quantity=quantity,
                         action="never sold more by the exit manager; cover it by hand")  # fmt: skip
        if quantity <= 0 and broker.our_sells(symbol):
            # Flat or short (someone else sold): our sells could only open or deepen a short.
            # Cancel them before any bookkeeping; the plan checks they are gone.
            await broker.cancel_confirmed(symbol, broker.our_sells(symbol))
        row = parts.db.get_active_position(symbol)
        if quantity > 0 and row is None and not young and not parts.reconciling:
            row = await self._grace_for_day_trader(symbol)
        last_prices = book.last_prices()
        if quantity == 0 and row is not None and not young:
            # An exit's purpose is written behind its send: on disk before the row closes.
            await asyncio.to_thread(parts.orders.flush)
            if not parts.fills.close_from_fills(symbol, row) and not parts.reconciling:
                await self._pull_executions()  # our fill may be behind the position update
                parts.fills.close_from_fills(symbol, row)
            if (price := self._others_sell_price(symbol, row)) is not None:
                last_prices[symbol] = price
            row = parts.db.get_active_position(symbol)
            young = young or self._entry_is_young(row)
        if blocked := parts.fills.is_blocked(symbol):
            book.block(symbol)
            ours = [o for o in orders if o.client_id == parts.client_id]
            if quantity > 0 and covered_quantity(ours) > quantity:
                # Someone else sold part: the set left after the give-up now covers more
                # than is held. Replace it once for what is left (one per position change).
                state.give_up_pending = True
            elif quantity > 0 and not ours and not state.give_up_refs:
                # Blocked by an earlier process (the flag is in the database) and nothing
                # protects it at IB: one set, once per process; refused too, it is alerted.
                state.give_up_pending = True
        if quantity > 0 and symbol not in broker.contracts:
            await broker.contract(symbol)
        plan = plan_reconciliation(
            [position] if position else [],
            [row] if row else [],
            orders,
            config=parts.config,
            our_client_id=parts.client_id,
            ticks=book.ticks(),
            last_prices=last_prices,
            young={symbol} if young else set(),
            blocked={symbol} if blocked else set(),
        )
        await self._apply(symbol, plan, flat_reason, row)
        if blocked and quantity > 0 and state.give_up_pending:
            await parts.protection.protect_after_give_up(symbol)
        entry_in_flight = quantity == 0 and row is not None and young
        if plan.deferred or entry_in_flight:  # look again once the grace has passed
            parts.tasks.schedule_later(symbol, parts.config.adopt_grace_s)
        return plan

    async def _pull_executions(self) -> None:
        broker = self.parts.broker
        snapshot = await broker.snapshot()
        if snapshot is not None:
            broker.last_fills = snapshot[2]
        for done in fills_of(
            self.parts.ib, snapshot[2] if snapshot else [], self.parts.clock.now()
        ):
            self.parts.fills.record(done)

    def _others_sell_price(self, symbol: str, row: dict[str, Any]) -> float | None:
        """The average price of other clients' sells of `symbol` since the row's entry, from
        the latest reqExecutions answer; None when IB showed us none.

        IB lists other clients' executions only to its master API client, so usually this
        is None and a position someone else closed is booked at the last quote (else at its
        entry price): the MANUAL row's P&L is then an estimate.
        """
        entered = parse_time(row["entry_time"])
        sells = [
            (f.execution.shares, f.execution.price)
            for f in self.parts.broker.last_fills
            if f.contract.symbol == symbol
            and f.execution.side in {"SLD", "SELL"}
            and f.execution.clientId != self.parts.client_id
            and (entered is None or f.time is None or f.time >= entered)
        ]
        return average_price(sells)

    async def _grace_for_day_trader(self, symbol: str) -> dict[str, Any] | None:
        """A position nobody registered: give the day trader a few market seconds to write
        its row (its entry price and target win), then adopt."""
        parts = self.parts
        deadline = parts.clock.epoch() + parts.config.adopt_grace_s
        while parts.clock.epoch() < deadline and not parts.stopping.is_set():
            row = parts.db.get_active_position(symbol)
            if row is not None:
                return row
            await asyncio.sleep(min(0.05, parts.clock.real_seconds(0.5)))
        return parts.db.get_active_position(symbol)

    def _entry_is_young(self, row: dict[str, Any] | None) -> bool:
        """A row whose entry may still be filling: do not close it as flat yet."""
        if row is None:
            return False
        db = self.parts.db
        if any(i["side"] == "BUY" for i in db.get_open_intents(symbol=row["symbol"])):
            return True
        try:
            entered = datetime.fromisoformat(row["entry_time"]).timestamp()
        except (TypeError, ValueError):
            return False
        return self.parts.clock.epoch() - entered < self.parts.config.adopt_grace_s

    async def _apply(
        self, symbol: str, plan: ReconcilePlan, flat_reason: str, row: dict[str, Any] | None
    ) -> None:
        parts, db = self.parts, self.parts.db
        for alert in plan.alerts:
            log.critical("reconcile_alert", symbol=symbol, alert=alert)
        for pos in plan.adopt:
            db.add_active_position(pos.symbol, pos.quantity, pos.entry_price, pos.target_price,
                                   pos.stop_price, agent=pos.agent)  # fmt: skip
            log.warning("position_adopted", symbol=pos.symbol, quantity=pos.quantity,
                        entry=pos.entry_price, target=pos.target_price, stop=pos.stop_price)  # fmt: skip
        for sym, qty in plan.resize:
            db.update_active_position(sym, quantity=qty)
            log.warning("position_resized", symbol=sym, quantity=qty)
        for closure in plan.close:
            parts.fills.close_row(closure.symbol, closure.exit_price, flat_reason)
        held = {p.symbol: p for p in plan.held}
        if symbol in held:
            parts.book[symbol].position = held[symbol]
            parts.quotes.subscribe(symbol)
        elif symbol not in plan.deferred:
            parts.quotes.forget(symbol)
        cancel_ids = {o.order_id for o in plan.cancel}
        cancels = [t for t in parts.broker.our_sells(symbol) if t.order.orderId in cancel_ids]
        if plan.cancel and not await parts.broker.cancel_confirmed(symbol, cancels):
            raise ReconcileError(f"{symbol}: cancels of our sells were not confirmed")
        for pos, qty in plan.protect:
            if self.flatten_due() and parts.book[symbol].cooldown_until <= parts.clock.epoch():
                await parts.selling.exit_locked(symbol, PURPOSE_EOD)  # after the flatten: no sets
            else:
                await parts.protection.protect_locked(pos, qty)
        if symbol in held and row is not None:  # bookkeeping after the stop is at IB
            self._record_exit_prices(held[symbol], row)

    def _record_exit_prices(self, pos: HeldPosition, row: dict[str, Any]) -> None:
        """A row added without target or stop (the store reads no settings) shows the prices
        this manager protects it at, so the table a user queries agrees with the orders."""
        missing = {
            column: price
            for column, price in (
                ("profit_target_price", pos.target_price),
                ("stop_loss_price", pos.stop_price),
            )
            if row.get(column) is None
        }
        if missing:
            self.parts.db.update_active_position(pos.symbol, **missing)

    def flatten_due(self) -> bool:
        """True after the EOD flatten (sell, place no new set). Until the exchange calendar
        has loaded, a second after start, False: a restarted exit manager protects at once
        (a set is always safe) and the EOD check sells once it knows the phase."""
        return calendar_loaded() and self.parts.watch.phase().flattening
