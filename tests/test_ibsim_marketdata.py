"""Streamed market data of the simulated gateway: what a bar holds, whatever the speed."""

from __future__ import annotations

import pytest

from ibsim.marketdata import BarSub
from tests.stepped_gateway import FAST_STEP, SLOW_STEP, Recorder, at, sample_gateway


def realtime_bars_at(step: float, start: float, end: float) -> list[tuple[float, ...]]:
    sim = sample_gateway(start)
    recorder = Recorder()
    sim.gateway.marketdata.bar_subs.append(BarSub(recorder, 7, "MSFT", True, 5, False, 2))
    sim.drive(end, step)
    return recorder.realtime_bars()


@pytest.fixture(scope="module")
def closed_market():  # type: ignore[no-untyped-def]
    """The sample's market advanced to the end of the day: the reference for every bar."""
    market = sample_gateway(at(9, 0)).gateway.market
    market.advance(at(20, 0))
    return market


def test_realtime_bars_are_the_same_at_2x_and_300x(closed_market) -> None:  # type: ignore[no-untyped-def]
    # The sample has no trades in 09:20 and 09:25, 09:27-09:29; steps do not align to bars.
    start, end = at(9, 19, 53.0), at(9, 31)
    slow = realtime_bars_at(SLOW_STEP, start, end)
    fast = realtime_bars_at(FAST_STEP, start, end)
    assert [b[0] for b in slow] == list(range(int(at(9, 19, 50)), int(end), 5))
    assert fast == slow


def test_a_realtime_bar_holds_only_prices_of_its_own_interval(closed_market) -> None:  # type: ignore[no-untyped-def]
    bars = realtime_bars_at(FAST_STEP, at(9, 19, 53.0), at(9, 31))
    quiet = 0
    for start, o, h, lo, c, volume in bars:
        traded = closed_market.bars("MSFT", start, start + 5, 5)
        if traded:
            b = traded[0]
            assert (o, h, lo, c, volume) == (b.open, b.high, b.low, b.close, b.volume)
        else:  # no trades: flat at the previous close, volume 0, as IB sends it
            quiet += 1
            before = closed_market.bars("MSFT", at(4, 0), start, 5)
            previous_close = before[-1].close if before else closed_market.previous_close("MSFT")
            assert (o, h, lo, c, volume) == (previous_close,) * 4 + (0.0,)
    assert quiet == 5 * 12  # the five pre-market minutes of the sample without trades


def test_a_quote_that_moved_inside_a_step_and_came_back_is_streamed_at_the_step_end() -> None:
    # A 15-s step whose two ends quote alike in every field while the bid moves in between
    # (the first in the day: quiet seconds before the sample's first trade).
    reference = sample_gateway(at(9, 0)).gateway.market
    reference.advance(at(20, 0))

    def fields(t: float) -> tuple[float, ...]:
        q = reference.quote_at("MSFT", t)
        return (q.bid, q.ask, q.bid_size, q.ask_size, q.volume, q.last)

    t0 = next(
        t
        for t in range(int(at(4, 0)), int(at(20, 0)), 2)
        if fields(t) == fields(t + 15)
        and any(fields(t + j)[0] != fields(t)[0] for j in range(1, 15))
    )
    market = sample_gateway(t0).gateway.market
    market.advance(t0)
    assert market.seconds_until(["MSFT"], t0 + 15)  # the path moved for a held symbol
    # The clients last heard a quote from inside the step: the step's end is sent again.
    assert [q.symbol for q in market.advance(t0 + 15)] == ["MSFT"]
