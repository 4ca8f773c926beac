"""Executions as the store records them: the one place that finds IB's commission for a fill.

IB sends an execution (execDetails) and its commission (commissionReport) as two messages.
ib_async puts the report on the Fill it keeps; a reqExecutions answer hands back fresh Fill
objects without it. Whichever arrives first, TradingDatabase.record_fill and
record_commission match them by execId.
"""

from __future__ import annotations

from datetime import datetime

from ib_async import IB, Fill

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
