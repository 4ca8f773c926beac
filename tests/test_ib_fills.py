"""ib.fills: a fill's commission is found wherever ib_async put it, or is None until it comes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sim_support import buy, client, gateway

from ib.fills import fill_of, follow_fills
from trading.model import FillRecord


def test_a_fill_from_req_executions_carries_the_commission_ib_reported_live(tmp_path: Path) -> None:
    """reqExecutions hands back fresh Fill objects whose own report is empty; the report is on
    the Fill ib_async kept from the live execDetails."""
    with gateway(tmp_path, symbols=("AAA",)) as gw, client(gw, 2) as ib:
        trade = buy(ib, "AAA", 300)
        ib.sleep(0.3)  # the report follows the execution
        [live] = trade.fills
        [fresh] = ib.reqExecutions()
        assert fresh is not live and fresh.commissionReport.execId == ""
        record = fill_of(ib, fresh)
        reported = gw.account.executions()[0]["commission"]
        assert record.commission == reported and record.exec_id == live.execution.execId
        assert (record.symbol, record.side, record.shares) == ("AAA", "BUY", 300)
        del ib.wrapper.fills[live.execution.execId]  # as if the report had not come yet
        assert fill_of(ib, fresh).commission is None


def test_followed_fills_and_commissions_reach_the_bot_as_records(tmp_path: Path) -> None:
    """execDetails arrives as a FillRecord, its commission report as the same execution's
    FillRecord with the commission: the bots never see ib_async's Fill."""
    fills: list[FillRecord] = []
    reports: list[FillRecord] = []
    with gateway(tmp_path, symbols=("AAA",)) as gw, client(gw, 2) as ib:
        follow_fills(ib, lambda: datetime.now(UTC), fills.append, reports.append)
        trade = buy(ib, "AAA", 200)
        ib.sleep(0.3)  # the report follows the execution
        [live] = trade.fills
    [record] = fills
    assert (record.symbol, record.side, record.shares) == ("AAA", "BUY", 200)
    assert record.exec_id == live.execution.execId
    assert record.order_ref == (trade.order.orderRef or "")
    [report] = reports
    assert report.exec_id == record.exec_id and report.order_ref == record.order_ref
    assert report.commission == live.commissionReport.commission > 0
