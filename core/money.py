"""Money rules in one place: tick rounding, profit target and stop prices, P&L."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Literal

Rounding = Literal["nearest", "down", "up"]
_MODES = {"nearest": ROUND_HALF_UP, "down": ROUND_FLOOR, "up": ROUND_CEILING}
DEFAULT_TICK = 0.01


def round_to_tick(price: float, tick: float = DEFAULT_TICK, how: Rounding = "nearest") -> float:
    """`price` on the tick grid (decimal arithmetic, so 187.3 stays 187.3). Raises on tick <= 0."""
    if tick <= 0:
        raise ValueError(f"tick size must be > 0, got {tick}")
    step = Decimal(str(tick))
    units = (Decimal(str(price)) / step).quantize(Decimal(1), rounding=_MODES[how])
    return float(units * step)


def average_price(fills: Iterable[tuple[float, float]]) -> float | None:
    """Share-weighted price of (shares, price) fills; None without shares.

    Decimal arithmetic, so one fill (or fills at one price) gives its tick price back exactly:
    100 x 229.82 / 100 in floats is 229.81999999999996. Fills at several prices keep their
    true average (10.015 for 10.01 and 10.02), which IB's avgFillPrice reports as well.
    """
    shares = value = Decimal(0)
    for qty, price in fills:
        shares += Decimal(str(float(qty)))
        value += Decimal(str(float(qty))) * Decimal(str(float(price)))
    return float(value / shares) if shares > 0 else None


def profit_target_price(entry_price: float, target_pct: float, tick: float = DEFAULT_TICK) -> float:
    """Take-profit limit for a long: entry × (1 + pct/100), nearest tick."""
    return round_to_tick(entry_price * (1 + target_pct / 100), tick, "nearest")


def stop_loss_price(entry_price: float, stop_pct: float, tick: float = DEFAULT_TICK) -> float:
    """Protective stop for a long: entry × (1 - pct/100), rounded up so the loss never exceeds pct."""
    return round_to_tick(entry_price * (1 - stop_pct / 100), tick, "up")


def pnl_percent(entry_price: float, exit_price: float) -> float:
    """Percent gain of a long from entry to exit (0.0 when entry is not positive)."""
    if entry_price <= 0:
        return 0.0
    return (exit_price - entry_price) / entry_price * 100


def pnl_dollars(entry_price: float, exit_price: float, quantity: float) -> float:
    """Dollar gain of a long of `quantity` shares, before commissions."""
    return (exit_price - entry_price) * quantity


def marketable_limit_price(ask: float, ticks: int = 2, tick: float = DEFAULT_TICK) -> float:
    """Limit for a marketable BUY: `ticks` above the ask, rounded up onto the tick grid.

    Raises ValueError when the ask is not a positive number or `ticks` is negative.
    """
    if not ask > 0 or ask != ask:
        raise ValueError(f"ask must be a positive price, got {ask}")
    if ticks < 0:
        raise ValueError(f"ticks above the ask must be >= 0, got {ticks}")
    return round_to_tick(ask + ticks * tick, tick, "up")


def entry_shares(
    price: float,
    net_liquidation: float,
    allocation: float,
    max_open_positions: int,
    *,
    buying_power: float | None = None,
    max_position_usd: float | None = None,
) -> int:
    """Whole shares for one entry at `price`; 0 when not even one share fits.

    Budget = net liquidation x allocation split evenly over `max_open_positions`, never above
    `max_position_usd` nor `buying_power` (what the account can still pay for). Raises
    ValueError on a non-positive price or max_open_positions, or allocation outside (0, 1].
    """
    if not price > 0:
        raise ValueError(f"price must be > 0, got {price}")
    if max_open_positions < 1:
        raise ValueError(f"max_open_positions must be >= 1, got {max_open_positions}")
    if not 0 < allocation <= 1:
        raise ValueError(f"allocation must be in (0, 1], got {allocation}")
    limits = [net_liquidation * allocation / max_open_positions]
    limits += [x for x in (max_position_usd, buying_power) if x is not None]
    if any(x != x for x in limits):  # nan anywhere: no size rather than a wrong one
        return 0
    budget = max(min(limits), 0.0)
    # Decimal division so 2500 / 25.00 gives exactly 100, not 99.
    shares = (Decimal(str(budget)) / Decimal(str(price))).to_integral_value(rounding=ROUND_FLOOR)
    return max(int(shares), 0)
