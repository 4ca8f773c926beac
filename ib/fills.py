"""Executions as the store records them: the one place that finds IB's commission for a fill.

IB sends an execution (execDetails) and its commission (commissionReport) as two messages.
ib_async puts the report on the Fill it keeps; a reqExecutions answer hands back fresh Fill
objects without it. Whichever arrives first, TradingDatabase.record_fill and
record_commission match them by execId.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime

from ib_async import IB, CommissionReport, Fill, Trade

from ib.convert import fill_record
from trading.model import FillRecord


def fill_of(ib: IB, fill: Fill, *, received_at: datetime | None = None) -> FillRecord:
    """`fill` as a FillRecord with the commission IB already reported for its execution
    (on this Fill or on the one ib_async keeps), else commission None; `received_at` is its
    time when IB sent none with a timezone."""
    kept = ib.wrapper.fills.get(fill.execution.execId)
    for candidate in (fill, kept):
        report = candidate.commissionReport if candidate else None
        record = fill_record(fill, report, received_at=received_at)
        if record.commission is not None:
            return record
    return fill_record(fill, received_at=received_at)


def fills_of(ib: IB, fills: Iterable[Fill], received_at: datetime) -> list[FillRecord]:
    """`fills` (a lookup's or a reqExecutions answer) as FillRecords (see fill_of)."""
    return [fill_of(ib, fill, received_at=received_at) for fill in fills]


async def executions(ib: IB, now: Callable[[], datetime], timeout: float) -> list[FillRecord]:
    """The executions IB reports now (reqExecutions: today's, every client's) as
    FillRecords. Raises TimeoutError after `timeout` seconds, ConnectionError / OSError."""
    fills = await asyncio.wait_for(ib.reqExecutionsAsync(), timeout)
    return fills_of(ib, fills, now())


def follow_fills(
    ib: IB,
    now: Callable[[], datetime],
    on_fill: Callable[[FillRecord], object],
    on_commission: Callable[[FillRecord], object],
) -> None:
    """Hand each execution IB streams (execDetails) to `on_fill` as a FillRecord (see
    fill_of; `now()` is its time when IB sent none with a timezone), and each commission
    report to `on_commission` as its execution's FillRecord with that commission (None when
    IB left it unset)."""

    def on_exec(trade: Trade, fill: Fill) -> None:
        on_fill(fill_of(ib, fill, received_at=now()))

    def on_report(trade: Trade, fill: Fill, report: CommissionReport) -> None:
        on_commission(fill_record(fill, report, received_at=now()))

    ib.execDetailsEvent += on_exec
    ib.commissionReportEvent += on_report
