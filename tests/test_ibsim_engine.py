"""The order engine's matching on the recorded sample: every second, and no better than the order."""

from __future__ import annotations

import math

import pytest

from ibsim import messages as msg
from ibsim.market import Market
from ibsim.orders import OrderState, SimOrder, fill_price, update_trail
from tests.stepped_gateway import FAST_STEP, SLOW_STEP, at, order, sample_gateway

CLIENT = 10


@pytest.fixture(scope="module")
def closed_market() -> Market:
    market = sample_gateway(at(9, 0)).gateway.market
    market.advance(at(20, 0))
    return market


def a_dip_inside_one_fast_step(market: Market) -> tuple[float, float]:
    """(step start, stop price): a 300x step whose two ends trade above the stop while the
    path dips through it for a few seconds in between."""
    for k in range(240):
        start = at(9, 35) + FAST_STEP * k
        ends = min(market.quote_at("MSFT", start).last, market.quote_at("MSFT", start + 15).last)
        inside = [market.quote_at("MSFT", start + j).last for j in range(1, 15)]
        if min(inside) <= ends - 0.02:
            return start, round(min(inside) + 0.01, 2)
    raise AssertionError("the sample has no dip inside a 15-s step")


def stop_fill_after_a_dip(market: Market, step: float) -> tuple[str, float, float]:
    start, stop = a_dip_inside_one_fast_step(market)
    sim = sample_gateway(at(9, 31))
    engine = sim.gateway.engine
    engine.place(CLIENT, order(1, "BUY", 100, "MKT"), sim.clock.epoch())
    sim.drive(start, FAST_STEP)
    engine.place(CLIENT, order(2, "SELL", 100, "STP", aux=stop), sim.clock.epoch())
    sim.drive(start + FAST_STEP, step)
    placed = engine.orders[(CLIENT, 2)]
    executions = [e for e in sim.gateway.ledger.executions if e.order_id == 2]
    # The second it filled in (a step that ends inside a second stamps the step's time).
    return placed.state.name, math.floor(executions[0].time) if executions else 0.0, stop


def test_a_stop_sees_a_dip_shorter_than_one_step_at_300x(closed_market: Market) -> None:
    state, filled_at, stop = stop_fill_after_a_dip(closed_market, FAST_STEP)
    assert state == "FILLED"
    # It filled at the first second the path traded at or through the stop, not at a step end.
    assert closed_market.quote_at("MSFT", filled_at).last <= stop
    assert closed_market.quote_at("MSFT", filled_at - 1).last > stop


def test_a_stop_fills_at_the_same_second_at_2x_and_300x(closed_market: Market) -> None:
    assert stop_fill_after_a_dip(closed_market, FAST_STEP) == stop_fill_after_a_dip(
        closed_market, SLOW_STEP
    )


def test_a_resting_sell_limit_fills_at_its_limit_when_the_price_jumps_past_it() -> None:
    sim = sample_gateway(at(9, 40))
    engine, faults = sim.gateway.engine, sim.gateway.faults
    engine.place(CLIENT, order(1, "BUY", 100, "MKT"), sim.clock.epoch())
    limit = round(sim.gateway.market.quote("MSFT").bid + 1.00, 2)
    engine.place(CLIENT, order(2, "SELL", 100, "LMT", lmt=limit), sim.clock.epoch())
    sim.drive(at(9, 40, 1), FAST_STEP)  # it rests in the book
    faults.set_price("MSFT", limit + 2.00)
    target = engine.orders[(CLIENT, 2)]
    assert target.state is OrderState.FILLED
    assert target.avg_fill_price == limit  # not the bid 2 dollars above it


def test_a_sell_limit_marketable_on_arrival_takes_the_bid() -> None:
    sim = sample_gateway(at(9, 40))
    engine = sim.gateway.engine
    engine.place(CLIENT, order(1, "BUY", 100, "MKT"), sim.clock.epoch())
    bid = sim.gateway.market.quote("MSFT").bid
    engine.place(CLIENT, order(2, "SELL", 100, "LMT", lmt=round(bid - 0.50, 2)), sim.clock.epoch())
    assert engine.orders[(CLIENT, 2)].avg_fill_price == bid


def test_a_modified_limit_arrives_anew_and_takes_the_touch_when_marketable() -> None:
    sim = sample_gateway(at(9, 40))
    engine = sim.gateway.engine
    engine.place(CLIENT, order(1, "BUY", 100, "MKT"), sim.clock.epoch())
    bid = sim.gateway.market.quote("MSFT").bid
    engine.place(CLIENT, order(2, "SELL", 100, "LMT", lmt=round(bid + 1, 2)), sim.clock.epoch())
    sim.drive(at(9, 40, 1), FAST_STEP)
    bid = sim.gateway.market.quote("MSFT").bid
    engine.place(CLIENT, order(2, "SELL", 100, "LMT", lmt=round(bid - 0.5, 2)), sim.clock.epoch())
    assert engine.orders[(CLIENT, 2)].avg_fill_price == bid


class Book:
    def __init__(self, bid: float, ask: float, last: float) -> None:
        self.bid, self.ask, self.last, self.bid_size, self.ask_size = bid, ask, last, 100, 100


def limit_order(action: str, limit: float, resting: bool) -> SimOrder:
    return SimOrder(
        order_id=1, client_id=1, perm_id=1, account="DU1", symbol="MSFT", con_id=1,
        exchange="SMART", action=action, total_qty=100, order_type="LMT", lmt_price=limit,
        aux_price=None, tif="DAY", oca_group="", oca_type=0, order_ref="", transmit=True,
        parent_id=0, outside_rth=False, resting=resting,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("action", "limit", "book", "resting", "price"),
    [
        ("SELL", 100.0, Book(100.50, 100.51, 100.50), True, 100.0),  # jumped past: the limit
        ("SELL", 100.0, Book(100.50, 100.51, 100.50), False, 100.50),  # marketable: the bid
        ("SELL", 100.0, Book(99.98, 99.99, 100.01), True, 100.0),  # traded through: the limit
        ("BUY", 100.0, Book(99.40, 99.41, 99.40), True, 100.0),
        ("BUY", 100.0, Book(99.40, 99.41, 99.40), False, 99.41),
        ("BUY", 100.0, Book(100.01, 100.02, 100.01), True, None),  # not reached
    ],
)
def test_fill_price_of_a_limit_is_the_limit_once_it_rests(
    action: str, limit: float, book: Book, resting: bool, price: float | None
) -> None:
    assert fill_price(limit_order(action, limit, resting), book, 0.01, 0) == price


def test_the_average_fill_price_on_the_wire_is_the_tick_price() -> None:
    placed = limit_order("BUY", 230.0, resting=False)
    placed.apply_fill(37, 254.14)
    assert repr(placed.avg_fill_price) == "254.14"  # in floats 254.14000000000001
    placed.apply_fill(5, 254.14)
    placed.apply_fill(58, 254.14)
    fields = msg.order_status(placed)[4:].decode().split("\0")
    assert fields[5] == "254.14"  # avgFillPrice on the wire


def test_a_percent_trailing_stop_is_on_the_tick_grid() -> None:
    trail = limit_order("SELL", 1.0, resting=False)
    trail.order_type, trail.lmt_price, trail.trailing_percent = "TRAIL", None, 1.3
    update_trail(trail, 229.83)
    assert trail.trail_stop_price == 226.84  # 229.83 x 0.987 = 226.84221
