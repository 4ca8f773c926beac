"""Open and today's completed orders at IB beside our order intents, with disagreements flagged.

    python check_orders.py
    python check_orders.py --open-only

Every order of every client is listed (reqAllOpenOrders, reqCompletedOrders) with its orderRef
and the intent state the database holds for it. Flags: NO_INTENT (an orderRef the database
does not know: placed outside the intent protocol), NO_REF (a manual order), STATE (IB and the
database disagree on the state), NOT_AT_IB (an open intent IB does not show).
Exit code 0 when everything agrees, 3 when something is flagged, 1 on an error.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from core import cli
from core.settings import Settings
from ib.intents import intent_state_for
from ib.tools import OrderAtIB, every_clients_orders
from ib_tools import add_connection_args, add_db_arg, tool_session
from observability import OPEN_INTENT_STATES

TOOL = "check_orders"
DISAGREEMENT_EXIT_CODE = 3


@dataclass(frozen=True)
class OrderRow:
    where: str  # "open", "completed" or "db only"
    symbol: str
    action: str
    quantity: float
    order_type: str
    ib_status: str
    client_id: int | None
    order_ref: str
    intent_state: str | None
    flag: str  # "" when IB and the database agree


def _row(where: str, order: OrderAtIB, intent: dict[str, Any] | None) -> OrderRow:
    ref = order.order_ref
    flag = ""
    if not ref:
        flag = "NO_REF"
    elif intent is None:
        flag = "NO_INTENT"
    else:
        ib_state = intent_state_for(order.status, order.filled, order.remaining)
        if ib_state is not None and ib_state != intent["state"]:
            flag = f"STATE: IB {ib_state}, db {intent['state']}"
    return OrderRow(
        where=where,
        symbol=order.symbol,
        action=order.action,
        quantity=order.quantity,
        order_type=order.order_type,
        ib_status=order.status,
        client_id=order.client_id,
        order_ref=ref,
        intent_state=intent["state"] if intent else None,
        flag=flag,
    )


def compare(
    open_orders: Iterable[OrderAtIB],
    completed: Iterable[OrderAtIB],
    intents_today: Iterable[dict[str, Any]],
    get_intent: Callable[[str], dict[str, Any] | None],
) -> list[OrderRow]:
    """Pure: one row per IB order, plus open intents IB does not show."""
    rows: list[OrderRow] = []
    seen: set[str] = set()
    for where, orders in (("open", open_orders), ("completed", completed)):
        for order in orders:
            ref = order.order_ref
            if ref and ref in seen:
                continue  # a done order can come back in both lists
            seen.add(ref)
            rows.append(_row(where, order, get_intent(ref) if ref else None))
    for intent in intents_today:
        if intent["state"] in OPEN_INTENT_STATES and intent["order_ref"] not in seen:
            rows.append(
                OrderRow(
                    where="db only",
                    symbol=intent["symbol"],
                    action=intent["side"],
                    quantity=float(intent["quantity"]),
                    order_type=intent["order_type"],
                    ib_status="-",
                    client_id=None,
                    order_ref=intent["order_ref"],
                    intent_state=intent["state"],
                    flag="NOT_AT_IB",
                )
            )
    return rows


def render(rows: list[OrderRow]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"orders: {len(rows)}, flagged: {sum(1 for r in rows if r.flag)}")
    columns = ("where", "symbol", "side", "qty", "type", "IB status", "client", "orderRef")
    for column in (*columns, "intent", "flag"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            r.where,
            r.symbol,
            r.action,
            f"{r.quantity:g}",
            r.order_type,
            r.ib_status,
            "-" if r.client_id is None else str(r.client_id),
            r.order_ref or "-",
            r.intent_state or "-",
            r.flag or "ok",
        )
    buffer = io.StringIO()
    Console(file=buffer, width=180, color_system=None).print(table)
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        description="List IB's open and today's completed orders beside the database's intents."
    )
    add_connection_args(parser, TOOL)
    add_db_arg(parser)
    parser.add_argument("--open-only", action="store_true", help="skip completed orders")
    return parser


def check(args: argparse.Namespace, settings: Settings) -> int:
    with tool_session(args, TOOL, read_only_db=True, settings=settings) as session:
        db = session.db
        open_orders, completed = every_clients_orders(session.ib, completed=not args.open_only)
    rows = compare(
        open_orders, completed, db.get_intents_by_date(db.clock.today_str()), db.get_order_intent
    )
    print(render(rows), end="")
    flagged = [r for r in rows if r.flag]
    if flagged:
        print(f"{len(flagged)} order(s) where IB and the database disagree")
        return DISAGREEMENT_EXIT_CODE
    print("IB and the database agree")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_program(TOOL, build_parser(), check, argv)


if __name__ == "__main__":
    sys.exit(main())
