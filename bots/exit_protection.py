"""The exit manager's protective sets at IB: the OCA target LMT + server STP placed for the
broker's quantity, the server STP moved in place between its two prices, and the one set
owed after a give-up."""

from __future__ import annotations

import uuid
from dataclasses import replace

from bots.exit_parts import AGENT, ExitParts, log
from ib import convert
from trading.exits import HeldPosition, protect_intent, server_stop_price
from trading.model import PURPOSE_BACKSTOP, PURPOSE_TARGET


class Protection:
    """Places and moves the protective sets (every one from a ProtectIntent)."""

    def __init__(self, parts: ExitParts) -> None:
        self.parts = parts

    async def protect_locked(self, pos: HeldPosition, quantity: int) -> None:
        """Place the OCA pair for min(quantity, the broker's fresh quantity)."""
        parts = self.parts
        if not parts.can_trade() or parts.book.is_blocked(pos.symbol):
            return
        fresh = await parts.broker.quantity(pos.symbol)
        if fresh is None or fresh <= 0:
            log.warning("protect_skipped", symbol=pos.symbol, broker_quantity=fresh)
            return
        if fresh != quantity:
            parts.tasks.schedule(pos.symbol)  # the position moved while we cancelled: again
        await self.place_set(pos, min(quantity, fresh))

    async def place_set(
        self, pos: HeldPosition, quantity: int, *, reason: str = "position_held"
    ) -> list[str]:
        """Send the backstop STP, then the target LMT (one OCA group) for `quantity`; returns
        both orderRefs. The stop goes first so a set cut short (a crash, a dropped socket
        between the two) still protects: a lone stop does, a lone target does not.
        Raises ConnectionError / OSError when the first could not be sent."""
        parts = self.parts
        contract = await parts.broker.contract(pos.symbol)
        oca = f"{AGENT}-{pos.symbol}-{uuid.uuid4().hex[:10]}"
        fault = parts.book.bot_stop_fault(pos.symbol, parts.clock.epoch())
        intent = protect_intent(pos, quantity, oca, parts.config, fault, reason=reason)
        target, backstop = convert.protective_orders(intent)
        trades = [
            parts.orders.place(contract, backstop, purpose=PURPOSE_BACKSTOP),
            parts.orders.place(contract, target, purpose=PURPOSE_TARGET),
        ]
        log.info("protection_placed", symbol=pos.symbol, quantity=quantity,
                 target=pos.target_price, server_stop=intent.stop_price, bot_stop=pos.stop_price,
                 bot_stop_fault=fault, oca_group=oca, tif=intent.tif)  # fmt: skip
        return [trade.order.orderRef for trade in trades]

    def check_server_stops(self) -> None:
        """Move each held symbol's server STP where `server_stop_price` wants it now: up to
        the stop-loss price while the bot cannot act (quotes stale, delayed or missing),
        back to the backstop when live quotes return. Symbols given up after rejects are
        left alone (server orders only, a human's call), so a refused change cannot loop."""
        parts = self.parts
        if not (parts.reconciled and parts.can_trade()):
            return
        now = parts.clock.epoch()
        for symbol in parts.book.held():
            stops = [t.order.auxPrice for t in parts.broker.server_stops(symbol)]
            if parts.book.server_stop_due(symbol, stops, now) is not None:
                parts.book[symbol].moving_stop = True
                parts.tasks.spawn(self.move_server_stop(symbol))

    async def move_server_stop(self, symbol: str) -> None:
        """Modify the working STP in place (same order id and orderRef: no second stop and no
        moment without one), under the symbol's lock so no exit or new set interleaves."""
        parts = self.parts
        state = parts.book[symbol]
        try:
            async with parts.tasks.lock(symbol):
                pos = state.position
                if pos is None or state.busy or not parts.can_trade():
                    return
                fault = parts.book.bot_stop_fault(symbol, parts.clock.epoch())
                due = server_stop_price(pos, fault)
                for trade in parts.broker.server_stops(symbol):
                    if abs(trade.order.auxPrice - due) < pos.tick / 2:
                        continue
                    if trade.orderStatus.status in {"PendingSubmit", "PendingCancel"}:
                        continue  # not acknowledged yet, or going away: the next check decides
                    was = trade.order.auxPrice
                    try:
                        parts.orders.modify_stop(trade, due, reason=fault or "live quotes")
                    except (ConnectionError, OSError, KeyError) as exc:
                        log.error("server_stop_not_moved", symbol=symbol, error=repr(exc))
                        return
                    (log.warning if fault else log.info)(
                        "server_stop_moved", symbol=symbol, stop=due, was=was,
                        bot_stop_fault=fault, order_ref=trade.order.orderRef,
                    )  # fmt: skip
        finally:
            state.moving_stop = False

    async def protect_after_give_up(self, symbol: str) -> None:
        """Exits were given up after repeated rejects, and the exit attempt had cancelled the
        protective set: place one set again for the broker's live quantity (caller holds
        the lock). Once per give-up; if IB refuses it too, the reject count alerts CRITICAL
        and the blocked flag stays for a human. Never loops."""
        parts = self.parts
        state = parts.book[symbol]
        if not parts.can_trade():
            return  # still owed: the next reconciliation places it
        if not await parts.broker.cancel_confirmed(symbol, parts.broker.our_sells(symbol)):
            state.give_up_pending = False
            self.alert_unprotected(symbol, "our leftover sells were not confirmed cancelled")
            return
        quantity = await parts.broker.quantity(symbol)
        pos = state.position
        if quantity is None or pos is None:
            return  # unknown: still owed, tried again on the next event or reconciliation
        state.give_up_pending = False
        if quantity <= 0:
            return
        try:
            refs = await self.place_set(
                replace(pos, quantity=quantity), quantity, reason="after_give_up"
            )
        except (ConnectionError, OSError) as exc:
            self.alert_unprotected(symbol, f"protective set not sent: {exc!r}")
            return
        state.give_up_refs.update(refs)
        log.warning("protection_after_give_up", symbol=symbol, quantity=quantity,
                    action="server-side set only; no more bot exits for it today")  # fmt: skip

    def alert_unprotected(self, symbol: str, reason: str) -> None:
        self.parts.book[symbol].unprotected = True
        log.critical("position_unprotected", symbol=symbol, reason=reason,
                     action="no server-side stop at IB: protect or close it by hand")  # fmt: skip
        self.parts.beat()
