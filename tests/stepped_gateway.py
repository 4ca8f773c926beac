"""A simulated gateway stepped by hand on the small recorded sample (tests/data/replay).

Speed only changes how many simulated seconds one engine step crosses (speed / steps per
second), so tests drive the gateway's own `step()` on a hand-moved clock with the step sizes
of two speeds: 0.1 s (2x at 20 steps a second) and 15 s (300x). No socket, no real waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path

from core.clock import NEW_YORK, ManualTimeSource
from ibsim.config import GatewayConfig
from ibsim.requests import ContractQuery, OrderRequest
from ibsim.server import SimulatedGateway

SAMPLE_DIR = Path(__file__).parent / "data" / "replay"
SAMPLE = SAMPLE_DIR / "MSFT_2022-05-19.csv"
SAMPLE_DATE = date(2022, 5, 19)
SLOW_STEP, FAST_STEP = 0.1, 15.0  # simulated seconds per step at 2x and at 300x


def at(hh: int, mm: int, ss: float = 0.0) -> float:
    """Epoch of hh:mm:ss New York on the sample's date."""
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


@dataclass
class SteppedGateway:
    gateway: SimulatedGateway
    clock: ManualTimeSource

    def drive(self, end: float, step: float) -> None:
        """Run the engine loop's steps, `step` simulated seconds apart, until `end`."""
        while self.clock.epoch() < end:
            self.clock.set(min(self.clock.epoch() + step, end))
            self.gateway.step()


def sample_gateway(start: float, path: Path = SAMPLE, **kw: object) -> SteppedGateway:
    config = GatewayConfig(port=0, trading_date=SAMPLE_DATE, replay_path=str(path), **kw)
    gateway = SimulatedGateway(config)
    clock = ManualTimeSource(start)
    gateway.clock = clock  # the engine reads only .epoch(): the test moves time itself
    gateway._last_step_time = start
    gateway.step()
    return SteppedGateway(gateway, clock)


def order(
    order_id: int,
    action: str,
    qty: float,
    order_type: str,
    symbol: str = "MSFT",
    lmt: float | None = None,
    aux: float | None = None,
) -> OrderRequest:
    """An order as the gateway decodes it from the wire (DAY, transmitted, regular hours)."""
    return OrderRequest(
        msg_id=3, order_id=order_id, contract=ContractQuery(symbol=symbol, sec_type="STK"),
        action=action, total_qty=qty, order_type=order_type, lmt_price=lmt, aux_price=aux,
        tif="DAY", oca_group="", account="", order_ref=f"test-{order_id}", transmit=True,
        parent_id=0, outside_rth=False, good_till_date="", oca_type=0, trail_stop_price=None,
        trailing_percent=None, what_if=False,
    )  # fmt: skip
