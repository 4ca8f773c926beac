"""Exit rules: the exit manager's decisions as pure functions (no I/O, no clock reads).

Everything here takes plain data (broker positions, database rows, working orders, stamped
quotes, times as epoch seconds) and returns plain data (a reconciliation plan, an exit
action, a limit price). `exit_manager.py` wires these to IB and the database, so the same
rules run live, on the simulator and in tests.

Prices: the take-profit LMT sits at entry × (1 + target%), the bot-monitored stop at
entry × (1 - stop%), and the server-side STP backstop a little lower (entry × (1 - stop% -
gap%)) so that while the bot is alive it exits first with a marketable limit it controls,
and while it is dead the backstop still sells (failure mode 3). While the bot has no live,
fresh quotes for a symbol (no subscription, delayed, stale), the server STP sits at the
stop-loss price itself: IB triggers it on its own data, and it is then the only stop that
acts (`server_stop_price`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ib_async import Order, Ticker, Trade

from core.clock import Session
from core.money import average_price as average_price  # the exit manager's import
from core.money import profit_target_price, round_to_tick, stop_loss_price
from ib import convert
from trading import phases
from trading.model import (  # noqa: F401
    ADOPTED,
    DAY_TRADER,
    DELAYED_DATA_TYPES,
    EXIT_MANAGER,
    EXIT_REASON_BY_PURPOSE,
    PROTECTIVE_PURPOSES,
    PURPOSE_BACKSTOP,
    PURPOSE_BOT_STOP,
    PURPOSE_BOT_TARGET,
    PURPOSE_EOD,
    PURPOSE_MANUAL,
    PURPOSE_TARGET,
    BrokerPosition,
    ExitIntent,
    ProtectIntent,
    Quote,
    WorkingOrder,
    exit_reason_for,
)
from trading.phases import DayPhase

AGENT = EXIT_MANAGER
ADOPTED_AGENT = ADOPTED


@dataclass(frozen=True)
class ExitConfig:
    """The exit manager's rules; percentages are of the entry price."""

    profit_target_pct: float = 1.8
    stop_loss_pct: float = 0.9
    backstop_gap_pct: float = 0.5  # server STP sits this much below the bot stop
    protective_tif: str = "GTC"
    stale_tick_seconds: float = 30.0
    allow_delayed_data: bool = False
    exit_fill_timeout_s: float = 10.0  # market seconds before an unfilled exit is re-priced
    exit_attempts: int = 4
    exit_slippage_pct: float = 0.2  # each attempt sells this much further below the bid
    max_rejects: int = 3
    adopt_grace_s: float = 5.0  # market seconds the day trader gets to write its row
    target_fill_grace_s: float = 3.0  # market seconds the target LMT gets once touched
    eod_flatten_minutes: float = 15.0
    eod_sweep_minutes: float = 5.0

    def __post_init__(self) -> None:
        if self.protective_tif not in {"GTC", "DAY"}:
            raise ValueError(f"protective tif {self.protective_tif!r}: use GTC or DAY")
        if self.exit_attempts < 1 or self.max_rejects < 1:
            raise ValueError("exit_attempts and max_rejects must be >= 1")
        if min(self.profit_target_pct, self.stop_loss_pct) <= 0 or self.backstop_gap_pct < 0:
            raise ValueError("target and stop percentages must be > 0, the backstop gap >= 0")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ExitConfig:
        """Defaults from core.settings.Settings, then `overrides`."""
        values: dict[str, Any] = {
            "profit_target_pct": settings.profit_target_pct,
            "stop_loss_pct": settings.stop_loss_pct,
            "stale_tick_seconds": settings.stale_tick_seconds,
            "allow_delayed_data": settings.allow_delayed_data,
            "eod_flatten_minutes": settings.eod_flatten_minutes,
            "eod_sweep_minutes": settings.eod_sweep_minutes,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class HeldPosition:
    """A long position as the exit manager protects it."""

    symbol: str
    quantity: int
    entry_price: float
    target_price: float
    stop_price: float  # the bot-monitored stop
    backstop_price: float  # the server-side STP
    tick: float = 0.01
    agent: str = DAY_TRADER


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and value > 0


def held_position(
    symbol: str,
    quantity: float,
    entry_price: float,
    config: ExitConfig,
    *,
    tick: float = 0.01,
    db_row: Mapping[str, Any] | None = None,
) -> HeldPosition:
    """The position with its exit prices: the database row's when set, else from `config`."""
    agent = ADOPTED_AGENT
    target = stop = None
    if db_row is not None:
        entry_price = float(db_row["entry_price"]) or entry_price
        target = db_row.get("profit_target_price")
        stop = db_row.get("stop_loss_price")
        agent = db_row.get("agent") or agent
    target = round_to_tick(target, tick) if target else None
    stop = round_to_tick(stop, tick, "up") if stop else None
    target = target or profit_target_price(entry_price, config.profit_target_pct, tick)
    stop = stop or stop_loss_price(entry_price, config.stop_loss_pct, tick)
    backstop = stop_loss_price(entry_price, config.stop_loss_pct + config.backstop_gap_pct, tick)
    backstop = min(backstop, round_to_tick(stop - tick, tick, "down"))  # strictly below
    return HeldPosition(
        symbol=symbol,
        quantity=round(quantity),
        entry_price=float(entry_price),
        target_price=target,
        stop_price=stop,
        backstop_price=backstop,
        tick=tick,
        agent=agent,
    )


# -- the protective set ---------------------------------------------------------------------
def protective_orders(
    position: HeldPosition, quantity: int, oca_group: str, config: ExitConfig, stop_price: float
) -> tuple[Order, Order]:
    """Take-profit LMT and server STP (at `stop_price`, from `server_stop_price`) for
    `quantity` shares in one OCA group (ocaType 1)."""
    intent = ProtectIntent(position.symbol, quantity, position.target_price, stop_price,
                           oca_group, "protect", config.protective_tif)  # fmt: skip
    return convert.protective_orders(intent)


def exit_order(quantity: int, limit_price: float) -> Order:
    """A marketable sell limit, immediate-or-cancel: never rests, never sells twice."""
    return convert.exit_order(ExitIntent("", quantity, "", "", limit_price))


def market_exit_order(quantity: int) -> Order:
    """The fallback without a usable quote (EOD on stale data): a DAY market sell."""
    return convert.exit_order(ExitIntent("", quantity, "", ""))


def exit_limit_price(
    quote: Quote | None, attempt: int, config: ExitConfig, tick: float
) -> float | None:
    """Sell limit for exit `attempt` (1, 2, ...): the bid (else last) less attempt × slippage.

    Rounded down to the tick so it stays marketable; None without a usable price.
    """
    if quote is None:
        return None
    reference = quote.bid if _finite(quote.bid) else quote.last
    if _finite(quote.last) and _finite(reference):
        reference = min(reference, quote.last)
    if not _finite(reference):
        return None
    price = reference * (1 - config.exit_slippage_pct * attempt / 100)
    return max(tick, round_to_tick(price, tick, "down"))


def stop_to_trigger(quantity: int | None, sells: Iterable[WorkingOrder]) -> WorkingOrder | None:
    """The protective STP an exit may move through the market instead of cancelling the set
    and selling anew, or None (then the caller cancels, asks IB, sells).

    Only when `sells` (our working sells of the symbol) are one OCA group, so the target
    cannot sell as well, and its STP is for exactly `quantity`, the position IB last
    reported: then the exit sells what is held and nothing more. A target that filled in
    part has already cancelled the STP at IB (ocaType 1); a position that changed fails
    the quantity check.
    """
    sells = list(sells)
    stops = [o for o in sells if o.order_type == "STP"]
    if quantity is None or quantity <= 0 or len(stops) != 1:
        return None
    stop = stops[0]
    if not stop.oca_group or any(o.oca_group != stop.oca_group for o in sells):
        return None
    return stop if abs(stop.quantity - quantity) < 1e-9 else None


def through_market_stop_price(
    quote: Quote | None, position: HeldPosition, *, quote_usable: bool, slippage_pct: float
) -> float:
    """A sell stop price above the market, so IB triggers the modified STP at once and it
    sells as a market order (IB advises modifying prices and sizes, never order types).

    Above the quote's highest price by `slippage_pct`; without a usable quote (stale, EOD
    on old data) above the target too, which the market is below while the target LMT has
    not filled. Rounded up to the tick, and at least one tick above the reference.
    """
    prices = [p for p in (quote.bid, quote.ask, quote.last) if _finite(p)] if quote else []
    if not quote_usable or not prices:
        prices.append(position.target_price)
    reference = max(prices)
    price = max(reference * (1 + slippage_pct / 100), reference + position.tick)
    return round_to_tick(price, position.tick, "up")


def matches_protective_set(
    position: HeldPosition, quantity: int, sells: list[WorkingOrder]
) -> bool:
    """True when `sells` are exactly one target LMT and one server STP for `quantity`
    shares, at the position's prices, in one OCA group. The STP may sit at either of its two
    prices (backstop or stop-loss): which one is due is `server_stop_price`'s call, and a
    wrong one is moved by modifying the order, never by replacing the set."""
    if len(sells) != 2 or quantity <= 0:
        return False
    by_type = {o.order_type: o for o in sells}
    target, backstop = by_type.get("LMT"), by_type.get("STP")
    if target is None or backstop is None:
        return False
    half_tick = position.tick / 2
    return (
        bool(target.oca_group)
        and target.oca_group == backstop.oca_group
        and all(abs(o.quantity - quantity) < 1e-9 for o in sells)
        and abs((target.limit_price or 0) - position.target_price) < half_tick
        and any(
            abs((backstop.stop_price or 0) - price) < half_tick
            for price in (position.backstop_price, position.stop_price)
        )
    )


def covered_quantity(sells: Iterable[WorkingOrder]) -> int:
    """Shares `sells` can sell at most: per OCA group its largest leg (ocaType 1 cancels
    the rest once one fills), plus every order outside a group."""
    by_group: dict[str, float] = {}
    loose = 0.0
    for order in sells:
        if order.action != "SELL":
            continue
        if order.oca_group:
            by_group[order.oca_group] = max(by_group.get(order.oca_group, 0.0), order.quantity)
        else:
            loose += order.quantity
    return round(sum(by_group.values()) + loose)


# -- reconciliation ---------------------------------------------------------------------------
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
    cancel: tuple[WorkingOrder, ...] = ()  # our sells to cancel (extras, stale, orphans)
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
    than the grace): neither adopted nor closed yet. `busy`: symbols an exit is working on
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
    cancel: list[WorkingOrder] = []
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
            cancel.extend(ours)  # a working sell would only deepen the short
            continue
        if quantity == 0:
            cancel.extend(ours)  # orphan sells would open a short
            if row is not None and symbol not in young:
                price = last_prices.get(symbol) or float(row["entry_price"])
                close.append(Closure(symbol, price, "RECONCILE"))
            if foreign:
                alerts.append(f"{symbol}: other clients have sells working with no position")
            continue
        if row is None and symbol in young:
            deferred.append(symbol)
            continue

        assert position is not None
        tick = ticks.get(symbol, 0.01)
        held_pos = held_position(symbol, quantity, position.avg_cost, config, tick=tick, db_row=row)
        held.append(held_pos)
        if row is None:
            adopt.append(held_pos)
        elif int(row["quantity"]) != quantity:
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
            cancel.extend(ours)
            continue
        if matches_protective_set(held_pos, protect_qty, ours):
            keep.append(symbol)
            continue
        cancel.extend(ours)
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


# -- quotes and exits ---------------------------------------------------------------------------
def quote_fault(quote: Quote | None, now: float, config: ExitConfig) -> str | None:
    """Why the bot must not act on `quote` ("no_quote", "no_price", "stale", "delayed"), or None."""
    if quote is None:
        return "no_quote"
    if quote.data_type in DELAYED_DATA_TYPES and not config.allow_delayed_data:
        return "delayed"
    if not _finite(quote.last):
        return "no_price"
    if now - quote.time > config.stale_tick_seconds:
        return "stale"
    return None


def bot_stop_fault(quote: Quote | None, now: float, config: ExitConfig) -> str | None:
    """Why the bot's own stop cannot see the symbol's price now, or None while it watches
    live, fresh quotes. Delayed quotes count even where the user allowed them for the bot:
    they are minutes old, while IB triggers server stops on its own live data."""
    if quote is not None and quote.data_type in DELAYED_DATA_TYPES:
        return "delayed"
    return quote_fault(quote, now, config)


def server_stop_price(position: HeldPosition, fault: str | None) -> float:
    """The price the server-side STP must have: the backstop below the bot stop while the
    bot sees the price (no `fault` from `bot_stop_fault`: it exits first, with a limit it
    controls), else the stop-loss price itself, since only the server stop can act then."""
    return position.backstop_price if fault is None else position.stop_price


@dataclass(frozen=True)
class ExitAction:
    symbol: str
    reason: str  # STOP_LOSS / PROFIT_TARGET / EOD
    purpose: str
    trigger_price: float
    last: float


def target_touch_time(
    position: HeldPosition, quote: Quote, touched_at: float | None, now: float
) -> float | None:
    """When the price first reached the target in the current touch (None when below it)."""
    if not _finite(quote.last) or quote.last < position.target_price:
        return None
    return touched_at if touched_at is not None else now


def exit_decision(
    position: HeldPosition,
    quote: Quote | None,
    now: float,
    config: ExitConfig,
    *,
    market_open: bool,
    target_touched_at: float | None = None,
) -> ExitAction | None:
    """The seed's bot-monitored exit: sell at last <= stop, or when the target was touched
    `target_fill_grace_s` ago and the target LMT has still not filled. None: do nothing.

    Never acts outside regular hours or on a faulty quote (stale, delayed, missing).
    """
    if not market_open or position.quantity <= 0 or quote_fault(quote, now, config):
        return None
    assert quote is not None
    if quote.last <= position.stop_price:
        return ExitAction(
            position.symbol, "STOP_LOSS", PURPOSE_BOT_STOP, position.stop_price, quote.last
        )
    if (
        target_touched_at is not None
        and quote.last >= position.target_price
        and now - target_touched_at >= config.target_fill_grace_s
    ):
        return ExitAction(
            position.symbol, "PROFIT_TARGET", PURPOSE_BOT_TARGET, position.target_price, quote.last
        )
    return None


# -- end of day ------------------------------------------------------------------------------------
def day_phase(now: datetime, session: Session | None, config: ExitConfig) -> DayPhase:
    """Where `now` is in the trading day (the calendar's close, so 13:00 on half days)."""
    return phases.day_phase(now, session, eod_flatten_minutes=config.eod_flatten_minutes,
                            eod_sweep_minutes=config.eod_sweep_minutes)  # fmt: skip


# -- rejects and fills ------------------------------------------------------------------------------
@dataclass
class RejectTracker:
    """Counts rejected sells per symbol; after `limit` the symbol is given up (no loop)."""

    limit: int
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, symbol: str) -> bool:
        """Count one reject; True exactly when this reject reaches the limit."""
        self.counts[symbol] = self.counts.get(symbol, 0) + 1
        return self.counts[symbol] == self.limit

    def is_blocked(self, symbol: str) -> bool:
        return self.counts.get(symbol, 0) >= self.limit

    def clear(self, symbol: str) -> None:
        self.counts.pop(symbol, None)


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


def working_order(trade: Trade) -> WorkingOrder:
    return convert.working_order(trade)


def stamped_quote(ticker: Ticker, received_at: float) -> Quote:
    return convert.quote(ticker, received_at)


def merge_plans(plans: list[ReconcilePlan]) -> ReconcilePlan:
    """One plan from per-symbol plans (for the reconciliation report)."""
    merged: dict[str, tuple[Any, ...]] = {}
    for name in ReconcilePlan.__dataclass_fields__:
        merged[name] = tuple(item for plan in plans for item in getattr(plan, name))
    return ReconcilePlan(**merged)


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
