"""ib_async objects <-> the trading core's records, and IB's unset numbers, in one module."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ib_async import (
    CommissionReport,
    Execution,
    Fill,
    LimitOrder,
    OrderStatus,
    Position,
    Stock,
    StopOrder,
    Ticker,
    Trade,
)

from ib import convert
from trading.model import ExitIntent, ProtectIntent

UNSET_DOUBLE = 1.7976931348623157e308
UNSET_INTEGER = 2147483647
WHEN = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def test_unset_ib_numbers_are_none_and_real_ones_pass() -> None:
    assert convert.ib_number(UNSET_DOUBLE) is None
    assert convert.ib_number(math.nan) is None
    assert convert.ib_number(None) is None
    assert convert.ib_number(12.34) == 12.34
    assert convert.ib_integer(UNSET_INTEGER) is None
    assert convert.ib_integer(7) == 7


def test_working_order_reads_remaining_quantity_and_unset_prices() -> None:
    order = StopOrder("SELL", 100, 98.6, orderId=5, clientId=10, permId=77)
    order.ocaGroup, order.orderRef = "g1", "exit_manager-AAPL-1"
    assert order.lmtPrice == UNSET_DOUBLE  # what ib_async leaves in an unset price
    trade = Trade(Stock("AAPL", "SMART", "USD"), order, OrderStatus(filled=40, remaining=60))
    working = convert.working_order(trade)
    assert (working.symbol, working.order_id, working.client_id, working.perm_id) == (
        "AAPL",
        5,
        10,
        77,
    )
    assert (working.order_type, working.quantity, working.limit_price, working.stop_price) == (
        "STP",
        60.0,
        None,
        98.6,
    )
    assert (working.oca_group, working.order_ref) == ("g1", "exit_manager-AAPL-1")


def test_quote_is_stamped_with_the_last_trade_time_when_it_is_older() -> None:
    ticker = Ticker(contract=Stock("AAPL"))
    ticker.last, ticker.bid, ticker.ask, ticker.marketDataType = 100.0, 99.99, 100.01, 3
    ticker.lastTimestamp = datetime.fromtimestamp(900.0, UTC)
    quote = convert.quote(ticker, received_at=1000.0)
    assert (quote.symbol, quote.last, quote.bid, quote.ask, quote.time, quote.data_type) == (
        "AAPL",
        100.0,
        99.99,
        100.01,
        900.0,
        3,
    )
    ticker.lastTimestamp = None
    assert convert.quote(ticker, received_at=1000.0).time == 1000.0


def test_broker_position_and_fill_record_with_and_without_its_commission() -> None:
    position = Position("DU1", Stock("AAPL"), 100.0, 50.25)
    assert convert.broker_position(position) == ("AAPL", 100.0, 50.25)
    execution = Execution(execId="e1", time=WHEN, side="SLD", shares=100, price=101.8,
                          orderRef="exit_manager-AAPL-1")  # fmt: skip
    fill = Fill(Stock("AAPL"), execution, CommissionReport(), WHEN)
    record = convert.fill_record(fill)
    assert record == ("AAPL", "SELL", 100.0, 101.8, WHEN, "e1", "exit_manager-AAPL-1", None)
    report = CommissionReport(execId="e1", commission=1.0)
    assert convert.fill_record(fill, report).commission == 1.0
    other = CommissionReport(execId="e2", commission=1.0)
    assert convert.fill_record(fill, other).commission is None  # another execution's report


def test_protect_intent_becomes_one_oca_pair_for_its_quantity() -> None:
    intent = ProtectIntent("AAPL", 100, 101.8, 98.6, "g1", "new_position", "GTC")
    target, stop = convert.protective_orders(intent)
    assert isinstance(target, LimitOrder) and isinstance(stop, StopOrder)
    assert (target.action, target.totalQuantity, target.lmtPrice) == ("SELL", 100, 101.8)
    assert (stop.action, stop.totalQuantity, stop.auxPrice) == ("SELL", 100, 98.6)
    for order in (target, stop):
        assert (order.ocaGroup, order.ocaType, order.tif, order.outsideRth) == (
            "g1",
            1,
            "GTC",
            False,
        )


def test_exit_intent_is_an_ioc_limit_or_without_a_price_a_day_market_sell() -> None:
    limit = convert.exit_order(ExitIntent("AAPL", 100, "BOT_STOP", "STOP_LOSS", 98.9))
    assert (limit.orderType, limit.action, limit.totalQuantity, limit.lmtPrice, limit.tif) == (
        "LMT",
        "SELL",
        100,
        98.9,
        "IOC",
    )
    market = convert.exit_order(ExitIntent("AAPL", 100, "EOD_FLATTEN", "EOD"))
    assert (market.orderType, market.totalQuantity, market.tif) == ("MKT", 100, "DAY")


def test_an_enter_intent_becomes_a_regular_hours_day_limit_buy_for_the_account() -> None:
    from ib.convert import entry_order
    from trading.model import EnterIntent

    order = entry_order(EnterIntent("ABC", 620, 20.13, "standard", "enter"), "DU123")
    assert (order.action, order.orderType, order.totalQuantity, order.lmtPrice) == (
        "BUY",
        "LMT",
        620,
        20.13,
    )
    assert (order.tif, order.account, order.outsideRth) == ("DAY", "DU123", False)
