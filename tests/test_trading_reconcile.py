"""Reconciliation, pure: the plan that makes broker, database and protective orders agree."""

from __future__ import annotations

from tests.exit_records import US, db_row, our_sell
from trading.exits import ExitConfig, held_position
from trading.model import BrokerPosition
from trading.reconcile import ReconcilePlan, format_table, plan_reconciliation, protection_table

CONFIG = ExitConfig()


def _cancelled(plan: ReconcilePlan) -> list[tuple[int, str]]:
    """(order id, reason) of each sell the plan cancels."""
    return [(c.order_id, c.reason) for c in plan.cancel]


def test_broker_position_unknown_to_database_is_adopted_and_protected():
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)], [], [], config=CONFIG, our_client_id=US
    )
    assert [p.symbol for p in plan.adopt] == ["AAPL"]
    assert [(p.symbol, q) for p, q in plan.protect] == [("AAPL", 100)]


def test_database_row_not_at_broker_is_closed_as_reconcile_and_orphan_sells_cancelled():
    orphan = our_sell("MSFT", "STP", 50, 90.0)
    plan = plan_reconciliation(
        [],
        [db_row("MSFT", 50)],
        [orphan],
        config=CONFIG,
        our_client_id=US,
        last_prices={"MSFT": 91.0},
    )
    assert [(c.symbol, c.exit_price, c.reason) for c in plan.close] == [("MSFT", 91.0, "RECONCILE")]
    assert _cancelled(plan) == [(orphan.order_id, "position_flat")]
    assert not plan.protect


def test_young_entry_is_neither_adopted_nor_closed_but_its_shares_are_protected_at_once():
    """The day trader died between its entry's fill and its row (a chaos day: 4.6 s without a
    stop while the grace ran): the shares the broker holds get their set now; the row is
    left to the day trader until the grace ends."""
    plan = plan_reconciliation(
        [BrokerPosition("NEW", 10, 5.0)],
        [db_row("ROW", 10)],
        [],
        config=CONFIG,
        our_client_id=US,
        young={"NEW", "ROW"},
    )
    assert plan.deferred == ("NEW",)
    assert not plan.adopt and not plan.close
    assert [(p.symbol, q) for p, q in plan.protect] == [("NEW", 10)]
    assert [p.symbol for p in plan.held] == ["NEW"]


def test_exactly_one_correct_set_is_kept():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    orders = [
        our_sell("AAPL", "LMT", 100, pos.target_price),
        our_sell("AAPL", "STP", 100, pos.backstop_price),
    ]
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [db_row("AAPL")],
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
        our_sell("AAPL", "LMT", 100, pos.target_price),
        our_sell("AAPL", "STP", 100, pos.stop_price),
    ]
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [db_row("AAPL")],
        orders,
        config=CONFIG,
        our_client_id=US,
    )
    assert plan.keep == ("AAPL",) and not plan.cancel and not plan.protect


def test_duplicate_sets_are_cancelled_and_replaced_by_one():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    orders = [
        our_sell("AAPL", "LMT", 100, pos.target_price, "g1"),
        our_sell("AAPL", "STP", 100, pos.backstop_price, "g1"),
        our_sell("AAPL", "STP", 100, pos.backstop_price, "g2"),
    ]
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [db_row("AAPL")],
        orders,
        config=CONFIG,
        our_client_id=US,
    )
    assert sorted(_cancelled(plan)) == sorted((o.order_id, "replaced") for o in orders)
    assert [(p.symbol, q) for p, q in plan.protect] == [("AAPL", 100)]


def test_partial_fill_resizes_row_and_protective_set_to_broker_quantity():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    orders = [our_sell("AAPL", "LMT", 100, pos.target_price)]
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 60, 100.0)],
        [db_row("AAPL", 100)],
        orders,
        config=CONFIG,
        our_client_id=US,
    )
    assert plan.resize == (("AAPL", 60),)
    assert [(p.symbol, q) for p, q in plan.protect] == [("AAPL", 60)]
    assert _cancelled(plan) == [(o.order_id, "replaced") for o in orders]


def test_other_clients_sells_reduce_what_we_protect_so_we_never_oversell():
    foreign = our_sell("AAPL", "LMT", 40, 105.0, "x", client=2)
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [db_row("AAPL")],
        [foreign],
        config=CONFIG,
        our_client_id=US,
    )
    assert [(p.symbol, q) for p, q in plan.protect] == [("AAPL", 60)]
    assert not plan.cancel  # another client's sell is never ours to cancel
    assert plan.alerts


def test_short_position_is_alerted_and_our_sells_cancelled():
    ours = our_sell("AAPL", "STP", 10, 90.0)
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", -10, 100.0)], [], [ours], config=CONFIG, our_client_id=US
    )
    assert _cancelled(plan) == [(ours.order_id, "position_short")]
    assert not plan.protect and "SHORT" in plan.alerts[0]


def test_busy_and_blocked_symbols_get_no_new_orders():
    positions = [BrokerPosition("BUSY", 10, 10.0), BrokerPosition("BLK", 10, 10.0)]
    rows = [db_row("BUSY", 10, 10.0), db_row("BLK", 10, 10.0)]
    plan = plan_reconciliation(
        positions, rows, [], config=CONFIG, our_client_id=US, busy={"BUSY"}, blocked={"BLK"}
    )
    assert not plan.protect and not plan.cancel


def test_protection_table_marks_a_correct_set_protected_and_prints() -> None:
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    bare = held_position("MSFT", 10, 50.0, CONFIG)
    orders = [
        our_sell("AAPL", "LMT", 100, pos.target_price),
        our_sell("AAPL", "STP", 100, pos.backstop_price),
    ]
    rows = protection_table([pos, bare], orders, US)
    assert [(r["symbol"], r["protected"]) for r in rows] == [("AAPL", True), ("MSFT", False)]
    text = format_table(rows)
    assert "AAPL" in text and "True" in text and "False" in text
    assert "(no open positions)" in format_table([])


def test_our_sells_are_cancelled_with_covered_by_others_when_another_client_sells_it_all():
    foreign = our_sell("AAPL", "LMT", 100, 105.0, "x", client=2)
    ours = our_sell("AAPL", "STP", 100, 98.6, "g1")
    plan = plan_reconciliation(
        [BrokerPosition("AAPL", 100, 100.0)],
        [db_row("AAPL")],
        [foreign, ours],
        config=CONFIG,
        our_client_id=US,
    )
    assert _cancelled(plan) == [(ours.order_id, "covered_by_others")] and not plan.protect
    assert plan.report()["cancelled_orders"] == [ours.order_ref]
