"""Orders end to end: fills, modify, cancel, brackets, OCA, short rejects, two clients."""

from __future__ import annotations

from datetime import time as dtime

import pytest
from ib_async import ExecutionFilter, LimitOrder, MarketOrder, Order, StopLimitOrder, StopOrder

from tests.sim_support import (  # noqa: F401
    buy,
    client,
    collect_errors,
    ibsim_gateway,
    no_decode_errors_or_leaks,
    stock,
    wait_for,
)


def test_two_clients_one_account_protective_stop_triggers_and_fills() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as trader, client(gw, 10) as exits:
        positions_seen: list[float] = []
        exits.positionEvent += lambda p: positions_seen.append(p.position)
        portfolio_seen: list[float] = []
        exits.updatePortfolioEvent += lambda item: portfolio_seen.append(item.position)

        entry = buy(trader, "AAA", 200, order_ref="entry-AAA-1")
        wait_for(
            lambda: 200.0 in positions_seen and 200.0 in portfolio_seen,
            what="position on client 10",
            ib=exits,
        )
        assert entry.fills[0].commissionReport.commission == 1.0
        assert entry.fills[0].execution.orderRef == "entry-AAA-1"

        last = gw.quote("AAA").last
        stop_price = round(last - 1.0, 2)
        stop = exits.placeOrder(
            stock(exits, "AAA"), StopOrder("SELL", 200, stop_price, orderRef="stop-AAA-1")
        )
        wait_for(lambda: stop.orderStatus.status == "PreSubmitted", what="stop accepted", ib=exits)
        assert not trader.openTrades(), "client 2 must not see client 10's order"

        gw.faults.set_price("AAA", round(last - 2.0, 2))
        wait_for(lambda: stop.orderStatus.status == "Filled", what="stop filled", ib=exits)
        fill = stop.fills[0]
        assert fill.execution.side == "SLD" and fill.execution.orderRef == "stop-AAA-1"
        assert fill.execution.price <= stop_price
        wait_for(
            lambda: stop.fills[0].commissionReport.commission > 0,
            what="commission report",
            ib=exits,
        )
        assert fill.commissionReport.realizedPNL < 0
        wait_for(lambda: positions_seen[-1] == 0.0, what="flat position on client 10", ib=exits)
        wait_for(lambda: not trader.positions(), what="flat position on client 2", ib=trader)
        assert trader.fills()[-1].execution.orderRef == "entry-AAA-1"  # no foreign fills
        state = gw.account.state()
        assert state["positions"] == []
        assert {e["order_ref"] for e in state["executions"]} == {"entry-AAA-1", "stop-AAA-1"}
        assert state["commissions"] == 2.0


def test_limit_rests_then_fills_after_modify_at_the_ask() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        contract = stock(ib, "BBB")
        price = gw.quote("BBB").ask
        order = LimitOrder("BUY", 100, round(price * 0.5, 2), orderRef="lmt-1")
        trade = ib.placeOrder(contract, order)
        wait_for(lambda: trade.orderStatus.status == "Submitted", what="resting limit", ib=ib)
        ib.sleep(0.2)
        assert trade.orderStatus.filled == 0
        order.lmtPrice = round(price * 1.2, 2)
        ib.placeOrder(contract, order)
        wait_for(lambda: trade.orderStatus.status == "Filled", what="modified limit filled", ib=ib)
        assert trade.orderStatus.avgFillPrice <= order.lmtPrice
        assert any(entry.message == "Modified" for entry in trade.log)
        assert gw.account.positions() == {"BBB": 100.0}


def test_cancel_202_unknown_10147_and_filled_10148() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        contract = stock(ib, "CCC")
        far = round(gw.quote("CCC").bid * 0.5, 2)
        trade = ib.placeOrder(contract, LimitOrder("BUY", 10, far))
        wait_for(lambda: trade.orderStatus.status == "Submitted", ib=ib)
        ib.cancelOrder(trade.order)
        wait_for(lambda: trade.orderStatus.status == "Cancelled", what="cancelled", ib=ib)
        assert (trade.order.orderId, 202) in [(r, c) for r, c, _ in errors]

        ib.client.cancelOrder(999_999, "")
        wait_for(lambda: any(c == 10147 for _, c, _ in errors), what="10147", ib=ib)
        filled = buy(ib, "CCC", 10)
        ib.client.cancelOrder(filled.order.orderId, "")
        wait_for(lambda: any(c == 10148 for _, c, _ in errors), what="10148", ib=ib)


def test_sell_without_position_rejected_201_when_no_shorting() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        trade = ib.placeOrder(stock(ib, "BYND"), MarketOrder("SELL", 100))
        wait_for(lambda: any(c == 201 for _, c, _ in errors), what="201", ib=ib)
        wait_for(lambda: trade.orderStatus.status == "Cancelled", ib=ib)
        assert not trade.fills and gw.account.positions() == {}


def test_shorting_allowed_when_option_off() -> None:
    with ibsim_gateway(no_shorting=False) as gw, client(gw, 2) as ib:
        trade = ib.placeOrder(stock(ib, "BYND"), MarketOrder("SELL", 100))
        wait_for(lambda: trade.orderStatus.status == "Filled", ib=ib)
        assert gw.account.positions() == {"BYND": -100.0}


def test_bynd_loop_second_exit_is_rejected_at_fill_not_shorted() -> None:
    """A target and a stop both selling the same shares (no OCA): the second one must not short."""
    with ibsim_gateway() as gw, client(gw, 10) as ib:
        errors = collect_errors(ib)
        buy(ib, "BYND", 100)
        contract = stock(ib, "BYND")
        last = gw.quote("BYND").last
        target = ib.placeOrder(
            contract, LimitOrder("SELL", 100, round(last + 3, 2), orderRef="target")
        )
        stop = ib.placeOrder(contract, StopOrder("SELL", 100, round(last - 3, 2), orderRef="stop"))
        wait_for(
            lambda: (
                stop.orderStatus.status == "PreSubmitted"
                and target.orderStatus.status == "Submitted"
            ),
            ib=ib,
        )
        gw.faults.set_price("BYND", round(last - 4, 2))
        wait_for(lambda: stop.orderStatus.status == "Filled", what="stop filled", ib=ib)
        gw.faults.set_price("BYND", round(last + 4, 2))
        wait_for(lambda: target.orderStatus.status == "Cancelled", what="target rejected", ib=ib)
        assert (target.order.orderId, 201) in [(r, c) for r, c, _ in errors]
        assert gw.account.positions() == {}


def test_oca_group_fill_cancels_the_other_exit() -> None:
    with ibsim_gateway() as gw, client(gw, 10) as ib:
        buy(ib, "AAA", 100)
        contract = stock(ib, "AAA")
        last = gw.quote("AAA").last
        target = LimitOrder("SELL", 100, round(last + 3, 2), ocaGroup="exit-AAA", ocaType=1)
        stop = StopOrder("SELL", 100, round(last - 3, 2), ocaGroup="exit-AAA", ocaType=1)
        t_trade, s_trade = ib.placeOrder(contract, target), ib.placeOrder(contract, stop)
        wait_for(lambda: s_trade.orderStatus.status == "PreSubmitted", ib=ib)
        gw.faults.set_price("AAA", round(last + 4, 2))
        wait_for(lambda: t_trade.orderStatus.status == "Filled", what="target filled", ib=ib)
        wait_for(
            lambda: s_trade.orderStatus.status == "Cancelled", what="stop cancelled by OCA", ib=ib
        )
        assert t_trade.orderStatus.avgFillPrice >= target.lmtPrice
        assert gw.account.positions() == {}


def test_bracket_children_held_until_transmit_then_implicit_oca() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        contract = stock(ib, "CCC")
        ask = gw.quote("CCC").ask
        parent, take_profit, stop_loss = ib.bracketOrder(
            "BUY", 100, round(ask * 1.05, 2), round(ask * 1.2, 2), round(ask * 0.8, 2)
        )
        p_trade = ib.placeOrder(contract, parent)
        tp_trade = ib.placeOrder(contract, take_profit)
        ib.sleep(0.2)
        assert gw.account.open_orders() == [] and p_trade.orderStatus.status == "PendingSubmit"
        sl_trade = ib.placeOrder(contract, stop_loss)  # transmit=True sends the whole bracket
        wait_for(lambda: p_trade.orderStatus.status == "Filled", what="parent filled", ib=ib)
        wait_for(lambda: tp_trade.orderStatus.status == "Submitted", what="target working", ib=ib)
        assert sl_trade.orderStatus.status == "PreSubmitted"
        gw.faults.set_price("CCC", round(ask * 1.25, 2))
        wait_for(lambda: tp_trade.orderStatus.status == "Filled", what="target filled", ib=ib)
        wait_for(lambda: sl_trade.orderStatus.status == "Cancelled", what="stop cancelled", ib=ib)
        assert gw.account.positions() == {}


def test_cancel_parent_cancels_children() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        contract = stock(ib, "AAA")
        bid = gw.quote("AAA").bid
        parent, tp, sl = ib.bracketOrder(
            "BUY", 10, round(bid * 0.5, 2), bid * 2, round(bid * 0.4, 2)
        )
        trades = [ib.placeOrder(contract, o) for o in (parent, tp, sl)]
        wait_for(lambda: trades[0].orderStatus.status == "Submitted", ib=ib)
        ib.cancelOrder(parent)
        wait_for(
            lambda: all(t.orderStatus.status == "Cancelled" for t in trades),
            what="all cancelled",
            ib=ib,
        )


def test_global_cancel_cancels_every_clients_orders() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as a, client(gw, 10) as b:
        far = round(gw.quote("AAA").bid * 0.5, 2)
        ta = a.placeOrder(stock(a, "AAA"), LimitOrder("BUY", 10, far))
        tb = b.placeOrder(stock(b, "AAA"), LimitOrder("BUY", 10, far))
        wait_for(lambda: ta.orderStatus.status == "Submitted", ib=a)
        wait_for(lambda: tb.orderStatus.status == "Submitted", ib=b)
        b.reqGlobalCancel()
        wait_for(lambda: tb.orderStatus.status == "Cancelled", ib=b)
        wait_for(lambda: ta.orderStatus.status == "Cancelled", ib=a)
        assert gw.account.open_orders() == []


def test_ioc_cancels_what_does_not_fill_at_once() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        contract = stock(ib, "BBB")
        quote = gw.quote("BBB")
        passive = ib.placeOrder(
            contract, LimitOrder("BUY", 10, round(quote.bid * 0.5, 2), tif="IOC")
        )
        wait_for(lambda: passive.orderStatus.status == "Cancelled", ib=ib)
        assert not passive.fills
        marketable = ib.placeOrder(
            contract, LimitOrder("BUY", 10, round(quote.ask * 1.1, 2), tif="IOC")
        )
        wait_for(lambda: marketable.orderStatus.status == "Filled", ib=ib)


def test_trailing_stop_follows_last_then_triggers() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        buy(ib, "AAA", 50)
        contract = stock(ib, "AAA")
        last = gw.quote("AAA").last
        trail = Order(action="SELL", totalQuantity=50, orderType="TRAIL", auxPrice=1.0)
        trade = ib.placeOrder(contract, trail)
        wait_for(lambda: trade.orderStatus.status == "PreSubmitted", ib=ib)
        high = round(last + 5, 2)
        gw.faults.set_price("AAA", high)
        (row,) = gw.account.open_orders()
        assert row["trail_stop_price"] >= high - 1.0 - 0.5
        assert trade.orderStatus.status == "PreSubmitted"
        gw.faults.set_price("AAA", round(high - 2.0, 2))
        wait_for(lambda: trade.orderStatus.status == "Filled", what="trail filled", ib=ib)
        assert gw.account.positions() == {}


def test_stop_limit_triggers_then_fills_as_limit() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        buy(ib, "BBB", 30)
        contract = stock(ib, "BBB")
        last = gw.quote("BBB").last
        order = StopLimitOrder("SELL", 30, round(last - 2.0, 2), round(last - 1.0, 2))
        trade = ib.placeOrder(contract, order)
        wait_for(lambda: trade.orderStatus.status == "PreSubmitted", ib=ib)
        gw.faults.set_price("BBB", round(last - 1.2, 2))
        wait_for(lambda: trade.orderStatus.status == "Filled", what="stop limit filled", ib=ib)
        assert trade.orderStatus.avgFillPrice >= order.lmtPrice


@pytest.mark.parametrize("outside_rth, filled", [(False, False), (True, True)])
def test_pre_market_fills_only_with_outside_rth(outside_rth: bool, filled: bool) -> None:
    with ibsim_gateway(start=dtime(8, 0)) as gw, client(gw, 2) as ib:
        order = MarketOrder("BUY", 10, outsideRth=outside_rth)
        trade = ib.placeOrder(stock(ib, "AAA"), order)
        if filled:
            wait_for(lambda: trade.orderStatus.status == "Filled", ib=ib)
        else:
            wait_for(lambda: trade.orderStatus.status == "PreSubmitted", ib=ib)
            ib.sleep(0.3)
            assert trade.orderStatus.filled == 0


def test_day_orders_expire_at_the_close_gtc_stays() -> None:
    with ibsim_gateway(start=dtime(15, 59, 50), speed=30) as gw, client(gw, 2) as ib:
        contract = stock(ib, "AAA")
        far = round(gw.quote("AAA").bid * 0.5, 2)
        day = ib.placeOrder(contract, LimitOrder("BUY", 10, far, tif="DAY"))
        gtc = ib.placeOrder(contract, LimitOrder("BUY", 10, far, tif="GTC"))
        wait_for(lambda: day.orderStatus.status == "Cancelled", what="DAY order expired", ib=ib)
        assert gtc.orderStatus.status == "Submitted"


def test_order_queries_open_all_completed_executions() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as a, client(gw, 10) as b:
        buy(a, "AAA", 10, order_ref="a-entry")
        buy(b, "BBB", 10, order_ref="b-entry")
        far = round(gw.quote("CCC").bid * 0.5, 2)
        resting = b.placeOrder(stock(b, "CCC"), LimitOrder("BUY", 10, far, orderRef="b-rest"))
        wait_for(lambda: resting.orderStatus.status == "Submitted", ib=b)
        assert [t.order.orderRef for t in a.reqAllOpenOrders()] == ["b-rest"]
        assert a.reqOpenOrders() == []
        completed = a.reqCompletedOrders(apiOnly=True)
        assert {t.order.orderRef for t in completed} >= {"a-entry", "b-entry"}
        fills = a.reqExecutions(ExecutionFilter(symbol="AAA"))
        assert [f.execution.orderRef for f in fills] == ["a-entry"]
        assert a.reqExecutions(ExecutionFilter(symbol="BBB")) == []  # other client's fill


def test_commission_per_share_with_minimum() -> None:
    with ibsim_gateway(initial_cash=1e7) as gw, client(gw, 2) as ib:
        small = buy(ib, "AAA", 100)
        large = buy(ib, "AAA", 1000)
        wait_for(lambda: large.fills and large.fills[0].commissionReport.execId, ib=ib)
        assert small.fills[0].commissionReport.commission == 1.0
        assert large.fills[0].commissionReport.commission == pytest.approx(5.0)
        assert gw.account.state()["commissions"] == pytest.approx(6.0)


def test_what_if_order_reports_margin_without_trading() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        state = ib.whatIfOrder(stock(ib, "AAA"), MarketOrder("BUY", 100))
        assert float(state.initMarginChange) > 0
        assert gw.account.open_orders() == [] and gw.account.positions() == {}


def test_partial_fills_take_the_displayed_size_commission_minimum_once() -> None:
    with ibsim_gateway(partial_fills=True, initial_cash=1e8) as gw, client(gw, 2) as ib:
        trade = ib.placeOrder(stock(ib, "AAA"), MarketOrder("BUY", 5000))
        wait_for(
            lambda: trade.orderStatus.status == "Filled", timeout=10, what="filled in pieces", ib=ib
        )
        wait_for(lambda: all(f.commissionReport.execId for f in trade.fills), ib=ib)
        assert len(trade.fills) > 1
        assert sum(f.execution.shares for f in trade.fills) == 5000
        assert sum(f.commissionReport.commission for f in trade.fills) == pytest.approx(25.0)
        assert gw.account.positions() == {"AAA": 5000.0}


def test_slippage_ticks_worsen_market_fills() -> None:
    with ibsim_gateway(slippage_ticks=2, speed=0.001) as gw, client(gw, 2) as ib:
        contract = stock(ib, "BBB")
        quote = gw.quote("BBB")
        trade = ib.placeOrder(contract, MarketOrder("BUY", 10))
        wait_for(lambda: trade.orderStatus.status == "Filled", ib=ib)
        assert trade.orderStatus.avgFillPrice == pytest.approx(quote.ask + 0.02)
