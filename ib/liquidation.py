"""The IB side of an emergency flatten (liquidate_all.py): cancel every client's orders,
read IB's positions, sell each through the intent protocol, record the fills, until flat.

IB is the truth, not the database rows: it never sells more than the position IB reports,
never sells from zero, and never plans a round while one of its own orders may still fill,
so it cannot open a short (failure mode 2).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from ib_async import (
    IB,
    CommissionReport,
    Fill,
    LimitOrder,
    MarketOrder,
    Order,
    Position,
    Stock,
    Trade,
)

from core.cli import ProgramError
from core.clock import MarketClock
from core.logs import get_logger
from core.money import round_to_tick
from ib.fills import fill_of
from ib.intents import IntentOrders, LookupStatus, match_order_ref
from observability import OPEN_INTENT_STATES, TradingDatabase

AGENT = "liquidate_all"  # the agent of its orders and fills: the tool's name
log = get_logger(AGENT)
# Outside regular hours a market order would wait for the open: use a limit this far through
# the last price, good outside RTH, instead.
EXTENDED_HOURS_THROUGH_PCT = 2.0
# An entry intent written just before the halt is sent within milliseconds; one IB has still
# not seen after this long never left its program (it died first).
IN_FLIGHT_GRACE_S = 5.0
CANCEL_CONFIRM_S = 10.0


@dataclass(frozen=True)
class FlattenStep:
    """One order that brings one broker position to zero."""

    symbol: str
    con_id: int
    currency: str
    position: float  # signed, as IB reports it
    action: str  # SELL a long; BUY back a short (a short here is already an error)
    quantity: float  # exactly |position|: never more

    def describe(self) -> str:
        return f"{self.action} {self.quantity:g} {self.symbol} (IB position {self.position:g})"


@dataclass
class FlattenResult:
    step: FlattenStep
    trade: Trade | None
    filled: float = 0.0
    avg_price: float | None = None
    error: str | None = None


def plan_flatten(positions: Iterable[Position], account: str) -> list[FlattenStep]:
    """Pure: one step per non-zero position of `account`, quantity exactly the position."""
    steps = []
    for pos in positions:
        if pos.account != account or pos.position == 0:
            continue
        steps.append(
            FlattenStep(
                symbol=pos.contract.symbol,
                con_id=pos.contract.conId,
                currency=pos.contract.currency or "USD",
                position=float(pos.position),
                action="SELL" if pos.position > 0 else "BUY",
                quantity=abs(float(pos.position)),
            )
        )
    return sorted(steps, key=lambda s: s.symbol)


def broker_positions(ib: IB, account: str) -> dict[str, float]:
    """Fresh positions from IB (reqPositions), symbol -> signed quantity, zeros left out."""
    return {
        p.contract.symbol: float(p.position)
        for p in ib.reqPositions()
        if p.account == account and p.position != 0
    }


def _order_key(trade: Trade) -> tuple[int, int, int]:
    return (trade.order.permId, trade.order.clientId, trade.order.orderId)


def cancel_everything(ib: IB, wait_s: float) -> int:
    """reqGlobalCancel, then wait until no order that was working before it still works.

    Returns how many of those still work. An order placed after the cancel (the exit manager
    protecting a position again) does not hold it up: the next round cancels that one.
    """
    before = {_order_key(t) for t in ib.reqAllOpenOrders() if not t.isDone()}
    ib.reqGlobalCancel()
    deadline = time.monotonic() + wait_s
    while True:
        ib.sleep(0.2)
        working = {_order_key(t) for t in ib.reqAllOpenOrders() if not t.isDone()} & before
        if not working or time.monotonic() > deadline:
            return len(working)


def _last_price(ib: IB, contract: Stock, wait_s: float = 3.0) -> float | None:
    ticker = ib.reqMktData(contract, "", False, False)
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            ib.sleep(0.1)
            for price in (ticker.last, ticker.bid, ticker.close):
                if price is not None and price == price and price > 0:
                    return float(price)
        return None
    finally:
        ib.cancelMktData(contract)


def flatten_order(step: FlattenStep, regular_hours: bool, last: float | None) -> Order:
    """A marketable DAY order for `step`: market in regular hours, else a limit through the last."""
    if regular_hours:
        return MarketOrder(step.action, step.quantity, tif="DAY")
    if last is None:
        raise ProgramError(
            f"{step.symbol}: market closed and no last price to price an extended-hours limit; "
            "retry during market hours"
        )
    through = EXTENDED_HOURS_THROUGH_PCT / 100
    sign = -1 if step.action == "SELL" else 1
    price = round_to_tick(last * (1 + sign * through), 0.01, "down" if sign < 0 else "up")
    return LimitOrder(step.action, step.quantity, price, tif="DAY", outsideRth=True)


def execute(
    ib: IB,
    db: TradingDatabase,
    steps: list[FlattenStep],
    reason: str,
    clock: MarketClock,
    fill_wait_s: float,
    *,
    orders: IntentOrders | None = None,
) -> list[FlattenResult]:
    """Send one order per step through the intent protocol and wait for the fills.

    An order not filled within `fill_wait_s` is cancelled; when this returns, every order it
    sent is done unless its result's error says the cancel was not confirmed.
    """
    orders = orders or IntentOrders(ib, db, AGENT)
    regular_hours = clock.is_market_open()
    results = []
    for step in steps:
        contract = Stock(step.symbol, "SMART", step.currency, conId=step.con_id)
        try:
            last = None if regular_hours else _last_price(ib, contract)
            order = flatten_order(step, regular_hours, last)
            trade = orders.place(contract, order, purpose=reason)
            results.append(FlattenResult(step, trade))
        except ProgramError as exc:
            results.append(FlattenResult(step, None, error=str(exc)))
    _wait_done(ib, results, fill_wait_s)
    unfilled = [r.trade for r in results if r.trade is not None and not r.trade.isDone()]
    for trade in unfilled:  # an order still working could fill after the next plan
        ib.cancelOrder(trade.order)
    if unfilled:
        _wait_done(ib, results, CANCEL_CONFIRM_S)
    ib.sleep(0.3)  # commission reports follow the fills
    for result in results:
        if result.trade is None:
            continue
        orders.sync_intent(result.trade)
        record_fills(ib, db, result, reason)
        if not result.trade.isDone():
            result.error = (
                f"not filled within {fill_wait_s:g} s and its cancel not confirmed "
                f"({result.trade.orderStatus.status})"
            )
        elif result.filled < result.step.quantity:
            result.error = f"{result.trade.orderStatus.status}: filled {result.filled:g}"
    return results


def _wait_done(ib: IB, results: list[FlattenResult], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not all(
        r.trade is None or r.trade.isDone() for r in results
    ):
        ib.sleep(0.1)


def record_fills(ib: IB, db: TradingDatabase, result: FlattenResult, reason: str) -> None:
    """Trades from the fills (keyed by execId: harmless twice); the close when fully sold."""
    trade = result.trade
    assert trade is not None
    step = result.step
    shares = 0.0
    notional = 0.0
    for fill in trade.fills:
        execution = fill.execution
        shares += execution.shares
        notional += execution.shares * execution.price
        db.record_fill(fill_of(ib, fill), AGENT)
    result.filled = shares
    result.avg_price = notional / shares if shares else None
    if step.action == "SELL" and shares >= step.quantity and result.avg_price is not None:
        closed = db.remove_active_position(step.symbol, result.avg_price, reason)
        log.info(
            "position_closed",
            symbol=step.symbol,
            quantity=shares,
            exit_price=result.avg_price,
            reason=reason,
            in_database=closed is not None,
        )


def record_commissions(ib: IB, db: TradingDatabase) -> None:
    """Attach IB's commission reports for our fills as they come, before or after the fill's
    row (the database matches them by execId)."""

    def on_report(trade: Trade, fill: Fill, report: CommissionReport) -> None:
        if (fill.execution.orderRef or "").startswith(f"{AGENT}-"):
            db.record_commission(report.execId, report.commission)

    ib.commissionReportEvent += on_report


def entries_in_flight(ib: IB, orders: IntentOrders, refs: set[str], halted_at: float) -> set[str]:
    """Which entries written before the halt may still open a position.

    An entry whose intent is final, or that IB shows as done, is settled (its shares are in
    IB's positions). One working at IB is not (the next cancel or fill settles it). One IB has
    not seen is on its way for IN_FLIGHT_GRACE_S after the halt; after that it never left.
    When IB does not answer, every one of them is unsettled: unknown is not absent.
    """
    open_refs = set()
    for ref in refs:
        intent = orders.db.get_order_intent(ref)
        if intent is not None and intent["state"] in OPEN_INTENT_STATES:
            open_refs.add(ref)
    snapshot = ib.run(orders.snapshot()) if open_refs else None
    if snapshot is None:
        return open_refs
    still = set()
    for ref in open_refs:
        status = match_order_ref(ref, *snapshot).status
        if status is LookupStatus.OPEN:
            still.add(ref)
        elif status is LookupStatus.NOT_FOUND:
            if time.monotonic() - halted_at < IN_FLIGHT_GRACE_S:
                still.add(ref)
            else:
                log.warning("entry_never_reached_ib", order_ref=ref)
    return still


def flatten_until_flat(
    ib: IB,
    db: TradingDatabase,
    account: str,
    reason: str,
    clock: MarketClock,
    *,
    fill_wait_s: float,
    timeout_s: float,
    in_flight: list[str],
) -> tuple[list[FlattenResult], dict[str, float]]:
    """Rounds of cancel, re-read IB's positions, sell them, until flat or `timeout_s`.

    Flat means IB reports no position, no working BUY, and no entry written before the halt
    is still on its way. Returns every order's result and what IB still holds ({} = flat).
    """
    orders = IntentOrders(ib, db, AGENT)
    results: list[FlattenResult] = []
    sold_from: dict[str, float] = {}  # symbol -> IB position our last fill for it started from
    coming, halted_at = set(in_flight), time.monotonic()
    waiting_for: set[str] = set()
    deadline = halted_at + timeout_s
    while True:
        left = cancel_everything(ib, wait_s=CANCEL_CONFIRM_S)
        if left:
            print(f"warning: {left} order(s) still working after reqGlobalCancel")
        coming = entries_in_flight(ib, orders, coming, halted_at)
        positions = [p for p in ib.reqPositions() if p.account == account and p.position != 0]
        held = {p.contract.symbol: float(p.position) for p in positions}
        buying = [t for t in ib.reqAllOpenOrders() if t.order.action == "BUY" and not t.isDone()]
        if not held and not buying and not coming:
            return results, {}
        if time.monotonic() > deadline:
            return results, held
        if coming and coming != waiting_for:
            waiting_for = coming
            log.info("waiting_for_entries_in_flight", order_refs=sorted(coming))
        # IB's position report may lag our own fill: a quantity still exactly what we sold
        # from is not sold again until the report has moved (selling it twice would short).
        steps = [
            s for s in plan_flatten(positions, account) if sold_from.get(s.symbol) != s.position
        ]
        if not steps:
            ib.sleep(0.2)
            continue
        log.info("flatten_round", positions=held, entries_in_flight=sorted(coming))
        done = execute(ib, db, steps, reason, clock, fill_wait_s, orders=orders)
        results += done
        for result in done:
            if result.filled:
                sold_from[result.step.symbol] = result.step.position
        if any(r.trade is not None and not r.trade.isDone() for r in done):
            # One of our orders may still fill: another round could sell those shares twice.
            return results, broker_positions(ib, account)
        if all(r.trade is None for r in done):  # none could be sent (see the errors)
            return results, held


def working_orders(ib: IB) -> int:
    """How many orders of every client still work at IB."""
    return sum(1 for t in ib.reqAllOpenOrders() if not t.isDone())


def plan(ib: IB, account: str) -> list[FlattenStep]:
    """The flatten steps for IB's positions of `account` now (reqPositions)."""
    return plan_flatten(ib.reqPositions(), account)
