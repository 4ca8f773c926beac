"""The exit manager's sells: a whole position sold now (bot stop, touched target, EOD, a
person's flatten). First by moving the working protective STP through the market (one
message, it already sells exactly the held quantity); otherwise our working sells are
cancelled *and confirmed* and the broker's fresh quantity is sold, never when it is <= 0
(failure mode 2)."""

from __future__ import annotations

from bots.exit_parts import ExitParts, log
from ib import convert
from ib.intents import modification_refused, rejection_of
from trading.exits import exit_intent, stop_to_trigger, through_market_stop_price

_ACKED = frozenset({"PreSubmitted", "Submitted"})  # working at IB, no change in flight


class Selling:
    """Sells a whole position now, never more than the broker holds."""

    def __init__(self, parts: ExitParts) -> None:
        self.parts = parts

    async def exit_position(self, symbol: str, purpose: str) -> None:
        """Sell the whole position now (bot stop, touched target, EOD), under the lock."""
        state = self.parts.book[symbol]
        state.busy = True
        try:
            async with self.parts.tasks.lock(symbol):
                await self.exit_locked(symbol, purpose)
        finally:
            state.busy = False

    async def exit_locked(self, symbol: str, purpose: str) -> None:
        parts = self.parts
        broker, book, config = parts.broker, parts.book, parts.config
        if book.is_blocked(symbol) or not parts.can_trade():
            log.warning("exit_not_allowed", symbol=symbol, purpose=purpose,
                        blocked=book.is_blocked(symbol), connected=parts.ib.isConnected())  # fmt: skip
            return
        if not await broker.settle_refusals(symbol):
            log.critical("exit_aborted", symbol=symbol,
                         reason="IB did not say whether a refused modification's order works")  # fmt: skip
            return
        if await self._exit_through_stop(symbol, purpose):
            return
        if not await broker.cancel_confirmed(symbol, broker.our_sells(symbol)):
            log.critical(
                "exit_aborted", symbol=symbol, reason="working sells not confirmed cancelled"
            )
            return
        contract = await broker.contract(symbol)
        tick = book[symbol].tick
        for attempt in range(1, config.exit_attempts + 1):
            quantity = await broker.quantity(symbol)
            if quantity is None:
                log.critical("exit_aborted", symbol=symbol, reason="broker position unknown")
                break
            if quantity <= 0:
                log.info(
                    "sell_refused_flat", symbol=symbol, purpose=purpose, broker_quantity=quantity
                )
                return
            quote = book.usable_quote(symbol, parts.clock.epoch())
            intent = exit_intent(symbol, quantity, purpose, quote, attempt, config, tick)
            try:
                trade = parts.orders.place(contract, convert.exit_order(intent), purpose=purpose)
            except (ConnectionError, OSError) as exc:
                log.error("exit_not_sent", symbol=symbol, error=repr(exc))
                return
            log.info("exit_sent", symbol=symbol, purpose=purpose, attempt=attempt,
                     quantity=quantity, limit=intent.limit_price,
                     order_ref=trade.order.orderRef)  # fmt: skip
            timeout = broker.market_timeout(config.exit_fill_timeout_s)
            if not await broker.wait_until(trade.isDone, timeout):
                log.warning("exit_not_filled_in_time", symbol=symbol, attempt=attempt)
                if not await broker.cancel_confirmed(symbol, [trade]):
                    log.critical("exit_aborted", symbol=symbol, reason="exit cancel unconfirmed")
                    return
            rejection = rejection_of(trade)
            if rejection is not None:
                parts.fills.count_reject(rejection)
                if book.is_blocked(symbol):
                    return
            elif trade.orderStatus.status != "Filled":
                log.warning("exit_retry", symbol=symbol, attempt=attempt,
                            filled=trade.orderStatus.filled, status=trade.orderStatus.status)  # fmt: skip
        else:
            quantity = await broker.quantity(symbol)
            if quantity == 0:
                return
        # Not flat after every attempt: the server-side set takes over again.
        log.critical("exit_attempts_exhausted", symbol=symbol, purpose=purpose,
                     action="protective set re-placed; server stop in charge")  # fmt: skip
        book[symbol].cooldown_until = parts.clock.epoch() + 60.0
        parts.tasks.schedule(symbol)

    async def _exit_through_stop(self, symbol: str, purpose: str) -> bool:
        """Exit by moving our working protective STP through the market: one message, no
        cancel round trip, nothing new before the send (`stop_to_trigger` says when that is
        safe). Killed after the send, the order at IB still sells. Returns True when the exit
        is done here (sold, or nothing can be sent); False when the caller must cancel and
        sell anew: no such stop, the position changed, IB refused the modification (settled:
        the stop is known to work at its old price, or to be gone), or it did not fill."""
        parts = self.parts
        broker = parts.broker
        sells = {t.order.orderId: t for t in broker.our_sells(symbol)}
        pos = parts.book[symbol].position
        stop = stop_to_trigger(broker.streamed_quantity(symbol),
                               [convert.working_order(t) for t in sells.values()])  # fmt: skip
        trade = sells.get(stop.order_id) if stop else None
        if pos is None or stop is None or trade is None or trade.orderStatus.status not in _ACKED:
            return False
        quote = parts.book[symbol].quote
        usable = parts.book.usable_quote(symbol, parts.clock.epoch()) is not None
        price = through_market_stop_price(quote, pos, quote_usable=usable,
                                          slippage_pct=parts.config.exit_slippage_pct)  # fmt: skip
        try:
            parts.orders.trigger_stop(trade, price, purpose=purpose)
        except (ConnectionError, OSError) as exc:
            log.error("exit_not_sent", symbol=symbol, error=repr(exc))
            return True  # the stop keeps its price and protects; reconnecting reconciles
        log.info("exit_sent", symbol=symbol, purpose=purpose, quantity=stop.quantity, stop=price,
                 order_ref=trade.order.orderRef, via="protective_stop")  # fmt: skip
        await broker.wait_until(
            lambda: trade.isDone() or modification_refused(trade),
            broker.market_timeout(parts.config.exit_fill_timeout_s),
        )
        if trade.orderStatus.status == "Filled":
            return True
        if modification_refused(trade):
            log.error("exit_modification_refused", symbol=symbol, order_ref=trade.order.orderRef,
                      reason=trade.log[-1].message)  # fmt: skip
            if not await broker.settle_refusals(symbol):
                log.critical("exit_aborted", symbol=symbol,
                             reason="IB did not say whether the refused stop still works")  # fmt: skip
                return True
        elif not trade.isDone():
            log.warning("exit_not_filled_in_time", symbol=symbol, attempt=0,
                        filled=trade.orderStatus.filled)  # fmt: skip
        return False
