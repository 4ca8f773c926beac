"""Reconciliation, pure: broker = truth for quantities, database = truth for intent.

`plan_reconciliation` returns a plan the exit manager then applies (decide, then act): rows to
adopt, close or resize, our sells to cancel, positions to protect. `protection_table` is what
`exit_manager.py --once` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from trading.exits import ExitConfig, HeldPosition, held_position, matches_protective_set
from trading.model import BrokerPosition, CancelIntent, WorkingOrder

# Why reconciliation cancels one of our sells (CancelIntent.reason).
CANCEL_SHORT = "position_short"  # the broker shows a short: a sell would deepen it
CANCEL_FLAT = "position_flat"  # nothing held: the sell would open a short
CANCEL_COVERED = "covered_by_others"  # other clients' sells already cover the position
CANCEL_REPLACED = "replaced"  # not exactly one correct set: replaced by one


def _cancels(orders: Iterable[WorkingOrder], reason: str) -> list[CancelIntent]:
    return [CancelIntent(o.symbol, o.order_id, o.order_ref, reason) for o in orders]


@dataclass(frozen=True)
class Closure:
    symbol: str
    exit_price: float
    reason: str


@dataclass(frozen=True)
class ReconcilePlan:
    """What reconciliation will do; `exit_manager` applies it (cancels confirmed first)."""

    held: tuple[HeldPosition, ...] = ()  # every long position, after the plan
    adopt: tuple[HeldPosition, ...] = ()  # add to the database (agent "adopted")
    close: tuple[Closure, ...] = ()  # database rows the broker does not hold
    resize: tuple[tuple[str, int], ...] = ()  # database quantity <- broker quantity
    cancel: tuple[CancelIntent, ...] = ()  # our sells to cancel, each with its reason
    protect: tuple[tuple[HeldPosition, int], ...] = ()  # (position, quantity) to protect
    keep: tuple[str, ...] = ()  # already exactly one correct protective set
    deferred: tuple[str, ...] = ()  # unknown positions still in the day trader's grace
    alerts: tuple[str, ...] = ()

    def report(self) -> dict[str, Any]:
        """The reconciliation report logged at startup and after every reconnect."""
        return {
            "held": [p.symbol for p in self.held],
            "adopted": [p.symbol for p in self.adopt],
            "closed": [c.symbol for c in self.close],
            "resized": [list(r) for r in self.resize],
            "cancelled_orders": [o.order_ref or o.order_id for o in self.cancel],
            "protecting": [p.symbol for p, _ in self.protect],
            "already_protected": list(self.keep),
            "deferred": list(self.deferred),
            "alerts": list(self.alerts),
        }


def plan_reconciliation(
    broker_positions: Iterable[BrokerPosition],
    db_rows: Iterable[Mapping[str, Any]],
    open_orders: Iterable[WorkingOrder],
    *,
    config: ExitConfig,
    our_client_id: int,
    ticks: Mapping[str, float] | None = None,
    last_prices: Mapping[str, float] | None = None,
    young: AbstractSet[str] = frozenset(),
    busy: AbstractSet[str] = frozenset(),
    blocked: AbstractSet[str] = frozenset(),
) -> ReconcilePlan:
    """Broker = truth for quantities, database = truth for intent (failure mode 6).

    `young`: symbols whose entry is in flight (an open BUY intent or a position seen for less
    than the grace): neither adopted nor closed yet, but shares held are protected. `busy`: symbols an exit is working on
    right now (left alone). `blocked`: symbols given up after repeated rejects (no new sells).
    """
    ticks = ticks or {}
    last_prices = last_prices or {}
    broker = {p.symbol: p for p in broker_positions if abs(p.quantity) > 1e-9}
    rows = {str(r["symbol"]): r for r in db_rows}
    sells: dict[str, list[WorkingOrder]] = {}
    for order in open_orders:
        if order.action == "SELL":
            sells.setdefault(order.symbol, []).append(order)

    held: list[HeldPosition] = []
    adopt: list[HeldPosition] = []
    close: list[Closure] = []
    resize: list[tuple[str, int]] = []
    cancel: list[CancelIntent] = []
    protect: list[tuple[HeldPosition, int]] = []
    keep: list[str] = []
    deferred: list[str] = []
    alerts: list[str] = []

    for symbol in sorted(set(broker) | set(rows) | set(sells)):
        if symbol in busy:
            continue
        ours = [o for o in sells.get(symbol, []) if o.client_id == our_client_id]
        foreign = [o for o in sells.get(symbol, []) if o.client_id != our_client_id]
        position = broker.get(symbol)
        row = rows.get(symbol)
        quantity = round(position.quantity) if position else 0

        if quantity < 0:
            alerts.append(f"{symbol}: broker shows a SHORT position of {quantity}; not covering")
            cancel.extend(_cancels(ours, CANCEL_SHORT))  # a sell would deepen the short
            continue
        if quantity == 0:
            cancel.extend(_cancels(ours, CANCEL_FLAT))  # orphan sells would open a short
            if row is not None and symbol not in young:
                price = last_prices.get(symbol) or float(row["entry_price"])
                close.append(Closure(symbol, price, "RECONCILE"))
            if foreign:
                alerts.append(f"{symbol}: other clients have sells working with no position")
            continue
        if row is None and symbol in young:
            # Not adopted yet (the day trader may still write its row), but the shares are
            # held now: protected at once, whoever dies between the fill and the row.
            deferred.append(symbol)

        assert position is not None
        tick = ticks.get(symbol, 0.01)
        held_pos = held_position(symbol, quantity, position.avg_cost, config, tick=tick, db_row=row)
        held.append(held_pos)
        if row is None and symbol not in young:
            adopt.append(held_pos)
        elif row is not None and int(row["quantity"]) != quantity:
            resize.append((symbol, quantity))

        # Other clients' sells cannot be cancelled by us; protect only what they leave.
        protect_qty = quantity - round(sum(o.quantity for o in foreign))
        if foreign:
            alerts.append(
                f"{symbol}: {len(foreign)} sell(s) of other clients working; protecting "
                f"{max(protect_qty, 0)} of {quantity}"
            )
        if symbol in blocked:
            alerts.append(f"{symbol}: exits blocked after repeated rejects; server orders only")
            keep.append(symbol)
            continue
        if protect_qty <= 0:
            cancel.extend(_cancels(ours, CANCEL_COVERED))
            continue
        if matches_protective_set(held_pos, protect_qty, ours):
            keep.append(symbol)
            continue
        cancel.extend(_cancels(ours, CANCEL_REPLACED))
        protect.append((held_pos, protect_qty))

    return ReconcilePlan(
        held=tuple(held),
        adopt=tuple(adopt),
        close=tuple(close),
        resize=tuple(resize),
        cancel=tuple(cancel),
        protect=tuple(protect),
        keep=tuple(keep),
        deferred=tuple(deferred),
        alerts=tuple(alerts),
    )


def merge_plans(plans: list[ReconcilePlan]) -> ReconcilePlan:
    """One plan from per-symbol plans (for the reconciliation report)."""
    merged: dict[str, tuple[Any, ...]] = {}
    for name in ReconcilePlan.__dataclass_fields__:
        merged[name] = tuple(item for plan in plans for item in getattr(plan, name))
    return ReconcilePlan(**merged)


def protection_table(
    held: Iterable[HeldPosition], sells: Iterable[WorkingOrder], our_client_id: int
) -> list[dict[str, Any]]:
    """One row per held position with its working protective orders (for --once)."""
    by_symbol: dict[str, list[WorkingOrder]] = {}
    for order in sells:
        if order.action == "SELL":
            by_symbol.setdefault(order.symbol, []).append(order)
    table = []
    for pos in held:
        ours = [o for o in by_symbol.get(pos.symbol, []) if o.client_id == our_client_id]
        target = next((o for o in ours if o.order_type == "LMT"), None)
        stop = next((o for o in ours if o.order_type == "STP"), None)
        table.append(
            {
                "symbol": pos.symbol,
                "quantity": pos.quantity,
                "entry": pos.entry_price,
                "target": pos.target_price,
                "bot_stop": pos.stop_price,
                "backstop": pos.backstop_price,
                "target_order": target.limit_price if target else None,
                "stop_order": stop.stop_price if stop else None,
                "oca_group": (target or stop).oca_group if (target or stop) else "",
                "protected": matches_protective_set(pos, pos.quantity, ours),
            }
        )
    return table


def format_table(rows: list[dict[str, Any]]) -> str:
    """The protection table --once prints."""
    header = ("symbol", "qty", "entry", "target", "bot_stop", "backstop", "tgt_order",
              "stp_order", "protected")  # fmt: skip
    keys = ("symbol", "quantity", "entry", "target", "bot_stop", "backstop", "target_order",
            "stop_order", "protected")  # fmt: skip
    lines = ["  ".join(f"{h:>9}" for h in header)]
    for row in rows:
        lines.append("  ".join(f"{_cell(row[k]):>9}" for k in keys))
    if not rows:
        lines.append("(no open positions)")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)
