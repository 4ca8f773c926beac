"""Emergency flatten: cancel every order, sell every broker position, verify flat.

    python liquidate_all.py --dry-run        # show what it would do, change nothing
    python liquidate_all.py                  # asks for confirmation
    python liquidate_all.py --yes --emergency

Steps (failure mode 2): reqGlobalCancel (every client's orders, protective stops included),
then one marketable order per broker position (IB is the truth, not the database rows), each
through the intent protocol; wait for the fills, record them and the closes in the database
(reason MANUAL, or EMERGENCY), verify flat at IB, and cancel again anything a bot re-placed
meanwhile. It never sells more than the position IB reports and never sells from zero, so it
cannot open a short. New entries are halted with the kill-switch file unless --keep-entries.
Exit code 0 when the account is flat, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ib_async import IB, LimitOrder, MarketOrder, Order, Position, Stock, Trade

from core.clock import MarketClock, get_clock
from core.logs import get_logger
from core.money import pnl_dollars, round_to_tick
from core.orders import IntentOrders
from core.settings import Settings
from ib_tools import ToolError, account_of, add_connection_args, add_db_arg, run_tool, tool_session
from observability import TradingDatabase

TOOL = "liquidate_all"
log = get_logger(TOOL)
# Outside regular hours a market order would wait for the open: use a limit this far through
# the last price, good outside RTH, instead.
EXTENDED_HOURS_THROUGH_PCT = 2.0


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


def cancel_everything(ib: IB, wait_s: float) -> int:
    """reqGlobalCancel, then wait until IB lists no working order; returns how many remain."""
    ib.reqGlobalCancel()
    deadline = time.monotonic() + wait_s
    while True:
        ib.sleep(0.2)
        working = [t for t in ib.reqAllOpenOrders() if not t.isDone()]
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
        raise ToolError(
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
) -> list[FlattenResult]:
    """Send one order per step through the intent protocol and wait for the fills."""
    orders = IntentOrders(ib, db, TOOL)
    regular_hours = clock.is_market_open()
    results = []
    for step in steps:
        contract = Stock(step.symbol, "SMART", step.currency, conId=step.con_id)
        try:
            last = None if regular_hours else _last_price(ib, contract)
            order = flatten_order(step, regular_hours, last)
            trade = orders.place(contract, order, purpose=reason)
            results.append(FlattenResult(step, trade))
        except ToolError as exc:
            results.append(FlattenResult(step, None, error=str(exc)))
    deadline = time.monotonic() + fill_wait_s
    while time.monotonic() < deadline and not all(
        r.trade is None or r.trade.isDone() for r in results
    ):
        ib.sleep(0.1)
    ib.sleep(0.3)  # commission reports follow the fills
    for result in results:
        if result.trade is None:
            continue
        orders.sync_intent(result.trade)
        record_fills(db, result, reason)
        if not result.trade.isDone():
            result.error = (
                f"not filled within {fill_wait_s:g} s ({result.trade.orderStatus.status})"
            )
        elif result.filled < result.step.quantity:
            result.error = f"{result.trade.orderStatus.status}: filled {result.filled:g}"
    return results


def record_fills(db: TradingDatabase, result: FlattenResult, reason: str) -> None:
    """Trades from the fills (keyed by execId: harmless twice); the close when fully sold."""
    trade = result.trade
    assert trade is not None
    step = result.step
    position = db.get_active_position(step.symbol)
    shares = 0.0
    notional = 0.0
    for fill in trade.fills:
        execution = fill.execution
        shares += execution.shares
        notional += execution.shares * execution.price
        pnl = None
        if position is not None and step.action == "SELL":
            pnl = pnl_dollars(position["entry_price"], execution.price, execution.shares)
        db.record_trade(
            step.symbol,
            execution.side,
            execution.shares,
            execution.price,
            TOOL,
            order_ref=trade.order.orderRef,
            pnl=pnl,
            commission=fill.commissionReport.commission or None,
            exec_id=execution.execId,
            trade_time=execution.time or None,  # IB's time; Fill.time is our wall clock
        )
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


def halt_entries(settings: Settings, reason: str) -> None:
    """Create the kill-switch file: the day trader stops entering, exits go on."""
    path = settings.kill_switch_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{reason}: written by liquidate_all.py; delete this file to allow entries\n")


def confirm(steps: list[FlattenStep]) -> bool:
    try:
        answer = input(f"Cancel ALL orders and flatten {len(steps)} position(s)? Type YES: ")
    except EOFError:
        return False
    return answer.strip() == "YES"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Cancel every order and flatten every IB position (emergency)."
    )
    add_connection_args(parser, TOOL)
    add_db_arg(parser)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument(
        "--emergency", action="store_true", help="record closes as EMERGENCY (default MANUAL)"
    )
    parser.add_argument(
        "--keep-entries", action="store_true", help="do not write the kill-switch file"
    )
    parser.add_argument("--fill-wait", type=float, default=30.0, help="seconds to wait for fills")
    return parser


def liquidate(args: argparse.Namespace) -> int:
    with tool_session(args, TOOL) as session:
        settings, db, ib = session.settings, session.db, session.ib
        clock = get_clock()
        reason = "EMERGENCY" if args.emergency else "MANUAL"
        account = account_of(ib, settings)
        steps = plan_flatten(ib.reqPositions(), account)
        working = [t for t in ib.reqAllOpenOrders() if not t.isDone()]
        print(f"account {account}: {len(steps)} position(s), {len(working)} working order(s)")
        print("  1. reqGlobalCancel (every client's orders)")
        for number, step in enumerate(steps, start=2):
            print(f"  {number}. {step.describe()}")
        if args.dry_run:
            print("dry run: nothing sent")
            return 0
        if not args.yes and not confirm(steps):
            print("not confirmed: nothing sent")
            return 1
        log.info("liquidation_started", account=account, reason=reason, positions=len(steps))
        if not args.keep_entries:
            halt_entries(settings, reason)
        left = cancel_everything(ib, wait_s=10.0)
        if left:
            print(f"warning: {left} order(s) still working after reqGlobalCancel")
        # Positions may have moved while we waited (a stop filled): flatten what IB holds now.
        steps = plan_flatten(ib.reqPositions(), account)
        results = execute(ib, db, steps, reason, clock, args.fill_wait)
        for result in results:
            status = result.error or f"filled {result.filled:g} @ {result.avg_price:.4f}"
            print(f"  {result.step.describe()}: {status}")
        # Anything a bot re-placed while we sold has nothing left to protect.
        cancel_everything(ib, wait_s=10.0)
        remaining = broker_positions(ib, account)
        if remaining:
            print(f"NOT FLAT: {remaining}", file=sys.stderr)
            log.critical("liquidation_incomplete", remaining=remaining)
            return 1
        stale_rows = [row["symbol"] for row in db.get_active_positions()]
        if stale_rows:
            print(
                f"database rows without a broker position (the exit manager reconciles): {stale_rows}"
            )
        print(f"flat: account {account} holds no positions")
        log.info("liquidation_done", account=account, reason=reason, orders=len(results))
        return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(TOOL, lambda: liquidate(args))


if __name__ == "__main__":
    sys.exit(main())
