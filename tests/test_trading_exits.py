"""The exit side's pure rules: prices, the protective set, quotes, exit decisions, and the
per-symbol state (ExitBook)."""

from __future__ import annotations

import pytest

from core.money import average_price
from tests.exit_records import db_row, our_sell, quote_at
from trading.exits import (
    ExitBook,
    ExitConfig,
    bot_stop_fault,
    covered_quantity,
    exit_decision,
    exit_limit_price,
    held_position,
    protect_intent,
    quote_fault,
    server_stop_price,
    stop_to_trigger,
    target_and_stop,
    target_touch_time,
    through_market_stop_price,
)
from trading.model import PURPOSE_BOT_STOP, PURPOSE_BOT_TARGET, ProtectIntent, Quote, WorkingOrder
from trading.phases import DayPhase

CONFIG = ExitConfig()


# -- prices -------------------------------------------------------------------------------
def test_prices_from_entry_use_target_stop_and_a_lower_backstop():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    assert (pos.target_price, pos.stop_price, pos.backstop_price) == (101.8, 99.1, 98.6)
    assert pos.agent == "adopted"


def test_database_prices_win_over_broker_average_cost():
    row = db_row("AAPL", entry=50.0, profit_target_price=51.0, stop_loss_price=49.5)
    pos = held_position("AAPL", 100, 50.37, CONFIG, db_row=row)
    assert (pos.entry_price, pos.target_price, pos.stop_price) == (50.0, 51.0, 49.5)
    assert pos.backstop_price < pos.stop_price
    assert pos.agent == "day_trader"


def test_prices_round_to_the_contracts_tick():
    pos = held_position("XYZ", 10, 123.456, CONFIG, tick=0.05)
    for price in (pos.target_price, pos.stop_price, pos.backstop_price):
        assert abs(price / 0.05 - round(price / 0.05)) < 1e-9


def test_protective_set_is_the_target_and_the_due_server_stop_in_one_oca_group():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    intent = protect_intent(pos, 100, "oca-1", CONFIG, None)
    assert intent == ProtectIntent("AAPL", 100, 101.8, 98.6, "oca-1", "position_held", "GTC")
    blind = protect_intent(pos, 100, "oca-1", CONFIG, "stale")
    assert blind.stop_price == pos.stop_price == 99.1  # only the server stop can act


def test_exit_limit_gets_worse_with_each_attempt_and_stays_on_the_tick():
    quote = quote_at(99.0, bid=98.99)
    first = exit_limit_price(quote, 1, CONFIG, 0.01)
    second = exit_limit_price(quote, 2, CONFIG, 0.01)
    assert first is not None and second is not None
    assert second < first <= 98.99
    assert exit_limit_price(None, 1, CONFIG, 0.01) is None


# -- quotes and decisions -------------------------------------------------------------------------
def test_stale_delayed_and_missing_quotes_are_faults():
    assert quote_fault(None, 0, CONFIG) == "no_quote"
    assert quote_fault(quote_at(100, at=0), CONFIG.stale_tick_seconds + 1, CONFIG) == "stale"
    assert quote_fault(quote_at(100, at=0, data_type=3), 0, CONFIG) == "delayed"
    assert (
        quote_fault(quote_at(100, at=0, data_type=3), 0, ExitConfig(allow_delayed_data=True))
        is None
    )
    assert quote_fault(quote_at(float("nan"), at=0), 0, CONFIG) == "no_price"


def test_server_stop_sits_at_the_stop_loss_price_while_the_bot_cannot_act():
    """Delayed-only data left the bot's -0.9% stop blind and the server STP at -1.4%."""
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    assert (pos.stop_price, pos.backstop_price) == (99.1, 98.6)
    live = quote_at(100.0, at=1000)
    assert bot_stop_fault(live, 1000, CONFIG) is None
    assert server_stop_price(pos, bot_stop_fault(live, 1000, CONFIG)) == 98.6
    allowed = ExitConfig(allow_delayed_data=True)  # the bot may act on it; still minutes old
    cases = {
        "no_quote": bot_stop_fault(None, 1000, CONFIG),
        "delayed": bot_stop_fault(quote_at(100.0, at=1000, data_type=3), 1000, allowed),
        "stale": bot_stop_fault(live, 1000 + CONFIG.stale_tick_seconds + 1, CONFIG),
    }
    for reason, fault in cases.items():
        assert fault == reason
        assert server_stop_price(pos, fault) == pos.stop_price == 99.1


def test_stop_fires_at_or_below_the_bot_stop_only():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    assert exit_decision(pos, quote_at(99.11), 1000, CONFIG, market_open=True) is None
    action = exit_decision(pos, quote_at(99.1), 1000, CONFIG, market_open=True)
    assert (
        action is not None and action.purpose == PURPOSE_BOT_STOP and action.reason == "STOP_LOSS"
    )


def test_no_action_on_stale_price_or_outside_regular_hours():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    old = quote_at(90.0, at=0)
    assert (
        exit_decision(pos, old, CONFIG.stale_tick_seconds + 0.5, CONFIG, market_open=True) is None
    )
    assert exit_decision(pos, quote_at(90.0), 1000, CONFIG, market_open=False) is None


def test_target_touched_sells_only_after_the_grace_when_the_limit_did_not_fill():
    pos = held_position("AAPL", 100, 100.0, CONFIG)
    quote = quote_at(102.0)
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
    assert target_touch_time(pos, quote_at(101.0), touched, 1005) is None


# -- rejects and fills ------------------------------------------------------------------------------
def test_rejects_give_up_once_at_the_limit():
    book = ExitBook(CONFIG)
    assert [book.record_reject("AAPL") for _ in range(4)] == [False, False, True, False]
    assert book.is_blocked("AAPL") and not book.is_blocked("MSFT")


def test_average_price():
    assert average_price([(60, 10.0), (40, 11.0)]) == pytest.approx(10.4)
    assert average_price([]) is None


def test_covered_quantity_counts_an_oca_group_once() -> None:
    def sell(qty: float, oca: str, action: str = "SELL") -> WorkingOrder:
        return WorkingOrder("AAPL", 1, 10, 1, action, "LMT", qty, 1.0, None, oca, "")

    assert covered_quantity([]) == 0
    assert covered_quantity([sell(50, "g1"), sell(50, "g1")]) == 50
    assert covered_quantity([sell(50, "g1"), sell(30, "g1"), sell(10, "")]) == 60
    assert covered_quantity([sell(50, "g1"), sell(20, "g2"), sell(5, "", "BUY")]) == 70


# -- the exit through the protective stop -------------------------------------------------------
def test_an_exit_moves_the_stop_only_when_it_is_one_oca_set_for_exactly_the_position() -> None:
    stop, target = our_sell("AAPL", "STP", 100, 97.0), our_sell("AAPL", "LMT", 100, 104.0)
    assert stop_to_trigger(100, [target, stop]) == stop
    assert stop_to_trigger(60, [target, stop]) is None  # the position changed: ask IB
    assert stop_to_trigger(100, [stop]) == stop  # the target already went (OCA)
    assert stop_to_trigger(None, [target, stop]) is None  # no position streamed yet
    assert stop_to_trigger(100, [target]) is None  # no stop: cancel and sell
    other = our_sell("AAPL", "LMT", 100, 104.0, oca="g2")
    assert stop_to_trigger(100, [other, stop]) is None  # a sell outside its group
    loose = our_sell("AAPL", "STP", 100, 97.0, oca="")
    assert stop_to_trigger(100, [loose]) is None
    two = our_sell("AAPL", "STP", 100, 96.0, oca="g1")._replace(order_id=999)
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


# -- the per-symbol state --------------------------------------------------------------------------
def _held_book() -> ExitBook:
    book = ExitBook(CONFIG)
    book["AAPL"].position = held_position("AAPL", 100, 100.0, CONFIG)
    return book


def test_one_state_per_symbol_remembers_the_target_touch_until_the_price_drops() -> None:
    book = _held_book()
    book.on_quote(quote_at(101.8, at=1000), 1000)
    book.on_quote(quote_at(101.9, at=1001), 1001)
    assert book["AAPL"].target_touched_at == 1000  # the touch began at the first tick
    action = book.exit_due("AAPL", 1000 + CONFIG.target_fill_grace_s, market_open=True)
    assert action is not None and action.purpose == PURPOSE_BOT_TARGET
    book.on_quote(quote_at(101.0, at=1004), 1004)
    assert book["AAPL"].target_touched_at is None


def test_no_bot_exit_while_busy_in_cooldown_given_up_or_once_the_stream_says_flat() -> None:
    book = _held_book()
    book.on_quote(quote_at(99.0, at=1000), 1000)  # through the bot stop
    assert book.exit_due("AAPL", 1000, market_open=True) is not None
    state = book["AAPL"]
    state.busy = True
    assert book.exit_due("AAPL", 1000, market_open=True) is None
    state.busy, state.cooldown_until = False, 1060.0
    assert book.exit_due("AAPL", 1000, market_open=True) is None
    state.cooldown_until, state.seen_quantity = 0.0, 0.0
    assert book.exit_due("AAPL", 1000, market_open=True) is None
    state.seen_quantity = 100.0
    book.block("AAPL")
    assert book.exit_due("AAPL", 1000, market_open=True) is None
    assert book.exit_due("MSFT", 1000, market_open=True) is None  # not held


def test_a_closed_position_forgets_its_quote_and_rejects_but_a_forgotten_one_keeps_rejects():
    book = _held_book()
    book.on_quote(quote_at(100.0, at=1000), 1000)
    book.record_reject("AAPL")
    book["AAPL"].forget_position()
    assert "AAPL" not in book.held() and "AAPL" not in book.quotes()
    assert book["AAPL"].rejects == 1  # today's rejects outlive a reconciliation
    book.record_reject("AAPL")
    book["AAPL"].give_up_pending = book["AAPL"].unprotected = True
    book.closed("AAPL")
    state = book["AAPL"]
    assert (state.rejects, state.give_up_pending, state.unprotected) == (0, False, False)


def test_quote_faults_are_reported_once_when_they_begin_and_once_when_they_end() -> None:
    book = _held_book()
    assert book.quote_fault_changes(1000, subscribed=set()) == [("AAPL", "not_subscribed", None)]
    assert book.quote_fault_changes(1000, subscribed=set()) == []
    book.on_quote(quote_at(100.0, at=1000), 1000)
    assert book.quote_fault_changes(1000, {"AAPL"}) == [("AAPL", None, None)]
    late = 1000 + CONFIG.stale_tick_seconds + 1
    assert book.quote_fault_changes(late, {"AAPL"}) == [("AAPL", "stale", late - 1000)]
    assert book.degraded()


def test_the_server_stop_moves_to_the_stop_loss_price_only_while_the_bot_is_blind() -> None:
    book = _held_book()
    pos = book["AAPL"].position
    assert pos is not None
    book.on_quote(quote_at(100.0, at=1000), 1000)
    assert book.server_stop_due("AAPL", [pos.backstop_price], 1000) is None
    stale = 1000 + CONFIG.stale_tick_seconds + 1
    assert book.server_stop_due("AAPL", [pos.backstop_price], stale) == pos.stop_price
    book["AAPL"].moving_stop = True  # a move is on its way: not a second one
    assert book.server_stop_due("AAPL", [pos.backstop_price], stale) is None


def test_the_audit_names_a_gap_found_twice_in_a_row_and_eod_runs_once_per_phase() -> None:
    book = _held_book()
    assert book.audit({"AAPL"}) == []
    assert book.audit({"AAPL", "MSFT"}) == ["AAPL"]
    assert book.audit(set()) == []
    assert book.audit({"MSFT"}) == []
    assert book.eod_due(DayPhase.FLATTEN, "2026-11-25")
    assert not book.eod_due(DayPhase.FLATTEN, "2026-11-25")
    assert book.eod_due(DayPhase.SWEEP, "2026-11-25")
    assert not book.eod_due(DayPhase.REGULAR, "2026-11-26")


def test_target_and_stop_take_the_recorded_prices_else_the_percentages() -> None:
    assert target_and_stop(100.0, 1.8, 0.9) == (101.8, 99.1)
    assert target_and_stop(100.0, 1.8, 0.9, recorded_target=102.004, recorded_stop=98.996) == (
        102.0,
        99.0,  # a recorded stop rounds up to the tick: never further from the entry
    )
