"""The order intent protocol (failure modes 1, 11, 13): no order is ever sent twice.

1. `place()` writes an `order_intents` row with a unique orderRef, THEN calls placeOrder.
2. IB's order events move the intent through PENDING_SUBMIT -> SUBMITTED -> FILLED /
   CANCELLED / REJECTED (the table in observability.INTENT_TRANSITIONS).
3. After a timeout, restart or reconnect, `lookup()` finds the order at IB by orderRef
   (open orders of every client, completed orders, executions) instead of sending it again;
   `recover()` does that for every open intent of this program. A query that failed gives
   UNKNOWN, never "not there" (unknown is not empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from ib_async import IB, Contract, Fill, Order, OrderStatus, Trade, TradeLogEntry

from core.logs import get_logger
from ib.convert import ib_number
from observability import (
    CANCELLED,
    FILLED,
    PENDING_SUBMIT,
    REJECTED,
    SUBMITTED,
    IntentTransitionError,
    TradingDatabase,
)

_WORKING_STATUSES = frozenset(
    {OrderStatus.PreSubmitted, OrderStatus.Submitted, OrderStatus.PendingCancel}
)
_CANCELLED_STATUSES = frozenset({OrderStatus.Cancelled, OrderStatus.ApiCancelled})
# IB error codes that mean "this order was refused" (ib_async reports them as Cancelled).
REJECT_CODES = frozenset({103, 135, 200, 201, 203, 321, 383, 387, 434, 10147})
CANCEL_TOO_LATE = 10148  # "order ... cannot be cancelled, state: Filled" (or Cancelled)


def is_rejected(trade: Trade) -> bool:
    """True when IB refused the order (Inactive, or an order error such as 201 in its log).

    ib_async turns a reject into status "Cancelled"; only the log keeps the error code.
    """
    if trade.orderStatus.status == OrderStatus.Inactive:
        return True
    if trade.orderStatus.status not in _CANCELLED_STATUSES:
        return False
    errors = [i for i, entry in enumerate(trade.log) if entry.errorCode]
    if not errors or trade.log[errors[-1]].errorCode not in REJECT_CODES:
        return False
    # Working again after that error (IB had refused a modification, not the order): a later
    # cancel is a cancel.
    return not any(e.status in _WORKING_STATUSES for e in trade.log[errors[-1] + 1 :])


class Rejection(NamedTuple):
    """An order IB refused, as the bots count it; `refusal` names this one refusal (IB may
    refuse the next modification of a working order too: each counts once)."""

    symbol: str
    action: str
    order_ref: str
    refusal: str
    reason: str


def rejection_of(trade: Trade) -> Rejection | None:
    """`trade`'s Rejection when IB refused it (see is_rejected), else None."""
    if not is_rejected(trade):
        return None
    ref = trade.order.orderRef or ""
    last_error = max((i for i, e in enumerate(trade.log) if e.errorCode), default=-1)
    reason = next((e.message for e in reversed(trade.log) if e.errorCode), "")
    return Rejection(trade.contract.symbol, trade.order.action, ref, f"{ref}#{last_error}", reason)


def follow_order_statuses(ib: IB, on_status: Callable[[Rejection | None], None]) -> None:
    """Hand every order status event to `on_status`: a refused order's as its Rejection,
    any other as None (something changed at IB)."""
    ib.orderStatusEvent += lambda trade: on_status(rejection_of(trade))


def cancel_came_too_late(trade: Trade) -> bool:
    """True when ib_async's "Cancelled" only means IB refused our cancel with 10148 (the order
    was already done there, perhaps filled, and we never heard): look the order up by orderRef
    before believing it cancelled."""
    return (
        trade.orderStatus.status in _CANCELLED_STATUSES
        and bool(trade.log)
        and trade.log[-1].errorCode == CANCEL_TOO_LATE
    )


def modification_refused(trade: Trade) -> bool:
    """True when IB answered our latest modification of `trade` with an error and nothing
    since: the order may well be working at IB with its old fields although ib_async shows
    it Cancelled (an order error) or ValidationError (a warning). Only IB's open orders can
    tell (`IntentOrders.settle_refused`); until then the order counts as working."""
    if trade.orderStatus.status not in _CANCELLED_STATUSES | {OrderStatus.ValidationError}:
        return False
    for entry in reversed(trade.log):
        if entry.message == "Modify":
            return True  # only errors came after our modification
        if not entry.errorCode or entry.errorCode == 202:
            return False  # an answer that is not a refusal (an ack, a fill, a cancel)
    return False


def intent_state_for(ib_status: str, filled: float, remaining: float) -> str | None:
    """The intent state an IB order status means; None when it says nothing new.

    A cancelled order that filled in part stays CANCELLED (the fill is in `filled_quantity`);
    "Inactive" is IB's word for rejected or held by risk checks.
    """
    if ib_status == OrderStatus.Filled or (filled > 0 and remaining <= 0):
        return FILLED
    if ib_status in _WORKING_STATUSES:
        return SUBMITTED
    if ib_status in _CANCELLED_STATUSES:
        return CANCELLED
    if ib_status == OrderStatus.Inactive:
        return REJECTED
    return None


class LookupStatus(Enum):
    OPEN = "open"  # working at IB
    DONE = "done"  # filled, cancelled or rejected at IB
    NOT_FOUND = "not_found"  # every query answered and none knows the orderRef
    UNKNOWN = "unknown"  # a query failed: do not act as if the order does not exist


@dataclass
class OrderLookup:
    status: LookupStatus
    trade: Trade | None = None
    fills: list[Fill] = field(default_factory=list)

    @property
    def filled_quantity(self) -> float:
        return sum(f.execution.shares for f in self.fills)

    @property
    def avg_fill_price(self) -> float | None:
        shares = self.filled_quantity
        if shares <= 0:
            return None
        return sum(f.execution.shares * f.execution.price for f in self.fills) / shares


class IntentWriter:
    """One background thread applying intent updates in order, so IB's event handlers never
    wait on a database fsync (the exit path's latency). Only updates go here: the intent
    row itself is always written before its order is sent."""

    def __init__(self, agent: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], object], threading.Event | None]] = (
            queue.SimpleQueue()
        )
        self._log = get_logger(agent)
        # Held for each write: a write from another thread takes it too, so SQLite never
        # sees two writers of ours (its busy back-off sleeps 1-25 ms).
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"{agent}-intents", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], object]) -> None:
        self._queue.put((write, None))

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every update submitted so far is written; False on timeout."""
        done = threading.Event()
        self._queue.put((lambda: None, done))
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            write, done = self._queue.get()
            try:
                with self.lock:
                    write()
            except IntentTransitionError as exc:
                self._log.warning("intent_transition_refused", error=str(exc))
            except Exception as exc:  # a failed update must not stop the later ones
                self._log.exception("intent_update_failed", error=repr(exc))
            if done is not None:
                done.set()


class IntentOrders:
    """Places orders through the intent protocol and keeps intents in step with IB.

    With `write_behind`, state updates from IB's events are written by an IntentWriter
    thread (in order) instead of inside the event handler.
    """

    def __init__(
        self,
        ib: IB,
        db: TradingDatabase,
        agent: str,
        query_timeout: float = 10.0,
        *,
        write_behind: bool = False,
    ):
        self.ib = ib
        self.db = db
        self.agent = agent
        self.query_timeout = query_timeout
        self._log = get_logger(agent)
        self.writer = IntentWriter(agent) if write_behind else None
        ib.orderStatusEvent += self._on_order_status
        ib.openOrderEvent += self._on_order_status

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued intent updates are in the database (no-op without write_behind)."""
        return self.writer.flush(timeout) if self.writer is not None else True

    def exclusive(self) -> contextlib.AbstractContextManager[object]:
        """Hold while writing the database from the event loop (waits out one queued write at
        most, instead of SQLite's busy back-off)."""
        return self.writer.lock if self.writer is not None else contextlib.nullcontext()

    def place(
        self, contract: Contract, order: Order, *, purpose: str, guard_entry: bool = False
    ) -> Trade:
        """Record the intent, then send the order; returns IB's Trade.

        Raises observability.ReentryBlocked (guard_entry) before anything is sent.
        """
        with self.exclusive():  # on disk before the order is sent
            self.record(contract, order, purpose=purpose, guard_entry=guard_entry)
        return self.send(contract, order, purpose=purpose)

    def record(
        self,
        contract: Contract,
        order: Order,
        *,
        purpose: str,
        guard_entry: bool = False,
        parent_ref: str | None = None,
        max_open_positions: int | None = None,
    ) -> str:
        """Write the order's intent and set its orderRef; nothing is sent (see place()).
        Safe from a worker thread (one database connection per thread). Raises
        observability.ReentryBlocked (guard_entry); with `max_open_positions` too, also when
        every position slot is in use."""
        ref = self.db.create_order_intent(
            contract.symbol,
            order.action,
            float(order.totalQuantity),
            order.orderType,
            self.agent,
            limit_price=ib_number(order.lmtPrice),
            stop_price=ib_number(order.auxPrice),
            purpose=purpose,
            parent_ref=parent_ref,
            oca_group=order.ocaGroup or None,
            guard_entry=guard_entry,
            max_open_positions=max_open_positions,
        )
        order.orderRef = ref
        return ref

    def abandon(self, order_ref: str, why: str) -> None:
        """A recorded intent whose order is not sent after all: final, so the decision can be
        made again (nothing left this process)."""
        self._write(
            lambda: self.db.update_order_intent(order_ref, CANCELLED, note=f"not sent: {why}")
        )

    def send(self, contract: Contract, order: Order, *, purpose: str) -> Trade:
        """Send an order whose intent record() wrote (its orderRef is set); returns IB's Trade."""
        ref = order.orderRef
        try:
            trade = self.ib.placeOrder(contract, order)
        except (ConnectionError, OSError) as exc:
            self.abandon(ref, str(exc))
            raise
        order_id = trade.order.orderId
        self._write(lambda: self.db.update_order_intent(ref, PENDING_SUBMIT, ib_order_id=order_id))
        self._log.info(
            "order_sent",
            symbol=contract.symbol,
            order_ref=ref,
            order_id=trade.order.orderId,
            action=order.action,
            quantity=float(order.totalQuantity),
            order_type=order.orderType,
            limit=ib_number(order.lmtPrice),
            stop=ib_number(order.auxPrice),
            purpose=purpose,
        )
        return trade

    def modify_stop(self, trade: Trade, stop_price: float, *, reason: str) -> None:
        """Move our working stop order `trade` to `stop_price` in place: the same order id and
        orderRef, so IB modifies it (never a second order, never a moment without the stop).
        As in place(), the intent's new stop price and a line in its log are on disk before
        the modification is sent. Raises KeyError when the order has no intent of ours, and
        ConnectionError / OSError when it could not be sent (then it keeps its old price)."""
        order = trade.order
        ref, old = order.orderRef, order.auxPrice
        self._record_stop(ref, stop_price, f"stop {old:g} -> {stop_price:g}: {reason}")
        order.auxPrice = stop_price
        try:
            self.ib.placeOrder(trade.contract, order)  # a known orderId: IB modifies it
        except (ConnectionError, OSError) as exc:
            order.auxPrice = old
            self._record_stop(ref, old, f"stop modification not sent: {exc}")
            raise
        self._log.info("order_modified", symbol=trade.contract.symbol, order_ref=ref,
                       order_id=order.orderId, stop=stop_price, was=old, reason=reason)  # fmt: skip

    def trigger_stop(self, trade: Trade, stop_price: float, *, purpose: str) -> None:
        """Exit through our working protective stop `trade`: move its stop price through the
        market (`stop_price`, from trading.exits.through_market_stop_price) in place, so IB sells
        it at once for the quantity it already covers. One message: no cancel round trip, no
        new order, and its OCA group still keeps the target from selling too.

        The order keeps its orderRef and intent row, both on disk since the set was placed;
        so unlike modify_stop, the new stop price, the exit's `purpose` (its fill is booked
        for the exit's reason) and a line in the intent log are written behind the send: a
        stalled database never delays an exit. A restart finds the order at IB by orderRef.
        Raises KeyError when the order is not ours, ConnectionError / OSError when it could
        not be sent (then it keeps its old price)."""
        order = trade.order
        ref, old = order.orderRef, order.auxPrice
        if not ref or not ref.startswith(f"{self.agent}-"):
            raise KeyError(f"no order intent of {self.agent} with orderRef {ref!r}")
        order.auxPrice = stop_price
        try:
            self.ib.placeOrder(trade.contract, order)  # a known orderId: IB modifies it
        except (ConnectionError, OSError):
            order.auxPrice = old
            raise
        note = f"stop {old:g} -> {stop_price:g} through the market: exit {purpose}"
        # Queued like IB's updates (the writer thread holds the lock): in order with them.
        self._write(lambda: self._write_stop(ref, stop_price, note, purpose=purpose))
        self._log.info("order_modified", symbol=trade.contract.symbol, order_ref=ref,
                       order_id=order.orderId, stop=stop_price, was=old, reason=purpose)  # fmt: skip

    def refused_modifications(self, symbol: str) -> list[Trade]:
        """Our orders of `symbol` whose latest modification IB refused, not yet settled."""
        return [
            t
            for t in self.ib.trades()
            if t.contract.symbol == symbol
            and (t.order.orderRef or "").startswith(f"{self.agent}-")
            and modification_refused(t)
        ]

    async def settle_refused(self, trade: Trade) -> OrderLookup:
        """After IB refused a modification of `trade`: ask IB where the order really is.

        OPEN: it works with its old fields (IB's answer restored ib_async's trade: status,
        prices); DONE: it filled or ended meanwhile (its intent follows); UNKNOWN: IB did not
        answer, so it must still be taken as working (never place a second set beside it).
        """
        found = await self.lookup(trade.order.orderRef)
        if found.status is LookupStatus.UNKNOWN:
            return found
        if found.status is LookupStatus.DONE:
            # Nothing more will come for it: mark the refusal answered, so it is settled.
            note = "done at IB after a refused modification"
            trade.log.append(TradeLogEntry(trade.log[-1].time, trade.orderStatus.status, note))
            with self.exclusive():
                self._apply_lookup(trade.order.orderRef, found)
        self._log.info("modification_refusal_settled", order_ref=trade.order.orderRef,
                       status=found.status.value, at_ib=trade.orderStatus.status)  # fmt: skip
        return found

    def _record_stop(self, ref: str, stop_price: float, note: str) -> None:
        with self.exclusive():  # one writer: the queued state updates cannot interleave
            self._write_stop(ref, stop_price, note)

    def _write_stop(
        self, ref: str, stop_price: float, note: str, *, purpose: str | None = None
    ) -> None:
        intent = self.db.get_order_intent(ref)
        if intent is None or intent["agent"] != self.agent:
            raise KeyError(f"no order intent of {self.agent} with orderRef {ref!r}")
        self.db.update_order_intent(
            ref, intent["state"], stop_price=stop_price, note=note, purpose=purpose
        )

    def _write(self, write: Callable[[], object]) -> None:
        if self.writer is not None:
            self.writer.submit(write)
        else:
            write()

    def _on_order_status(self, trade: Trade) -> None:
        if self.writer is None:
            self.sync_intent(trade)
            return
        ref = trade.order.orderRef
        if ref and ref.startswith(f"{self.agent}-"):  # our refs; others never reach the DB
            update = _status_copy(trade)
            self.writer.submit(lambda: self.sync_intent(update))

    def sync_intent(self, trade: Trade) -> None:
        """Move our intent (found by orderRef) to the state IB reports for `trade`.

        Repeats (IB sends orderStatus and openOrder for one change) write nothing.
        """
        ref = trade.order.orderRef
        if not ref or modification_refused(trade):
            return  # not a state IB reported for the order: it may still be working
        status = trade.orderStatus
        state = intent_state_for(status.status, status.filled, status.remaining)
        if state == CANCELLED and status.filled <= 0 and is_rejected(trade):
            state = REJECTED
        if state is None:
            return
        intent = self.db.get_order_intent(ref)
        if intent is None or intent["agent"] != self.agent:
            return
        perm_id = trade.order.permId or status.permId or None
        if (
            state == intent["state"]
            and float(status.filled) == float(intent["filled_quantity"])
            and (perm_id is None or perm_id == intent["perm_id"])
        ):
            return
        note = None
        if state == REJECTED:
            note = next(
                (e.message for e in reversed(trade.log) if e.errorCode in REJECT_CODES), None
            ) or (trade.log[-1].message if trade.log else None)
        elif state == CANCELLED and trade.log:
            note = trade.log[-1].message or None
        try:
            self.db.update_order_intent(
                ref,
                state,
                ib_order_id=trade.order.orderId or None,
                perm_id=perm_id,
                filled_quantity=status.filled,
                avg_fill_price=status.avgFillPrice or None,
                note=note,
            )
        except IntentTransitionError as exc:
            self._log.warning("intent_transition_refused", order_ref=ref, error=str(exc))

    async def snapshot(self) -> tuple[list[Trade], list[Trade], list[Fill]] | None:
        """IB's open orders (every client), completed orders and executions; None on failure."""
        try:
            open_trades, completed, fills = await asyncio.wait_for(
                asyncio.gather(
                    self.ib.reqAllOpenOrdersAsync(),
                    self.ib.reqCompletedOrdersAsync(apiOnly=True),
                    self.ib.reqExecutionsAsync(),
                ),
                self.query_timeout,
            )
        except (TimeoutError, ConnectionError, OSError) as exc:
            self._log.warning("order_snapshot_failed", error=repr(exc))
            return None
        return list(open_trades), list(completed), list(fills)

    async def lookup(self, order_ref: str) -> OrderLookup:
        """Find an order at IB by orderRef across open orders, completed orders, executions."""
        found = await self.snapshot()
        if found is None:
            return OrderLookup(LookupStatus.UNKNOWN)
        return match_order_ref(order_ref, *found)

    async def recover(
        self, snapshot: tuple[list[Trade], list[Trade], list[Fill]] | None = None
    ) -> dict[str, LookupStatus]:
        """Bring every open intent of this program in line with IB, sending nothing.

        Intents IB never saw (NOT_FOUND) are marked CANCELLED with a note so they may be
        decided again; UNKNOWN ones are left alone. Returns orderRef -> lookup status.
        One snapshot of IB serves every intent (three requests, not three per intent):
        `snapshot` when the caller has just taken one (it must postdate every intent read
        here, so take it before calling), else a fresh one.
        """
        results: dict[str, LookupStatus] = {}
        intents = self.db.get_open_intents(agent=self.agent)
        if intents and snapshot is None:
            snapshot = await self.snapshot()
        for intent in intents:
            ref = intent["order_ref"]
            found = (
                OrderLookup(LookupStatus.UNKNOWN)
                if snapshot is None
                else match_order_ref(ref, *snapshot)
            )
            results[ref] = found.status
            if found.status is LookupStatus.UNKNOWN:
                continue
            if found.status is LookupStatus.NOT_FOUND:
                self.db.update_order_intent(ref, CANCELLED, note="not at IB after restart")
            else:
                self._apply_lookup(ref, found)
            self._log.info("intent_recovered", order_ref=ref, status=found.status.value)
        return results

    def _apply_lookup(self, ref: str, found: OrderLookup) -> None:
        """Move intent `ref` to what IB's answer `found` (OPEN or DONE) says."""
        if found.trade is not None:
            self.sync_intent(found.trade)
        elif found.fills:  # only executions survive (e.g. yesterday's completed list)
            self.db.update_order_intent(
                ref,
                FILLED,
                filled_quantity=found.filled_quantity,
                avg_fill_price=found.avg_fill_price,
            )


def _status_copy(trade: Trade) -> Trade:
    """A frozen view of `trade` for a later write (the live Trade keeps changing)."""
    return Trade(
        contract=trade.contract,
        order=copy.copy(trade.order),
        orderStatus=copy.copy(trade.orderStatus),
        fills=list(trade.fills),
        log=list(trade.log),
    )


def match_order_ref(
    order_ref: str,
    open_trades: Iterable[Trade],
    completed: Iterable[Trade],
    fills: Iterable[Fill],
) -> OrderLookup:
    """Pure: where `order_ref` appears in IB's answers."""
    own_fills = [f for f in fills if f.execution.orderRef == order_ref]
    for trade in open_trades:
        if trade.order.orderRef == order_ref and not trade.isDone():
            return OrderLookup(LookupStatus.OPEN, trade, own_fills)
    for trade in completed:
        if trade.order.orderRef == order_ref:
            return OrderLookup(LookupStatus.DONE, trade, own_fills)
    for trade in open_trades:  # a done trade that came back in the open list
        if trade.order.orderRef == order_ref:
            return OrderLookup(LookupStatus.DONE, trade, own_fills)
    if own_fills:
        return OrderLookup(LookupStatus.DONE, None, own_fills)
    return OrderLookup(LookupStatus.NOT_FOUND)
