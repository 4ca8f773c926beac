"""The exit side's rules, pure: prices, the protective set, quotes, exits, end of day, and
the per-symbol state the exit manager keeps (`HeldSymbol`, `ExitBook`).

Everything here takes plain records (trading.model) and times as epoch seconds and returns
plain data: an exit action, an intent, a limit price. No I/O and no clock reads: the exit
manager (`exit_manager.py`, `bots/exit_*.py`) wires these to IB and the database, so the same
rules run live, on the simulator and in a backtest.

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
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.money import profit_target_price, round_to_tick, stop_loss_price
from trading.model import (
    ADOPTED,
    DAY_TRADER,
    DELAYED_DATA_TYPES,
    PURPOSE_BOT_STOP,
    PURPOSE_BOT_TARGET,
    ExitIntent,
    ProtectIntent,
    Quote,
    WorkingOrder,
    exit_reason_for,
)
from trading.phases import DayPhase, SessionHours, day_phase


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


def target_and_stop(
    entry_price: float,
    target_pct: float,
    stop_pct: float,
    tick: float = 0.01,
    *,
    recorded_target: float | None = None,
    recorded_stop: float | None = None,
) -> tuple[float, float]:
    """The take-profit and the bot stop of a position entered at `entry_price`: the prices
    recorded with it (its database row) when set, rounded to the tick (the stop up, so it
    never sits further away), else `target_pct` above and `stop_pct` below the entry."""
    target = round_to_tick(recorded_target, tick) if recorded_target else None
    stop = round_to_tick(recorded_stop, tick, "up") if recorded_stop else None
    return (
        target or profit_target_price(entry_price, target_pct, tick),
        stop or stop_loss_price(entry_price, stop_pct, tick),
    )


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
    agent = ADOPTED
    recorded_target = recorded_stop = None
    if db_row is not None:
        entry_price = float(db_row["entry_price"]) or entry_price
        recorded_target = db_row.get("profit_target_price")
        recorded_stop = db_row.get("stop_loss_price")
        agent = db_row.get("agent") or agent
    target, stop = target_and_stop(
        entry_price, config.profit_target_pct, config.stop_loss_pct, tick,
        recorded_target=recorded_target, recorded_stop=recorded_stop,
    )  # fmt: skip
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


# -- intents ---------------------------------------------------------------------------------
def protect_intent(
    position: HeldPosition,
    quantity: int,
    oca_group: str,
    config: ExitConfig,
    fault: str | None,
    *,
    reason: str = "position_held",
) -> ProtectIntent:
    """The protective set for `quantity` shares of `position`: its target LMT and its server
    STP at `server_stop_price(position, fault)`, in OCA group `oca_group`."""
    return ProtectIntent(
        symbol=position.symbol,
        quantity=quantity,
        target_price=position.target_price,
        stop_price=server_stop_price(position, fault),
        oca_group=oca_group,
        reason=reason,
        tif=config.protective_tif,
    )


def exit_intent(
    symbol: str,
    quantity: int,
    purpose: str,
    quote: Quote | None,
    attempt: int,
    config: ExitConfig,
    tick: float,
) -> ExitIntent:
    """Exit `attempt` (1, 2, ...) of `quantity` shares: an IOC limit at `exit_limit_price`,
    a DAY market sell without a usable price (`quote` None: stale, delayed, missing)."""
    return ExitIntent(
        symbol=symbol,
        quantity=quantity,
        purpose=purpose,
        reason=exit_reason_for(purpose),
        limit_price=exit_limit_price(quote, attempt, config, tick),
    )


# -- the protective set ---------------------------------------------------------------------
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


def exit_phase(now: datetime, session: SessionHours | None, config: ExitConfig) -> DayPhase:
    """The day phase as the exit side sees it: its EOD flatten and sweep minutes."""
    return day_phase(now, session, eod_flatten_minutes=config.eod_flatten_minutes,
                     eod_sweep_minutes=config.eod_sweep_minutes)  # fmt: skip


# -- per-symbol state ------------------------------------------------------------------------------
@dataclass
class HeldSymbol:
    """Everything the exit manager remembers about one symbol between events."""

    symbol: str
    position: HeldPosition | None = None  # held and protected (None: not held)
    tick: float = 0.01  # the contract's minTick
    con_id: int = 0
    quote: Quote | None = None  # the latest streamed quote
    quote_fault: str | None = None  # the fault last logged for it (stale, delayed, ...)
    target_touched_at: float | None = None  # when the current target touch began
    busy: bool = False  # an exit works on it now
    moving_stop: bool = False  # its server STP is being moved
    rejects: int = 0  # rejected sells today
    cooldown_until: float = 0.0  # no bot exit before this (after exhausted attempts)
    give_up_pending: bool = False  # given up after rejects: one protective set still owed
    give_up_refs: set[str] = field(default_factory=set)  # orderRefs of that set, once placed
    unprotected: bool = False  # even the give-up set was refused: CRITICAL
    seen_quantity: float | None = None  # the position stream's last quantity
    short: int | None = None  # a negative broker quantity (alerted every reconciliation)
    audit_gap: bool = False  # the last protection audit found it without sells

    def forget_position(self) -> None:
        """No longer held: its quote and exit memory go (rejects and cooldown stay)."""
        self.position = None
        self.quote = None
        self.quote_fault = None
        self.target_touched_at = None


@dataclass
class ExitBook:
    """The exit side's state, one HeldSymbol per symbol, and the decisions taken on it.

    Pure: fed records and an explicit `now`; the exit manager does the I/O around it.
    """

    config: ExitConfig
    symbols: dict[str, HeldSymbol] = field(default_factory=dict)
    eod_done: tuple[str, DayPhase] | None = None  # (day, phase) whose flatten has run
    eod_verified: dict[DayPhase, bool] = field(default_factory=dict)

    def __getitem__(self, symbol: str) -> HeldSymbol:
        state = self.symbols.get(symbol)
        if state is None:
            state = self.symbols[symbol] = HeldSymbol(symbol)
        return state

    def __iter__(self) -> Iterator[HeldSymbol]:
        return iter(list(self.symbols.values()))

    # -- views ------------------------------------------------------------------------------
    def held(self) -> dict[str, HeldPosition]:
        """Every held position by symbol."""
        return {s.symbol: s.position for s in self if s.position is not None}

    def quotes(self) -> dict[str, Quote]:
        return {s.symbol: s.quote for s in self if s.quote is not None}

    def quote_faults(self) -> dict[str, str]:
        return {s.symbol: s.quote_fault for s in self if s.quote_fault}

    def shorts(self) -> dict[str, int]:
        return {s.symbol: s.short for s in self if s.short is not None}

    def busy(self) -> set[str]:
        return {s.symbol for s in self if s.busy}

    def unprotected(self) -> set[str]:
        return {s.symbol for s in self if s.unprotected}

    def give_up_pending(self) -> set[str]:
        return {s.symbol for s in self if s.give_up_pending}

    def ticks(self) -> dict[str, float]:
        return {s.symbol: s.tick for s in self}

    def last_prices(self) -> dict[str, float]:
        return {s.symbol: s.quote.last for s in self if s.quote is not None}

    def is_blocked(self, symbol: str) -> bool:
        """Given up after `max_rejects` rejected sells: no more sells of ours today."""
        return self[symbol].rejects >= self.config.max_rejects

    def degraded(self) -> bool:
        """A quote fault, a blocked, unprotected or short symbol: the bot is DEGRADED."""
        return any(
            s.quote_fault or s.unprotected or s.short is not None or self.is_blocked(s.symbol)
            for s in self
        )

    # -- events -----------------------------------------------------------------------------
    def record_reject(self, symbol: str) -> bool:
        """Count one rejected sell; True exactly when this reject reaches the limit."""
        state = self[symbol]
        state.rejects += 1
        return state.rejects == self.config.max_rejects

    def block(self, symbol: str) -> None:
        """Blocked by an earlier process (its flag is in the database): as if given up."""
        self[symbol].rejects = self.config.max_rejects

    def closed(self, symbol: str) -> None:
        """Its position was closed: a later position of it starts afresh."""
        state = self[symbol]
        state.forget_position()
        state.rejects = 0
        state.give_up_pending = False
        state.unprotected = False

    def track_short(self, symbol: str, quantity: int) -> bool:
        """Remember a short broker quantity (True: it is short), forget it otherwise."""
        self[symbol].short = quantity if quantity < 0 else None
        return quantity < 0

    def on_quote(self, quote: Quote, now: float) -> None:
        """A streamed quote of a held symbol: keep it and the target-touch memory."""
        state = self[quote.symbol]
        state.quote = quote
        if state.position is not None:
            state.target_touched_at = target_touch_time(
                state.position, quote, state.target_touched_at, now
            )

    def exit_due(self, symbol: str, now: float, *, market_open: bool) -> ExitAction | None:
        """The bot exit the symbol's latest quote calls for now, or None: none while an exit
        works on it, in its cooldown, after the give-up, or once the stream says flat."""
        state = self[symbol]
        if state.position is None or state.busy or state.cooldown_until > now:
            return None
        if self.is_blocked(symbol):
            return None  # given up after repeated rejects: alerted once, no loop
        if state.seen_quantity is not None and state.seen_quantity <= 0:
            return None  # the position stream already says flat: the close is on its way
        return exit_decision(
            state.position,
            state.quote,
            now,
            self.config,
            market_open=market_open,
            target_touched_at=state.target_touched_at,
        )

    def bot_stop_fault(self, symbol: str, now: float) -> str | None:
        return bot_stop_fault(self[symbol].quote, now, self.config)

    def usable_quote(self, symbol: str, now: float) -> Quote | None:
        """The symbol's quote when the bot may act on it, else None."""
        quote = self[symbol].quote
        return None if quote_fault(quote, now, self.config) else quote

    def quote_fault_changes(
        self, now: float, subscribed: AbstractSet[str]
    ) -> list[tuple[str, str | None, float | None]]:
        """(symbol, fault, quote age) for each held symbol whose quote fault changed since the
        last call (fault None: it is fine again); "not_subscribed" when it has no stream."""
        changes: list[tuple[str, str | None, float | None]] = []
        for state in self:
            if state.position is None:
                continue
            fault = quote_fault(state.quote, now, self.config)
            if fault == "no_quote" and state.symbol not in subscribed:
                fault = "not_subscribed"
            if fault and fault != state.quote_fault:
                age = now - state.quote.time if state.quote is not None else None
                changes.append((state.symbol, fault, age))
                state.quote_fault = fault
            elif not fault and state.quote_fault:
                changes.append((state.symbol, None, None))
                state.quote_fault = None
        return changes

    def server_stop_due(
        self, symbol: str, working_stops: Iterable[float], now: float
    ) -> float | None:
        """The price the symbol's server STP must move to, when one of `working_stops` (our
        working STP prices) is elsewhere; None when none must move, or the symbol is left
        alone (not held, an exit or a move in progress, given up after rejects)."""
        state = self[symbol]
        pos = state.position
        if pos is None or state.busy or state.moving_stop or self.is_blocked(symbol):
            return None
        due = server_stop_price(pos, self.bot_stop_fault(symbol, now))
        return due if any(abs(p - due) >= pos.tick / 2 for p in working_stops) else None

    def audit(self, gaps: AbstractSet[str]) -> list[str]:
        """Remember the protection audit's finding; returns the symbols found twice in a row."""
        repeated = []
        for state in self:
            if state.symbol in gaps and state.audit_gap:
                repeated.append(state.symbol)
            state.audit_gap = state.symbol in gaps
        for symbol in gaps:
            self[symbol].audit_gap = True
        return sorted(repeated)

    def eod_due(self, phase: DayPhase, day: str) -> bool:
        """True once per (day, phase) of the EOD flatten and sweep: the flatten is due now."""
        if not phase.flattening or self.eod_done == (day, phase):
            return False
        self.eod_done = (day, phase)
        return True
