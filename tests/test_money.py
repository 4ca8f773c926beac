"""Tick rounding and the target/stop prices every bot uses."""

from __future__ import annotations

import pytest

from core.money import (
    average_price,
    pnl_dollars,
    pnl_percent,
    profit_target_price,
    round_to_tick,
    stop_loss_price,
)


def test_target_and_stop_are_on_the_tick_grid_and_stop_never_loses_more() -> None:
    entry = 187.37
    target = profit_target_price(entry, 1.8)
    stop = stop_loss_price(entry, 0.9)
    assert target == 190.74  # 190.7427 nearest
    assert stop == 185.69  # 185.6837 rounded up toward entry
    assert (entry - stop) / entry * 100 <= 0.9
    assert round(target * 100) == target * 100 and round(stop * 100) == stop * 100


def test_round_to_tick_avoids_float_drift() -> None:
    assert round_to_tick(187.3) == 187.3
    assert round_to_tick(0.07, 0.05, "up") == 0.1
    assert round_to_tick(0.07, 0.05, "down") == 0.05
    with pytest.raises(ValueError, match="tick"):
        round_to_tick(1.0, 0)


def test_pnl() -> None:
    assert pnl_percent(100, 101.8) == pytest.approx(1.8)
    assert pnl_dollars(100, 99.1, 50) == pytest.approx(-45.0)
    assert pnl_percent(0, 1) == 0.0


def test_average_price_of_one_fill_is_its_price_without_float_noise() -> None:
    # In floats (5 x 229.82 + 95 x 229.82) / 100 is 229.81999999999996: the entry_price once
    # stored after two fills at one price; 37 x 254.14 / 37 is 254.14000000000001.
    assert repr(average_price([(5, 229.82), (95, 229.82)])) == "229.82"
    assert repr(average_price([(37, 254.14)])) == "254.14"
    assert average_price([(100, 10.01), (100, 10.02)]) == 10.015  # a true sub-tick average
    assert average_price([(60, 10.0), (40, 11.0)]) == 10.4
    assert average_price([]) is None
