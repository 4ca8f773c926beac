"""Emergency flatten: cancel every order, sell every broker position, verify flat.

    python liquidate_all.py --dry-run        # show what it would do, change nothing
    python liquidate_all.py                  # asks for confirmation
    python liquidate_all.py --yes --emergency
    python liquidate_all.py --resume         # lift the entry halt a liquidation left

Steps (failure mode 2): halt new entries first (the database's kill-switch flag, unless
--keep-entries: the day trader's entry guard reads it in the transaction that writes an entry
intent, so no entry can be sent after it); then rounds until IB reports the account flat or
--flat-timeout passes: reqGlobalCancel (every client's orders, protective stops included),
re-read IB's positions, and one marketable order per position (IB is the truth, not the
database rows), each through the intent protocol; wait for the fills and record them and the
closes in the database (reason MANUAL, or EMERGENCY). A position that appears mid-way (an
entry written just before the halt) is sold in the next round. It never sells more than the
position IB reports, never sells from zero, and never plans a round while one of its own orders
may still fill, so it cannot open a short. Entries stay halted until `--resume`.
Exit code 0 when the account is flat, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
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

from core import cli
from core.clock import MarketClock, get_clock
from core.logs import get_logger
from core.money import round_to_tick
from core.orders import IntentOrders, LookupStatus, match_order_ref
from core.settings import get_settings
from ib.convert import fill_record
from ib_tools import (
    ToolError,
    account_of,
    add_connection_args,
    add_db_arg,
    open_database,
    quiet_logging,
    run_tool,
    tool_session,
)
from observability import KILL_SWITCH_FLAG, OPEN_INTENT_STATES, RESUME_ENTRIES, TradingDatabase

TOOL = "liquidate_all"
log = get_logger(TOOL)
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
    *,
    orders: IntentOrders | None = None,
) -> list[FlattenResult]:
    """Send one order per step through the intent protocol and wait for the fills.

    An order not filled within `fill_wait_s` is cancelled; when this returns, every order it
    sent is done unless its result's error says the cancel was not confirmed.
    """
    orders = orders or IntentOrders(ib, db, TOOL)
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
        record_fills(db, result, reason)
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


def record_fills(db: TradingDatabase, result: FlattenResult, reason: str) -> None:
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
        db.record_fill(fill_record(fill), TOOL)
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
        if (fill.execution.orderRef or "").startswith(f"{TOOL}-"):
            db.record_commission(report.execId, report.commission)

    ib.commissionReportEvent += on_report


def halt_new_entries(db: TradingDatabase, reason: str) -> list[str]:
    """Set the kill-switch flag; returns the orderRefs of entries written before it.

    Those few may still reach IB (their program was between writing the intent and sending
    the order); the flatten loop waits for them. No entry can be written after the flag.
    """
    stamp = db.clock.now().strftime("%Y-%m-%d %H:%M:%S")
    in_flight = db.halt_entries(f"{reason} by {TOOL} at {stamp} New York")
    refs = [intent["order_ref"] for intent in in_flight]
    log.warning("entries_halted", reason=reason, entries_in_flight=refs, lift=RESUME_ENTRIES)
    return refs


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
    orders = IntentOrders(ib, db, TOOL)
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


def resume(args: argparse.Namespace) -> int:
    """`--resume`: lift the entry halt (the database's kill-switch flag); no gateway needed."""
    settings = get_settings()  # no connection: host, port and account do not matter here
    quiet_logging(TOOL, settings)
    db = open_database(args, settings)
    was = db.resume_entries()
    if was is None:
        print(f"entries were not halted (no database flag {KILL_SWITCH_FLAG})")
    else:
        log.warning("entries_resumed", was=was)
        print(f"entries resumed: database flag {KILL_SWITCH_FLAG} cleared (was: {was})")
    if settings.kill_switch_file.exists():
        print(
            f"note: the kill-switch file {settings.kill_switch_file} still halts entries; "
            "delete it to allow entries"
        )
    return 0


def confirm(steps: list[FlattenStep]) -> bool:
    try:
        answer = input(f"Cancel ALL orders and flatten {len(steps)} position(s)? Type YES: ")
    except EOFError:
        return False
    return answer.strip() == "YES"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
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
        "--keep-entries",
        action="store_true",
        help="do not halt new entries (the day trader may enter while this flattens)",
    )
    cli.add_seconds_arg(parser, "--fill-wait", 30.0, "time to wait for fills")
    cli.add_seconds_arg(
        parser, "--flat-timeout", 90.0, "cancel/sell rounds until IB reports the account flat"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="only lift the entry halt a liquidation set (database flag); sends nothing",
    )
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
        plan = [] if args.keep_entries else [f"halt new entries (database flag {KILL_SWITCH_FLAG})"]
        plan.append("reqGlobalCancel (every client's orders)")
        plan += [step.describe() for step in steps]
        plan.append(f"re-read IB's positions, repeat until flat (at most {args.flat_timeout:g} s)")
        for number, line in enumerate(plan, start=1):
            print(f"  {number}. {line}")
        if args.dry_run:
            print("dry run: nothing sent")
            return 0
        if not args.yes and not confirm(steps):
            print("not confirmed: nothing sent")
            return 1
        log.info("liquidation_started", account=account, reason=reason, positions=len(steps))
        record_commissions(ib, db)
        in_flight: list[str] = []
        if not args.keep_entries:
            in_flight = halt_new_entries(db, reason)
            print(f"new entries halted (database flag {KILL_SWITCH_FLAG}); lift: {RESUME_ENTRIES}")
        results, remaining = flatten_until_flat(
            ib,
            db,
            account,
            reason,
            clock,
            fill_wait_s=args.fill_wait,
            timeout_s=args.flat_timeout,
            in_flight=in_flight,
        )
        for result in results:
            status = result.error or f"filled {result.filled:g} @ {result.avg_price:.4f}"
            print(f"  {result.step.describe()}: {status}")
        if not args.keep_entries:
            print(f"new entries stay halted until: {RESUME_ENTRIES}")
        # Anything a bot re-placed while we sold has nothing left to protect.
        cancel_everything(ib, wait_s=CANCEL_CONFIRM_S)
        remaining = remaining or broker_positions(ib, account)
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
    if args.resume:
        clashing = [f for f in ("yes", "dry_run", "emergency", "keep_entries") if getattr(args, f)]
        if clashing:
            flag = clashing[0].replace("_", "-")
            print(
                f"{TOOL}: error: --resume only lifts the entry halt; drop --{flag}", file=sys.stderr
            )
            return 2
        return run_tool(TOOL, lambda: resume(args))
    return run_tool(TOOL, lambda: liquidate(args))


if __name__ == "__main__":
    sys.exit(main())
