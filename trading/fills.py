"""The pure fill and commission rules, shared by the simulated gateway (ibsim.engine) and the
backtest (sim.backtest): when an order triggers, the price it fills at against a quote, the
shares the book offers it, and IB's fixed commission.

Fed plain records: any order with the fields of `FillableOrder` (ibsim.orders.SimOrder has
them) and any quote with those of `BookQuote` (ibsim.market.Quote has them).
"""

from __future__ import annotations

from typing import Protocol

MARKET_LIKE_TYPES = frozenset({"MKT", "STP", "TRAIL"})  # fill as a market order (once triggered)
STOP_TYPES = frozenset({"STP", "STP LMT", "TRAIL"})


class BookQuote(Protocol):
    """The quote fields fill rules read (ibsim.market.Quote satisfies it)."""

    bid: float
    ask: float
    last: float
    bid_size: float
    ask_size: float


class FillableOrder(Protocol):
    """The order fields fill rules read (ibsim.orders.SimOrder satisfies it)."""

    order_type: str
    lmt_price: float | None
    aux_price: float | None
    trail_stop_price: float | None
    triggered: bool
    # Working at the exchange since an earlier look without filling: a resting limit fills at
    # its own price.
    resting: bool

    @property
    def is_buy(self) -> bool: ...


def stop_price(order: FillableOrder) -> float | None:
    if order.order_type == "TRAIL":
        return order.trail_stop_price
    return order.aux_price


def is_triggered(order: FillableOrder, last: float) -> bool:
    """Stops trigger on the last trade price reaching the stop."""
    stop = stop_price(order)
    if stop is None or last <= 0:
        return False
    return last >= stop if order.is_buy else last <= stop


def fill_price(
    order: FillableOrder, quote: BookQuote, tick: float, slippage_ticks: int
) -> float | None:
    """The price this order fills at against `quote` now, or None when it cannot fill.

    Market (and triggered stop) orders take the far side plus slippage. A limit that is
    marketable when it arrives (first working look, or after a modify) takes the touch, which
    is never worse than the limit. A resting limit fills at its limit price when the book
    reaches it or the last trade goes through it: the price jumping past a resting limit
    between two seconds gives the limit, never the better price beyond it.
    """
    market_like = order.order_type in MARKET_LIKE_TYPES
    if order.order_type in STOP_TYPES and not order.triggered:
        return None
    if order.is_buy:
        if quote.ask <= 0:
            return None
        if market_like:
            return round(quote.ask + slippage_ticks * tick, 6)
        limit = order.lmt_price
        if limit is None:
            return None
        if quote.ask <= limit or 0 < quote.last < limit:
            return limit if order.resting else min(quote.ask, limit)
        return None
    if quote.bid <= 0:
        return None
    if market_like:
        return round(max(tick, quote.bid - slippage_ticks * tick), 6)
    limit = order.lmt_price
    if limit is None:
        return None
    if quote.bid >= limit or quote.last > limit:
        return limit if order.resting else max(quote.bid, limit)
    return None


def available_size(order: FillableOrder, quote: BookQuote) -> float:
    """Shares the displayed book offers this order now (for partial fills)."""
    size = quote.ask_size if order.is_buy else quote.bid_size
    return max(1.0, float(size or 0))


def commission_for(shares: float, value: float, per_share: float, minimum: float) -> float:
    """IB fixed pricing: per share, a per-order minimum, capped at 1% of the trade value."""
    return round(min(max(shares * per_share, minimum), max(value * 0.01, minimum)), 4)
