"""The exit manager's fills and order events: our sell fills recorded (idempotent by execId)
with their commissions, a flat position closed from them, rejected sells counted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bots.exit_parts import AGENT, ExitParts, blocked_flag, log
from core.money import average_price
from ib.intents import Rejection
from observability import DatabaseError
from trading.model import FillRecord, exit_reason_for


def parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


class ExitFills:
    """Our sell fills and commissions into the database; rejects counted once each."""

    def __init__(self, parts: ExitParts) -> None:
        self.parts = parts
        self._counted_rejects: set[str] = set()

    # -- fills ---------------------------------------------------------------------------
    def on_exec(self, done: FillRecord) -> None:
        self.parts.broker.pulse()
        if self.record(done):
            self.parts.tasks.schedule(done.symbol)

    def record(self, done: FillRecord) -> bool:
        """Record one of our sell fills (idempotent by execId) with its commission when IB
        already reported it; True when it is ours."""
        if not self.is_our_sell(done):
            return False
        parts = self.parts
        with parts.orders.exclusive():  # one writer of ours at a time
            new = parts.db.record_fill(done, AGENT)
        if new:
            intent = parts.db.get_order_intent(done.order_ref)
            log.info("exit_fill", symbol=done.symbol, shares=done.shares, price=done.price,
                     purpose=intent["purpose"] if intent else None, order_ref=done.order_ref,
                     exec_id=done.exec_id, commission=done.commission)  # fmt: skip
        return True

    def is_our_sell(self, done: FillRecord) -> bool:
        ref = done.order_ref
        intent = self.parts.db.get_order_intent(ref) if ref else None
        return intent is not None and intent["agent"] == AGENT and done.side == "SELL"

    def on_commission(self, done: FillRecord) -> None:
        """IB's commission report for one of our executions: attach it to the fill's row.

        The row is normally written by execDetails just before; if it is not there yet, the
        store keeps the report for the fill's row, and the fill is recorded now."""
        if not self.is_our_sell(done) or done.commission is None:
            return
        parts = self.parts
        try:
            with parts.orders.exclusive():
                attached = parts.db.record_commission(done.exec_id, done.commission)
            if not attached:
                self.record(done)
        except DatabaseError as exc:
            log.error("commission_not_recorded", exec_id=done.exec_id, error=str(exc))

    # -- closing -------------------------------------------------------------------------
    def close_from_fills(self, symbol: str, row: dict[str, Any]) -> bool:
        """Close a flat position from our recorded fills (price, reason); False if none."""
        db = self.parts.db
        entered = parse_time(row["entry_time"])
        fills = [
            t
            for t in db.get_trades_by_date(self.parts.clock.today_str())
            if t["symbol"] == symbol
            and t["side"] == "SELL"
            and t["agent"] == AGENT
            and (entered is None or (parse_time(t["trade_time"]) or entered) >= entered)
        ]
        if not fills:
            return False
        price = average_price((t["quantity"], t["price"]) for t in fills)
        assert price is not None
        intent = db.get_order_intent(fills[-1]["order_ref"] or "")
        reason = exit_reason_for(intent["purpose"] if intent else None)
        sold = round(sum(t["quantity"] for t in fills))
        if sold > row["quantity"]:  # partial exits resized the row: P&L over all shares
            db.update_active_position(symbol, quantity=sold)
        self.close_row(symbol, price, reason)
        return True

    def close_row(self, symbol: str, price: float, reason: str) -> None:
        closed = self.parts.db.remove_active_position(symbol, price, reason)
        if closed:
            log.info("position_closed", symbol=symbol, reason=reason, exit_price=round(price, 4),
                     pnl_pct=round(closed["pnl_pct"], 3), pnl=round(closed["pnl"], 2))  # fmt: skip
            self.parts.quotes.forget(symbol)
            self.parts.book.closed(symbol)

    # -- rejects -------------------------------------------------------------------------
    def on_order_status(self, rejection: Rejection | None) -> None:
        self.parts.broker.pulse()
        if rejection is None or rejection.action != "SELL":
            return
        symbol = rejection.symbol
        if self.count_reject(rejection) or self.parts.book[symbol].give_up_pending:
            self.parts.tasks.schedule(symbol)  # a rejected leg: retry (bounded); or give-up set

    def count_reject(self, rejection: Rejection) -> bool:
        """Count a rejected sell once; returns True when the symbol may still be tried."""
        parts, book = self.parts, self.parts.book
        ref, symbol, reason = rejection.order_ref, rejection.symbol, rejection.reason
        intent = parts.db.get_order_intent(ref) if ref else None
        # One count per refusal: a refused modification leaves the order working, and IB
        # may refuse its next modification too.
        refusal = rejection.refusal
        if intent is None or intent["agent"] != AGENT or refusal in self._counted_rejects:
            return not book.is_blocked(symbol)
        self._counted_rejects.add(refusal)
        reached = book.record_reject(symbol)
        log.error("sell_rejected", symbol=symbol, order_ref=ref, rejects=book[symbol].rejects,
                  reason=reason)  # fmt: skip
        if ref in book[symbol].give_up_refs:
            parts.protection.alert_unprotected(
                symbol, f"the protective set after the give-up was rejected: {reason}"
            )
        if reached:
            book[symbol].give_up_pending = True  # the exit attempt cancelled the protective set
            parts.db.set_flag(blocked_flag(symbol), f"{parts.clock.today_str()} {reason}"[:500])
            log.critical("symbol_blocked", symbol=symbol, rejects=parts.config.max_rejects,
                         action="no more sells for it today; fix by hand and clear the flag")  # fmt: skip
            parts.beat()
        return not book.is_blocked(symbol)

    def is_blocked(self, symbol: str) -> bool:
        """Given up today, by this process or (its flag in the database) an earlier one."""
        if self.parts.book.is_blocked(symbol):
            return True
        flag = self.parts.db.get_flag(blocked_flag(symbol))
        return bool(flag and flag.startswith(self.parts.clock.today_str()))
