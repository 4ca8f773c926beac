"""ib.intents: the intent protocol on the simulated gateway (real ib_async, no mocks)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import pytest
from ib_async import IB, LimitOrder, OrderStatus, Stock, Trade
from ib_async.order import Order, TradeLogEntry

from ib.intents import (
    IntentOrders,
    LookupStatus,
    intent_state_for,
    is_rejected,
    modification_refused,
    rejection_of,
)
from ibsim.thread import GatewayThread
from observability import CANCELLED, FILLED, REJECTED, SUBMITTED, TradingDatabase
from tests.sim_support import gateway, sim_db, until


def test_intent_state_for_ib_statuses() -> None:
    assert intent_state_for("Submitted", 0, 10) == SUBMITTED
    assert intent_state_for("PreSubmitted", 0, 10) == SUBMITTED
    assert intent_state_for("Filled", 10, 0) == FILLED
    assert intent_state_for("Cancelled", 0, 10) == CANCELLED
    assert intent_state_for("Inactive", 0, 10) == REJECTED
    assert intent_state_for("PendingSubmit", 0, 10) is None


def test_a_reject_reads_as_rejected_though_ib_async_says_cancelled() -> None:
    trade = Trade(order=Order(), orderStatus=OrderStatus(status="Cancelled"))
    assert not is_rejected(trade)  # a plain cancel
    trade.log.append(
        TradeLogEntry(time=None, status="Cancelled", message="rejected", errorCode=201)
    )  # type: ignore[arg-type]
    assert is_rejected(trade)


def test_a_rejected_sell_is_handed_on_as_a_rejection_naming_each_refusal_once() -> None:
    """The exit manager counts each refusal once: a second refusal of the same order (a
    modification refused again) is a new `refusal`, a replay of the same status is not."""
    order = Order(action="SELL", orderRef="exit_manager-7")
    trade = Trade(contract=Stock("AAA", "SMART", "USD"), order=order,
                  orderStatus=OrderStatus(status="Cancelled"))  # fmt: skip
    trade.log.append(_entry("Cancelled"))
    assert rejection_of(trade) is None  # a plain cancel
    trade.log.append(_entry("Cancelled", "short sale refused", 201))
    first = rejection_of(trade)
    assert first == ("AAA", "SELL", "exit_manager-7", "exit_manager-7#1", "short sale refused")
    assert rejection_of(trade) == first
    trade.log.append(_entry("Cancelled", "refused again", 201))
    again = rejection_of(trade)
    assert again is not None and again.refusal != first.refusal
    assert again.reason == "refused again"


def _entry(status: str, message: str = "", code: int = 0) -> TradeLogEntry:
    return TradeLogEntry(time=None, status=status, message=message, errorCode=code)  # type: ignore[arg-type]


def test_a_refused_modification_is_no_reject_and_no_cancel_until_ib_says_so() -> None:
    """ib_async marks an order Cancelled when IB refuses its modification, though it still
    works at IB: that must not read as done, and once IB shows it working again a later
    cancel is a cancel, not a reject (the old 201 stayed in its log)."""
    trade = Trade(order=Order(), orderStatus=OrderStatus(status="Cancelled"))
    trade.log += [_entry("PreSubmitted"), _entry("PreSubmitted", "Modify"),
                  _entry("Cancelled", "Order rejected", 201)]  # fmt: skip
    assert modification_refused(trade)
    trade.orderStatus.status = "PreSubmitted"  # IB's open orders restored it
    trade.log.append(_entry("PreSubmitted"))
    assert not modification_refused(trade)
    trade.orderStatus.status = "Cancelled"  # then our cancel
    trade.log.append(_entry("Cancelled"))
    assert not modification_refused(trade) and not is_rejected(trade)
    acked = Trade(order=Order(), orderStatus=OrderStatus(status="Cancelled"))
    acked.log += [_entry("Submitted", "Modify"), _entry("Submitted", "Modified"),
                  _entry("Cancelled", "Order cancelled", 202)]  # fmt: skip
    assert not modification_refused(acked)  # accepted, then cancelled


@pytest.mark.parametrize("write_behind", [False, True])
def test_intent_states_follow_ib_and_a_reject_is_recorded_as_rejected(
    tmp_path: Path, write_behind: bool
) -> None:
    async def scenario(gw: GatewayThread) -> None:
        db = sim_db(gw)
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=7, timeout=5)
        try:
            orders = IntentOrders(ib, db, "tester", write_behind=write_behind)
            contract = Stock("AAPL", "SMART", "USD")
            working = orders.place(contract, LimitOrder("BUY", 10, 1.0), purpose="test")
            ref = working.order.orderRef
            assert db.get_order_intent(ref) is not None  # written before the send
            await until(lambda: working.orderStatus.status == "Submitted", 5, "submitted")
            assert orders.flush()
            assert db.get_order_intent(ref)["state"] == SUBMITTED
            ib.cancelOrder(working.order)
            await until(working.isDone, 5, "cancelled")
            assert orders.flush()
            assert db.get_order_intent(ref)["state"] == CANCELLED

            await asyncio.to_thread(gw.faults.reject_next_order, "test reject", 7)
            refused = orders.place(contract, LimitOrder("BUY", 10, 1.0), purpose="test")
            await until(refused.isDone, 5, "rejected")
            assert orders.flush()
            row = db.get_order_intent(refused.order.orderRef)
            assert row["state"] == REJECTED and "test reject" in (row["note"] or "")
            # Repeats write nothing: the intent log has one line per state.
            states = [e["state"] for e in db.get_intent_log(ref)]
            assert states == ["PENDING_SUBMIT", "SUBMITTED", "CANCELLED"]

            # lookup/recover by orderRef: the cancelled one is DONE, an unknown is NOT_FOUND.
            assert (await orders.lookup(ref)).status is LookupStatus.DONE
            assert (await orders.lookup("tester-nothing")).status is LookupStatus.NOT_FOUND
        finally:
            ib.disconnect()

    with gateway(tmp_path, symbols=("AAPL",), trading_date=date(2026, 11, 25)) as gw:
        asyncio.run(asyncio.wait_for(scenario(gw), 60))


def test_unsent_order_is_not_left_pending(tmp_path: Path) -> None:
    db = TradingDatabase(tmp_path / "t.db")
    orders = IntentOrders(IB(), db, "tester")  # never connected
    with pytest.raises(ConnectionError):
        orders.place(Stock("AAPL", "SMART", "USD"), LimitOrder("BUY", 1, 1.0), purpose="test")
    [intent] = db.get_intents_by_date(db.clock.today_str())
    assert intent["state"] == CANCELLED and intent["note"].startswith("not sent")
