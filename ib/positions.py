"""IB's positions as the bots see them: only the stock positions of the program's account,
as the core's BrokerPosition records with IB's contract id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ib_async import IB, Position

from ib import convert
from trading.model import BrokerPosition


def is_our_stock_position(position: Position, account: str) -> bool:
    """A stock position of `account` (of any account while it is not known yet, ""): the
    only positions the bots protect, count or sell."""
    return position.contract.secType == "STK" and (not account or position.account == account)


def follow_positions(
    ib: IB, account: Callable[[], str], on_position: Callable[[BrokerPosition, int], None]
) -> None:
    """Hand each streamed position of ours (every update, and the replays of every positions
    request) to `on_position(position, con_id)`; `account()` is read at each event (it is
    known only once connected)."""

    def handle(position: Position) -> None:
        if is_our_stock_position(position, account()):
            on_position(convert.broker_position(position), position.contract.conId)

    ib.positionEvent += handle


async def fresh_positions(ib: IB, account: str, timeout: float) -> list[BrokerPosition]:
    """Our stock positions as IB answers a positions request now (not the stream, which
    lags a fill). Raises TimeoutError after `timeout` seconds, ConnectionError / OSError."""
    rows = await asyncio.wait_for(ib.reqPositionsAsync(), timeout)
    return [convert.broker_position(p) for p in rows if is_our_stock_position(p, account)]
