"""The pure fill and commission rules (trading.fills) on plain records: what the simulated
gateway and the backtest both fill by."""

from __future__ import annotations

from dataclasses import dataclass

from trading.fills import available_size, commission_for, fill_price, is_triggered


@dataclass
class Order:
    action: str
    order_type: str
    lmt_price: float | None = None
    aux_price: float | None = None
    trail_stop_price: float | None = None
    triggered: bool = False
    resting: bool = False

    @property
    def is_buy(self) -> bool:
        return self.action == "BUY"


@dataclass
class Book:
    bid: float
    ask: float
    last: float
    bid_size: float = 300
    ask_size: float = 200


def test_a_resting_buy_limit_fills_only_when_traded_through_and_then_at_its_price() -> None:
    order = Order("BUY", "LMT", lmt_price=10.00, resting=True)
    assert fill_price(order, Book(bid=10.00, ask=10.01, last=10.00), 0.01, 0) is None
    assert fill_price(order, Book(bid=9.90, ask=9.91, last=9.90), 0.01, 0) == 10.00


def test_an_arriving_marketable_limit_takes_the_touch() -> None:
    order = Order("BUY", "LMT", lmt_price=10.05)
    assert fill_price(order, Book(bid=10.00, ask=10.02, last=10.01), 0.01, 0) == 10.02


def test_a_stop_triggers_on_the_last_and_sells_at_the_bid_less_slippage() -> None:
    stop = Order("SELL", "STP", aux_price=9.50)
    assert not is_triggered(stop, 9.51) and is_triggered(stop, 9.50)
    stop.triggered = True
    assert fill_price(stop, Book(bid=9.48, ask=9.50, last=9.50), 0.01, 2) == 9.46


def test_the_book_offers_its_displayed_size_and_commissions_have_a_minimum_and_a_cap() -> None:
    assert available_size(Order("SELL", "MKT"), Book(1, 1.01, 1)) == 300
    assert commission_for(100, 1000.0, 0.005, 1.0) == 1.0  # the $1 minimum
    assert commission_for(1000, 50_000.0, 0.005, 1.0) == 5.0
    assert commission_for(1000, 150.0, 0.005, 1.0) == 1.5  # at most 1% of the value
