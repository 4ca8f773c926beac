"""The exit manager's pure rules: reconciliation plan, protective set, exit decisions, EOD."""

from __future__ import annotations

import pytest

from exit_rules import (
    PURPOSE_BOT_STOP,
    PURPOSE_BOT_TARGET,
    BrokerPosition,
    ExitConfig,
    Quote,
    RejectTracker,
    WorkingOrder,
    average_price,
    bot_stop_fault,
    covered_quantity,
    exit_decision,
    exit_limit_price,
    held_position,
    plan_reconciliation,
    protective_orders,
    quote_fault,
    server_stop_price,
    stop_to_trigger,
    target_touch_time,
    through_market_stop_price,
)

CONFIG = ExitConfig()
US = 10  # our client id


def _row(symbol: str, qty: int = 100, entry: float = 100.0, **extra: object) -> dict:
    row = {
        "symbol": symbol,
        "quantity": qty,
        "entry_price": entry,
        "profit_target_price": None,
        "stop_loss_price": None,
        "agent": "day_trader",
    }
    row.update(extra)
    return row


def _sell(symbol: str, kind: str, qty: float, price: float, oca: str = "g1", client: int = US):
    return WorkingOrder(
        symbol=symbol,
        order_id=hash((symbol, kind, oca)) % 1000,
        client_id=client,
        perm_id=0,
        action="SELL",
        order_type=kind,
        quantity=qty,
        limit_price=price if kind == "LMT" else None,
        stop_price=price if kind == "STP" else None,
        oca_group=oca,
        order_ref=f"exit_manager-{symbol}-{kind}-{oca}",
    )


def _quote(last: float, at: float = 1000.0, bid: float | None = None, data_type: int = 1):
    return Quote("AAPL", last, bid if bid is not None else last - 0.01, last + 0.01, at, data_type)


# -- prices -------------------------------------------------------------------------------
def test_prices_from_entry_use_target_stop_and_a_lower_backstop():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    assert (pos.target_price, pos.stop_price, pos.backstop_price) == (101.8, 99.1, 98.6)
    assert pos.agent == "adopted"


def test_database_prices_win_over_broker_average_cost():
    row = _row("AAPL", entry=50.0, profit_target_price=51.0, stop_loss_price=49.5)
    pos = held_position("AAPL", 100, 50.37, CONFIG, db_row=row)
    assert (pos.entry_price, pos.target_price, pos.stop_price) == (50.0, 51.0, 49.5)
    assert pos.backstop_price < pos.stop_price
    assert pos.agent == "day_trader"


def test_prices_round_to_the_contracts_tick():
    pos = held_position("XYZ", 10, 123.456, CONFIG, tick=0.05)
    for price in (pos.target_price, pos.stop_price, pos.backstop_price):
        assert abs(price / 0.05 - round(price / 0.05)) < 1e-9


def test_protective_pair_is_one_oca_group_of_type_1_for_the_quantity():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    target, backstop = protective_orders(pos, 100, "oca-1", CONFIG, pos.backstop_price)
    assert (target.orderType, target.lmtPrice, backstop.orderType, backstop.auxPrice) == (
        "LMT",
        101.8,
        "STP",
        98.6,
    )
    for order in (target, backstop):
        assert (order.action, order.totalQuantity, order.ocaGroup, order.ocaType) == (
            "SELL",
            100,
            "oca-1",
            1,
        )
        assert order.tif == "GTC"


def test_exit_limit_gets_worse_with_each_attempt_and_stays_on_the_tick():
    quote = _quote(99.0, bid=98.99)
    first = exit_limit_price(quote, 1, CONFIG, 0.01)
    second = exit_limit_price(quote, 2, CONFIG, 0.01)
    assert first is not None and second is not None
    assert second < first <= 98.99
    assert exit_limit_price(None, 1, CONFIG, 0.01) is None


# -- reconciliation -------------------------------------------------------------------------
def test_broker_position_unknown_to_database_is_adopted_and_protected():
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)], [], [], config=CONFIG, our_client_id=US
    )
    assert [p.symbol for p in plan.adopt] == ["AAPL"]
    assert [(p.symbol, q) for p, q in plan.protect] == [("AAPL", 100)]


def test_database_row_not_at_broker_is_closed_as_reconcile_and_orphan_sells_cancelled():
    orphan = _sell("MSFT", "STP", 50, 90.0)
    plan = plan_reconciliation(
        [],
        [_row("MSFT", 50)],
        [orphan],
        config=CONFIG,
        our_client_id=US,
        last_prices={"MSFT": 91.0},
    )
    assert [(c.symbol, c.exit_price, c.reason) for c in plan.close] == [("MSFT", 91.0, "RECONCILE")]
    assert plan.cancel == (orphan,)
    assert not plan.protect


def test_young_entry_is_neither_adopted_nor_closed():
    plan = plan_reconciliation(
        [BrokerPosition("NEW", 10, 5.0)],
        [_row("ROW", 10)],
        [],
        config=CONFIG,
        our_client_id=US,
        young={"NEW", "ROW"},
    )
    assert plan.deferred == ("NEW",)
    assert not plan.adopt and not plan.close and not plan.protect


def test_exactly_one_correct_set_is_kept():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    orders = [
        _sell("AAPL", "LMT", 100, pos.target_price),
        _sell("AAPL", "STP", 100, pos.backstop_price),
    ]
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [_row("AAPL")],
        orders,
        config=CONFIG,
        our_client_id=US,
    )
    assert plan.keep == ("AAPL",) and not plan.cancel and not plan.protect


def test_a_set_whose_stop_sits_at_the_stop_loss_price_is_kept_not_replaced():
    """The server STP moves between its two prices by modification; reconciliation must not
    cancel and replace a set for sitting at the other one."""
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    orders = [
        _sell("AAPL", "LMT", 100, pos.target_price),
        _sell("AAPL", "STP", 100, pos.stop_price),
    ]
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [_row("AAPL")],
        orders,
        config=CONFIG,
        our_client_id=US,
    )
    assert plan.keep == ("AAPL",) and not plan.cancel and not plan.protect


def test_duplicate_sets_are_cancelled_and_replaced_by_one():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    orders = [
        _sell("AAPL", "LMT", 100, pos.target_price, "g1"),
        _sell("AAPL", "STP", 100, pos.backstop_price, "g1"),
        _sell("AAPL", "STP", 100, pos.backstop_price, "g2"),
    ]
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [_row("AAPL")],
        orders,
        config=CONFIG,
        our_client_id=US,
    )
    assert set(plan.cancel) == set(orders)
    assert [(p.symbol, q) for p, q in plan.protect] == [("AAPL", 100)]


def test_partial_fill_resizes_row_and_protective_set_to_broker_quantity():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    orders = [_sell("AAPL", "LMT", 100, pos.target_price)]
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 60, 100.0)],
        [_row("AAPL", 100)],
        orders,
        config=CONFIG,
        our_client_id=US,
    )
    assert plan.resize == (("AAPL", 60),)
    assert [(p.symbol, q) for p, q in plan.protect] == [("AAPL", 60)]
    assert plan.cancel == tuple(orders)


def test_other_clients_sells_reduce_what_we_protect_so_we_never_oversell():
    foreign = _sell("AAPL", "LMT", 40, 105.0, "x", client=2)
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [_row("AAPL")],
        [foreign],
        config=CONFIG,
        our_client_id=US,
    )
    assert [(p.symbol, q) for p, q in plan.protect] == [("AAPL", 60)]
    assert foreign not in plan.cancel
    assert plan.alerts


def test_short_position_is_alerted_and_our_sells_cancelled():
    ours = _sell("AAPL", "STP", 10, 90.0)
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", -10, 100.0)], [], [ours], config=CONFIG, our_client_id=US
    )
    assert plan.cancel == (ours,) and not plan.protect and "SHORT" in plan.alerts[0]


def test_busy_and_blocked_symbols_get_no_new_orders():
    positions = [BrokerPosition("BUSY", 10, 10.0), BrokerPosition("BLK", 10, 10.0)]
    rows = [_row("BUSY", 10, 10.0), _row("BLK", 10, 10.0)]
    plan = plan_reconciliation(
        positions, rows, [], config=CONFIG, our_client_id=US, busy={"BUSY"}, blocked={"BLK"}
    )
    assert not plan.protect and not plan.cancel


# -- quotes and decisions -------------------------------------------------------------------------
def test_stale_delayed_and_missing_quotes_are_faults():
    assert quote_fault(None, 0, CONFIG) == "no_quote"
    assert quote_fault(_quote(100, at=0), CONFIG.stale_tick_seconds + 1, CONFIG) == "stale"
    assert quote_fault(_quote(100, at=0, data_type=3), 0, CONFIG) == "delayed"
    assert (
        quote_fault(_quote(100, at=0, data_type=3), 0, ExitConfig(allow_delayed_data=True)) is None
    )
    assert quote_fault(_quote(float("nan"), at=0), 0, CONFIG) == "no_price"


def test_server_stop_sits_at_the_stop_loss_price_while_the_bot_cannot_act():
    """Delayed-only data left the bot's -0.9% stop blind and the server STP at -1.4%."""
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    assert (pos.stop_price, pos.backstop_price) == (99.1, 98.6)
    live = _quote(100.0, at=1000)
    assert bot_stop_fault(live, 1000, CONFIG) is None
    assert server_stop_price(pos, bot_stop_fault(live, 1000, CONFIG)) == 98.6
    allowed = ExitConfig(allow_delayed_data=True)  # the bot may act on it; still minutes old
    cases = {
        "no_quote": bot_stop_fault(None, 1000, CONFIG),
        "delayed": bot_stop_fault(_quote(100.0, at=1000, data_type=3), 1000, allowed),
        "stale": bot_stop_fault(live, 1000 + CONFIG.stale_tick_seconds + 1, CONFIG),
    }
    for reason, fault in cases.items():
        assert fault == reason
        assert server_stop_price(pos, fault) == pos.stop_price == 99.1


def test_stop_fires_at_or_below_the_bot_stop_only():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    assert exit_decision(pos, _quote(99.11), 1000, CONFIG, market_open=True) is None
    action = exit_decision(pos, _quote(99.1), 1000, CONFIG, market_open=True)
    assert (
        action is not None and action.purpose == PURPOSE_BOT_STOP and action.reason == "STOP_LOSS"
    )


def test_no_action_on_stale_price_or_outside_regular_hours():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    old = _quote(90.0, at=0)
    assert (
        exit_decision(pos, old, CONFIG.stale_tick_seconds + 0.5, CONFIG, market_open=True) is None
    )
    assert exit_decision(pos, _quote(90.0), 1000, CONFIG, market_open=False) is None


def test_target_touched_sells_only_after_the_grace_when_the_limit_did_not_fill():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    quote = _quote(102.0)
    touched = target_touch_time(pos, quote, None, 1000)
    assert touched == 1000
    assert (
        exit_decision(pos, quote, 1001, CONFIG, market_open=True, target_touched_at=touched) is None
    )
    action = exit_decision(
        pos,
        quote,
        1000 + CONFIG.target_fill_grace_s,
        CONFIG,
        market_open=True,
        target_touched_at=touched,
    )
    assert action is not None and action.purpose == PURPOSE_BOT_TARGET
    assert target_touch_time(pos, _quote(101.0), touched, 1005) is None


# -- rejects and fills ------------------------------------------------------------------------------
def test_reject_tracker_gives_up_once_at_the_limit():
    tracker = RejectTracker(limit=3)
    assert [tracker.record("AAPL") for _ in range(4)] == [False, False, True, False]
    assert tracker.is_blocked("AAPL") and not tracker.is_blocked("MSFT")


def test_average_price():
    assert average_price([(60, 10.0), (40, 11.0)]) == pytest.approx(10.4)
    assert average_price([]) is None


def test_protection_table_marks_a_correct_set_protected_and_prints() -> None:
    from exit_rules import format_table, protection_table

    pos = held_position("AAPL", 100, 100.0, CONFIG)
    bare = held_position("MSFT", 10, 50.0, CONFIG)
    orders = [
        _sell("AAPL", "LMT", 100, pos.target_price),
        _sell("AAPL", "STP", 100, pos.backstop_price),
    ]
    rows = protection_table([pos, bare], orders, US)
    assert [(r["symbol"], r["protected"]) for r in rows] == [("AAPL", True), ("MSFT", False)]
    text = format_table(rows)
    assert "AAPL" in text and "True" in text and "False" in text
    assert "(no open positions)" in format_table([])


def test_covered_quantity_counts_an_oca_group_once() -> None:
    def sell(qty: float, oca: str, action: str = "SELL") -> WorkingOrder:
        return WorkingOrder("AAPL", 1, 10, 1, action, "LMT", qty, 1.0, None, oca, "")

    assert covered_quantity([]) == 0
    assert covered_quantity([sell(50, "g1"), sell(50, "g1")]) == 50
    assert covered_quantity([sell(50, "g1"), sell(30, "g1"), sell(10, "")]) == 60
    assert covered_quantity([sell(50, "g1"), sell(20, "g2"), sell(5, "", "BUY")]) == 70


# -- the exit through the protective stop -------------------------------------------------------
def test_an_exit_moves_the_stop_only_when_it_is_one_oca_set_for_exactly_the_position() -> None:
    stop, target = _sell("AAPL", "STP", 100, 97.0), _sell("AAPL", "LMT", 100, 104.0)
    assert stop_to_trigger(100, [target, stop]) == stop
    assert stop_to_trigger(60, [target, stop]) is None  # the position changed: ask IB
    assert stop_to_trigger(100, [stop]) == stop  # the target already went (OCA)
    assert stop_to_trigger(None, [target, stop]) is None  # no position streamed yet
    assert stop_to_trigger(100, [target]) is None  # no stop: cancel and sell
    other = _sell("AAPL", "LMT", 100, 104.0, oca="g2")
    assert stop_to_trigger(100, [other, stop]) is None  # a sell outside its group
    loose = _sell("AAPL", "STP", 100, 97.0, oca="")
    assert stop_to_trigger(100, [loose]) is None
    two = _sell("AAPL", "STP", 100, 96.0, oca="g1")._replace(order_id=999)
    assert stop_to_trigger(100, [stop, two]) is None


def test_the_stop_is_moved_above_the_market_or_above_the_target_without_a_usable_quote() -> None:
    pos = held_position("AAPL", 100, 100.0, CONFIG, tick=0.01)
    quote = Quote("AAPL", last=98.9, bid=98.88, ask=98.92, time=0.0)
    price = through_market_stop_price(quote, pos, quote_usable=True, slippage_pct=0.2)
    assert price == pytest.approx(99.12)  # 98.92 * 1.002, up to the tick
    assert price > quote.ask
    stale = through_market_stop_price(quote, pos, quote_usable=False, slippage_pct=0.2)
    assert stale > pos.target_price  # the market is below it while the target is unfilled
    assert through_market_stop_price(None, pos, quote_usable=False, slippage_pct=0.0) == (
        pytest.approx(pos.target_price + 0.01)
    )
