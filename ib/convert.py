"""Conversions between ib_async objects and the trading core's records, both ways.

IB marks a number it did not set with UNSET_DOUBLE (sys.float_info.max) or UNSET_INTEGER
(2**31 - 1); `ib_number` / `ib_integer` turn those (and NaN) into None, here and nowhere
else.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ib_async import (
    CommissionReport,
    Fill,
    LimitOrder,
    MarketOrder,
    Order,
    Position,
    StopOrder,
    Ticker,
    Trade,
)
from ib_async.util import UNSET_DOUBLE, UNSET_INTEGER

from trading.model import (
    BrokerPosition,
    EnterIntent,
    ExitIntent,
    FillRecord,
    ProtectIntent,
    Quote,
    WorkingOrder,
)

__all__ = [
    "UNSET_DOUBLE",
    "UNSET_INTEGER",
    "broker_position",
    "entry_order",
    "exit_order",
    "fill_record",
    "fill_side",
    "ib_integer",
    "ib_number",
    "ib_price",
    "protective_orders",
    "quote",
    "working_order",
]


# -- unset numbers ---------------------------------------------------------------------------
def ib_number(value: float | None) -> float | None:
    """`value` as a float, or None when IB left it unset (UNSET_DOUBLE, NaN, None)."""
    if value is None or math.isnan(value) or value >= UNSET_DOUBLE / 2:
        return None
    return float(value)


def ib_price(value: float | None) -> float:
    """A price field of IB's as a float, nan when IB left it unset or sent -1 (its "no
    price": a ticker without a bid, a portfolio line without a mark)."""
    number = ib_number(value)
    return math.nan if number is None or number < 0 else number


def ib_integer(value: int | None) -> int | None:
    """`value`, or None when IB left it unset (UNSET_INTEGER, None)."""
    return None if value is None or value == UNSET_INTEGER else int(value)


# -- IB -> records -----------------------------------------------------------------------------
def working_order(trade: Trade) -> WorkingOrder:
    """IB's Trade as the WorkingOrder the rules read (its remaining quantity)."""
    order, status = trade.order, trade.orderStatus
    remaining = status.remaining if status.remaining > 0 else order.totalQuantity - status.filled
    return WorkingOrder(
        symbol=trade.contract.symbol,
        order_id=order.orderId,
        client_id=order.clientId,
        perm_id=order.permId or status.permId,
        action=order.action,
        order_type=order.orderType,
        quantity=float(remaining),
        limit_price=ib_number(order.lmtPrice),
        stop_price=ib_number(order.auxPrice),
        oca_group=order.ocaGroup or "",
        order_ref=order.orderRef or "",
    )


def quote(ticker: Ticker, received_at: float) -> Quote:
    """The ticker's prices stamped with the exchange time of the last trade (tick 45) when
    IB sent one, else with the (market) time we received it, whichever is earlier."""
    stamp = ticker.lastTimestamp.timestamp() if ticker.lastTimestamp else received_at
    return Quote(
        symbol=ticker.contract.symbol if ticker.contract else "",
        last=ticker.last,
        bid=ticker.bid,
        ask=ticker.ask,
        time=min(stamp, received_at),
        data_type=ticker.marketDataType,
    )


def broker_position(position: Position) -> BrokerPosition:
    return BrokerPosition(position.contract.symbol, position.position, position.avgCost)


def fill_side(side: str) -> str:
    """IB's execution side (BOT / SLD, or BUY / SELL) as BUY or SELL."""
    return {"BOT": "BUY", "SLD": "SELL"}.get(side, side)


def fill_record(
    fill: Fill, report: CommissionReport | None = None, *, received_at: datetime | None = None
) -> FillRecord:
    """One execution as a FillRecord; the commission from `report` (else the fill's own)
    when it is the report of this execution, else None (it has not arrived yet). Its time is
    the execution's when IB sent one with a timezone, else `received_at` (else the fill's)."""
    ex = fill.execution
    report = report or fill.commissionReport
    commission = None
    if report is not None and report.execId == ex.execId:
        commission = ib_number(report.commission)
    if isinstance(ex.time, datetime) and ex.time.tzinfo:
        when = ex.time
    else:
        when = received_at or fill.time
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return FillRecord(
        symbol=fill.contract.symbol,
        side=fill_side(ex.side),
        shares=float(ex.shares),
        price=float(ex.price),
        time=when,
        exec_id=ex.execId,
        order_ref=ex.orderRef or "",
        commission=commission,
    )


# -- intents -> IB orders ----------------------------------------------------------------------
def protective_orders(intent: ProtectIntent) -> tuple[Order, Order]:
    """The take-profit LMT and the server STP of `intent`, in one OCA group (ocaType 1).

    ocaType 1 cancels the rest of the group when one order fills (in part, too), and IB
    blocks the group against overfill, so the pair can never sell more than its quantity.
    """
    target = LimitOrder("SELL", intent.quantity, intent.target_price)
    backstop = StopOrder("SELL", intent.quantity, intent.stop_price)
    for order in (target, backstop):
        order.ocaGroup = intent.oca_group
        order.ocaType = 1
        order.tif = intent.tif
        order.outsideRth = False
    return target, backstop


def entry_order(intent: EnterIntent, account: str) -> Order:
    """The entry BUY of `intent` for `account`: a marketable limit, regular hours only."""
    order = LimitOrder("BUY", intent.quantity, intent.limit_price, tif=intent.tif, account=account)
    order.outsideRth = False
    return order


def exit_order(intent: ExitIntent) -> Order:
    """A marketable sell limit, immediate-or-cancel (never rests, never sells twice); without
    a limit price (no usable quote, EOD on stale data) a DAY market sell."""
    if intent.limit_price is None:
        order: Order = MarketOrder("SELL", intent.quantity)
        order.tif = "DAY"
        return order
    order = LimitOrder("SELL", intent.quantity, intent.limit_price)
    order.tif = "IOC"
    order.outsideRth = False
    return order
