"""Order and execution records and the order state transition table; the fill-price rules
are trading.fills' (re-exported here for the engine).

Pure data and pure functions: the engine (`ibsim.engine`) owns the books and the events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from core.money import average_price, round_to_tick

# The fill and commission rules live in trading.fills (the backtest fills by them too);
# the engine and the tests take them from here as before.
from trading.fills import (  # noqa: F401
    STOP_TYPES,
    BookQuote,
    available_size,
    commission_for,
    fill_price,
    is_triggered,
    stop_price,
)

ORDER_TYPES = frozenset({"MKT", "LMT", "STP", "STP LMT", "TRAIL"})
TIFS = frozenset({"DAY", "IOC", "GTC"})


class OrderState(enum.Enum):
    """Server-side life of an order; `.ib_status` is what orderStatus reports."""

    HELD = "PendingSubmit"  # transmit=False: kept until its bracket is transmitted
    PRE_SUBMITTED = "PreSubmitted"  # accepted, not yet working (untriggered stop, child)
    SUBMITTED = "Submitted"  # working at the exchange
    PENDING_CANCEL = "PendingCancel"  # cancel requested, not yet confirmed: can still fill
    FILLED = "Filled"
    CANCELLED = "Cancelled"
    REJECTED = "Inactive"

    @property
    def ib_status(self) -> str:
        return "Cancelled" if self is OrderState.REJECTED else self.value

    @property
    def is_done(self) -> bool:
        return self in DONE_STATES


DONE_STATES = frozenset({OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED})

# Every legal move; anything else is a bug in the engine (asserted in `SimOrder.move_to`).
# A working order may stay in its state (modify). Cancels are applied at once, except under
# the hold_cancels fault: then the order waits in PENDING_CANCEL and can still fill (IB's
# real-world oddity: a cancel is a request, not a guarantee).
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    OrderState.HELD: frozenset(
        {OrderState.HELD, OrderState.PRE_SUBMITTED, OrderState.SUBMITTED, OrderState.CANCELLED}
        | {OrderState.REJECTED}
    ),
    OrderState.PRE_SUBMITTED: frozenset(
        {OrderState.PRE_SUBMITTED, OrderState.SUBMITTED, OrderState.FILLED}
        | {OrderState.PENDING_CANCEL, OrderState.CANCELLED, OrderState.REJECTED}
    ),
    OrderState.SUBMITTED: frozenset(
        {OrderState.SUBMITTED, OrderState.PRE_SUBMITTED, OrderState.FILLED}
        | {OrderState.PENDING_CANCEL, OrderState.CANCELLED, OrderState.REJECTED}
    ),
    OrderState.PENDING_CANCEL: frozenset(
        {OrderState.PENDING_CANCEL, OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED}
    ),
    OrderState.FILLED: frozenset(),
    OrderState.CANCELLED: frozenset(),
    OrderState.REJECTED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class OrderLogEntry:
    """One state change of an order (append-only), stamped with simulated time."""

    time: float
    state: OrderState
    note: str = ""


@dataclass(eq=False)  # identity semantics: orders live in sets and books
class SimOrder:
    order_id: int
    client_id: int
    perm_id: int
    account: str
    symbol: str
    con_id: int
    exchange: str
    action: str  # BUY / SELL
    total_qty: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    oca_group: str
    oca_type: int
    order_ref: str
    transmit: bool
    parent_id: int
    outside_rth: bool
    trail_stop_price: float | None = None
    trailing_percent: float | None = None
    state: OrderState = OrderState.HELD
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    triggered: bool = False
    # Working at the exchange since an earlier look without filling: a resting limit then
    # fills at its own price. False again when modified (a replace arrives anew).
    resting: bool = False
    commission_paid: float = 0.0
    completed_time: float | None = None
    log: list[OrderLogEntry] = field(default_factory=list)

    @property
    def remaining(self) -> float:
        return max(0.0, self.total_qty - self.filled)

    @property
    def is_buy(self) -> bool:
        return self.action == "BUY"

    def move_to(self, state: OrderState, now: float, note: str = "") -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"order {self.order_id}: {self.state.name} -> {state.name}")
        self.state = state
        self.log.append(OrderLogEntry(now, state, note))
        if state.is_done:
            self.completed_time = now

    def apply_fill(self, qty: float, price: float) -> None:
        # Decimal averaging: one fill at 229.82 reports avgFillPrice 229.82, not ...996.
        average = average_price([(self.filled, self.avg_fill_price), (qty, price)])
        assert average is not None  # qty > 0
        self.avg_fill_price = average
        self.filled += qty
        self.last_fill_price = price


@dataclass(frozen=True)
class Execution:
    exec_id: str
    time: float
    order_id: int
    client_id: int
    perm_id: int
    account: str
    symbol: str
    con_id: int
    side: str  # BOT / SLD
    shares: float
    price: float
    cum_qty: float
    avg_price: float
    order_ref: str
    commission: float
    realized_pnl: float | None  # None on an opening fill (IB sends the unset double)
    exchange: str = "ISLAND"


def update_trail(order: SimOrder, last: float, tick: float = 0.01) -> None:
    """Move a TRAIL order's stop with the last price (never against the position), on the
    tick grid: a percent trail (or a float offset) would otherwise report 229.81999999999996."""
    if order.order_type != "TRAIL" or last <= 0:
        return
    if order.trailing_percent:
        offset = last * order.trailing_percent / 100.0
    else:
        offset = order.aux_price or 0.0
    if order.is_buy:
        candidate = round_to_tick(last + offset, tick)
        if order.trail_stop_price is None or candidate < order.trail_stop_price:
            order.trail_stop_price = candidate
    else:
        candidate = round_to_tick(last - offset, tick)
        if order.trail_stop_price is None or candidate > order.trail_stop_price:
            order.trail_stop_price = candidate
