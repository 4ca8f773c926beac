"""Streamed market data of the simulated gateway: what a bar holds, whatever the speed.

Speed only changes how many simulated seconds one engine step crosses (speed / steps per
second), so each test drives the gateway's own `step()` on a hand-moved clock with the step
sizes of two speeds: 0.1 s (2x at 20 steps a second) and 15 s (300x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path

import pytest

from core.clock import NEW_YORK, ManualTimeSource
from ibsim.config import GatewayConfig
from ibsim.marketdata import BarSub
from ibsim.server import SimulatedGateway

SAMPLE_DIR = Path(__file__).parent / "data" / "replay"
SAMPLE = SAMPLE_DIR / "MSFT_2022-05-19.csv"
SAMPLE_DATE = date(2022, 5, 19)
SLOW_STEP, FAST_STEP = 0.1, 15.0  # simulated seconds per step at 2x and at 300x


def at(hh: int, mm: int, ss: float = 0.0) -> float:
    return datetime.combine(SAMPLE_DATE, time(hh, mm), NEW_YORK).timestamp() + ss


@dataclass
class Recorder:
    """A client session that keeps every message pushed to it, as lists of str fields."""

    receiving: bool = True
    messages: list[list[str]] = field(default_factory=list)

    def push(self, data: bytes) -> None:
        while data:
            size = int.from_bytes(data[:4], "big")
            self.messages.append(data[4 : 4 + size].decode().split("\0")[:-1])
            data = data[4 + size :]

    def realtime_bars(self) -> list[tuple[float, ...]]:
        """(start, open, high, low, close, volume) of every realTimeBar (message 50)."""
        return [tuple(float(f) for f in m[3:9]) for m in self.messages if m[0] == "50"]


def sample_gateway(start: float, **kw: object) -> tuple[SimulatedGateway, ManualTimeSource]:
    config = GatewayConfig(port=0, trading_date=SAMPLE_DATE, replay_path=str(SAMPLE), **kw)
    gateway = SimulatedGateway(config)
    clock = ManualTimeSource(start)
    gateway.clock = clock  # the engine reads only .epoch(): the test moves time itself
    gateway._last_step_time = start
    gateway.step()
    return gateway, clock


def drive(gateway: SimulatedGateway, clock: ManualTimeSource, end: float, step: float) -> None:
    """Run the engine loop's steps, `step` simulated seconds apart, until `end`."""
    while clock.epoch() < end:
        clock.set(min(clock.epoch() + step, end))
        gateway.step()


def realtime_bars_at(step: float, start: float, end: float) -> list[tuple[float, ...]]:
    gateway, clock = sample_gateway(start)
    recorder = Recorder()
    gateway.marketdata.bar_subs.append(BarSub(recorder, 7, "MSFT", True, 5, False, 2))
    drive(gateway, clock, end, step)
    return recorder.realtime_bars()


@pytest.fixture(scope="module")
def closed_market():  # type: ignore[no-untyped-def]
    """The sample's market advanced to the end of the day: the reference for every bar."""
    gateway, _ = sample_gateway(at(9, 0))
    gateway.market.advance(at(20, 0))
    return gateway.market


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
