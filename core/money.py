"""Money rules in one place: tick rounding, profit target and stop prices, P&L."""

from __future__ import annotations

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
