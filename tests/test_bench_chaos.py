"""bench_chaos's checking functions on hand-made gateway states (pure: no gateway, no bots)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.bench_chaos import (
    Interval,
    Sample,
    double_entries,
    order_refs_sent_twice,
    position_violations,
    protective_set_overlaps,
    random_faults_due,
    restart_times,
    timeline_samples,
    unprotected_intervals,
    working_set_problems,
)


def order(order_id: int, ref: str, action: str, order_type: str, quantity: float,
          received: float, completed: float | None = None, *, state: str = "SUBMITTED",
          symbol: str = "AMD", oca: str = "", filled: float = 0.0,
          client: int = 10) -> dict[str, Any]:  # fmt: skip
    return {
        "order_id": order_id, "order_ref": ref, "action": action, "order_type": order_type,
        "quantity": quantity, "received_time": received, "completed_time": completed,
        "state": state if completed is None else "FILLED", "symbol": symbol,
        "oca_group": oca, "filled": filled, "client_id": client,
    }  # fmt: skip


def fill(order_id: int, ref: str, side: str, shares: float, at: float, symbol: str = "AMD",  # type: ignore[no-untyped-def]
         client: int = 10):  # fmt: skip
    return {"exec_id": f"e{order_id}-{at}", "order_id": order_id, "order_ref": ref, "side": side,
            "shares": shares, "time": at, "symbol": symbol, "client_id": client}  # fmt: skip


def state_of(orders: list[dict[str, Any]], executions: list[dict[str, Any]]) -> dict[str, Any]:
    working = [o for o in orders if o["completed_time"] is None]
    done = [o for o in orders if o["completed_time"] is not None]
    return {"open_orders": working, "completed_orders": done, "executions": executions}


def test_position_is_unprotected_from_its_fill_until_a_stop_covers_all_of_it():
    samples = [
        Sample(0.0, {}, {}),
        Sample(1.0, {"AMD": 100}, {}),  # entry filled, no stop yet
        Sample(1.2, {"AMD": 100}, {"AMD": 60}),  # a stop for part of it is not protection
        Sample(1.5, {"AMD": 100}, {"AMD": 100}),
        Sample(3.0, {"AMD": 100}, {}),  # set cancelled for a bot exit
        Sample(3.1, {}, {}),  # sold
        Sample(4.0, {"MSFT": 10}, {}),  # still naked at the end
    ]
    found = unprotected_intervals(samples)
    assert found == [
        Interval("AMD", 1.0, 1.5, 100),
        Interval("AMD", 3.0, 3.1, 100),
        Interval("MSFT", 4.0, 4.0, 10, open_at_end=True),
    ]
    assert found[0].seconds == pytest.approx(0.5)


def test_exact_intervals_from_the_gateways_log_entry_then_stop_then_bot_exit():
    # BUY fills at 100.0; the STP arrives 0.4 s later; it is cancelled at 200.0 and the exit
    # sell fills 0.05 s after. A lone target LMT (its STP never sent) does not protect.
    orders = [
        order(1, "dt-1", "BUY", "LMT", 100, 99.9, 100.0),
        order(2, "em-stop", "SELL", "STP", 100, 100.4, 200.0, oca="g1"),
        order(3, "em-target", "SELL", "LMT", 100, 100.3, 200.0, oca="g1"),
        order(4, "em-exit", "SELL", "LMT", 100, 200.04, 200.05),
    ]
    orders[1]["state"] = orders[2]["state"] = "CANCELLED"
    executions = [fill(1, "dt-1", "BOT", 100, 100.0), fill(4, "em-exit", "SLD", 100, 200.05)]
    found = unprotected_intervals(timeline_samples(state_of(orders, executions)))
    assert [(i.symbol, round(i.start, 2), round(i.end, 2)) for i in found] == [
        ("AMD", 100.0, 100.4),
        ("AMD", 200.0, 200.05),
    ]


def test_stop_that_fills_in_part_covers_only_what_it_has_left():
    orders = [order(2, "em-stop", "SELL", "STP", 100, 10.0, None, state="SUBMITTED", filled=40)]
    executions = [fill(1, "dt-1", "BOT", 100, 5.0), fill(2, "em-stop", "SLD", 40, 20.0)]
    # 60 left to sell against a position of 60: covered again once the partial fill is in.
    found = unprotected_intervals(timeline_samples(state_of(orders, executions)))
    assert [(i.start, i.end) for i in found] == [(5.0, 10.0)]


def test_order_ref_on_two_order_ids_is_a_duplicate_but_a_modification_is_not():
    orders = [
        order(5, "em-stop-1", "SELL", "STP", 10, 1.0),
        order(5, "em-stop-1", "SELL", "STP", 10, 1.0),  # the same order, modified in place
        order(7, "dt-entry-1", "BUY", "LMT", 10, 2.0, 2.1),
        order(9, "dt-entry-1", "BUY", "LMT", 10, 5.0, 5.1),  # sent again after a restart
    ]
    assert order_refs_sent_twice(orders) == ["dt-entry-1 on orders [7, 9]"]


def test_second_entry_of_a_symbol_in_one_day_is_found():
    executions = [
        fill(1, "dt-a", "BOT", 50, 1.0),
        fill(1, "dt-a", "BOT", 50, 1.5),  # one order filling in two parts is one entry
        fill(2, "em-x", "SLD", 100, 9.0),
        fill(3, "dt-b", "BOT", 20, 20.0),
    ]
    assert double_entries(executions) == ["AMD: ['dt-a', 'dt-b']"]


def test_sell_beyond_the_position_and_the_short_it_makes_are_found():
    executions = [
        fill(1, "dt-a", "BOT", 100, 1.0),
        fill(2, "em-stop", "SLD", 100, 5.0),
        fill(3, "em-target", "SLD", 100, 5.5),  # the BYND loop: a second exit of the same shares
        fill(4, "dt-b", "BOT", 10, 6.0, symbol="MSFT"),
        fill(5, "em-exit", "SLD", 10, 7.0, symbol="MSFT"),
    ]
    shorts, oversells = position_violations(executions)
    assert shorts == ["AMD"]
    assert oversells == ["AMD: sold 100 holding 0"]


def test_two_protective_sets_working_at_once_are_found_one_after_the_other_is_fine():
    orders = [
        order(1, "set1-stop", "SELL", "STP", 10, 1.0, 5.0, oca="g1"),
        order(2, "set1-target", "SELL", "LMT", 10, 1.0, 5.0, oca="g1"),
        order(3, "set2-stop", "SELL", "STP", 10, 5.0, 9.0, oca="g2"),  # after set 1: fine
        order(4, "set3-stop", "SELL", "STP", 10, 8.0, None, oca="g3"),  # beside set 2
    ]
    assert protective_set_overlaps(orders) == ["AMD: set2-stop and set3-stop"]
    working = [o for o in orders if o["completed_time"] is None or o["order_id"] == 3]
    for o in working:
        o["state"] = "SUBMITTED"
    assert working_set_problems(working) == ["AMD: 2 stops, OCA groups ['g2', 'g3']"]


def test_restart_times_run_from_the_failure_and_a_kill_during_the_outage_is_one_outage():
    found = restart_times(
        "exit_manager",
        failures=[10.0, 10.4, 50.0],  # the second kill hit the restarting process
        starts=[10.5, 10.9, 50.3],
        ready=[11.6, 51.0],
    )
    assert [(r.failed_at, r.to_process, r.to_ready) for r in found] == [
        (10.0, pytest.approx(0.5), pytest.approx(1.6)),
        (50.0, pytest.approx(0.3), pytest.approx(1.0)),
    ]


def test_a_promoted_standby_restarts_at_its_promotion_and_is_ready_at_its_own_reconciliation():
    """The standby reconciles when the kernel frees the lock, often before the supervisor's
    promotion: that reconciliation is its ready time, not the next one after the promotion."""
    found = restart_times(
        "exit_manager",
        failures=[10.0, 50.0],
        starts=[50.4],  # no standby the second time: a new process
        ready=[10.08, 30.0, 51.2],
        promotions=[10.2],
    )
    assert [(r.to_process, r.to_ready, r.by_standby) for r in found] == [
        (pytest.approx(0.2), pytest.approx(0.08), True),
        (pytest.approx(0.4), pytest.approx(1.2), False),
    ]


def test_random_faults_make_up_for_aimed_kills_that_never_land_so_the_budget_is_spent():
    """A day with no worst moments (no exits, few fills) fell short of its fault budget: the
    default run of 200 planned 182."""
    budget, share = 66, 0.35
    by_the_flatten = random_faults_due(budget, 0, share, flattening=False)
    assert by_the_flatten >= budget * (1 - share / 2)  # half the aimed share made up at once
    assert random_faults_due(budget, 0, share, flattening=True) == budget
    # Aimed kills on pace: random faults keep to their own share.
    on_pace = random_faults_due(budget, round(budget * share), share, flattening=False)
    assert on_pace == pytest.approx(budget * (1 - share))


def test_a_fill_of_another_clients_order_with_the_same_id_leaves_our_stop_covering():
    """Order ids are per client: the day trader's buy 116 of another symbol filling counted
    against the exit manager's STP 116, and a protected position read as naked for 27
    simulated minutes (13.5 s of a chaos run)."""
    orders = [
        order(1, "dt-1", "BUY", "LMT", 100, 1.0, 1.0, client=2),
        order(116, "em-stop", "SELL", "STP", 100, 2.0, None, client=10),
        order(116, "dt-2", "BUY", "LMT", 99, 5.0, 5.0, symbol="MSFT", client=2),
        order(117, "em-stop-2", "SELL", "STP", 99, 5.5, None, symbol="MSFT", client=10),
    ]
    executions = [fill(1, "dt-1", "BOT", 100, 1.0, client=2),
                  fill(116, "dt-2", "BOT", 99, 5.0, symbol="MSFT", client=2)]  # fmt: skip
    found = unprotected_intervals(timeline_samples(state_of(orders, executions)))
    assert [(i.symbol, i.start, i.end) for i in found] == [("AMD", 1.0, 2.0), ("MSFT", 5.0, 5.5)]
