"""Entry rules and sizing as pure functions: each rule, each risk limit, time cutoffs, data checks."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date, datetime

import pytest

from core.clock import NEW_YORK, MarketClock
from core.money import entry_shares, marketable_limit_price
from trading.entries import (
    AFTER_ENTRY_CUTOFF,
    CLOSED_TODAY,
    DAILY_LOSS_LIMIT,
    DELAYED_DATA,
    ENTRY_WORKING,
    EXIT_MANAGER_NOT_READY,
    GAP_AND_GO,
    KILL_SWITCH,
    MARKET_CLOSED,
    MAX_OPEN_POSITIONS,
    NO_QUOTE,
    NO_SIGNAL,
    POSITION_ACTIVE,
    STALE_BARS,
    STALE_QUOTE,
    STANDARD,
    WARMING_UP,
    AccountFunds,
    BookState,
    ClosedPosition,
    EntryConfig,
    EntryCore,
    EntryDecision,
    HeldPosition,
    allot_free_slots,
    book_from_records,
    evaluate_entry,
    plan_entry,
    size_entry,
)
from trading.feed import SymbolSnapshot, gap_percent
from trading.indicators import Bar
from trading.model import EnterIntent, Quote

DAY = date(2026, 11, 25)  # a full Wednesday session
HALF_DAY = date(2026, 11, 27)  # the Friday after Thanksgiving closes at 13:00
CONFIG = EntryConfig()
BOOK = BookState(net_liquidation=100_000.0)


def at(hour: int, minute: int, second: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=NEW_YORK)


def session(day: date = DAY):  # type: ignore[no-untyped-def]
    return MarketClock().session(day)


def snap(now: datetime, **changes: object) -> SymbolSnapshot:
    """A standard-entry candidate at `now`: above VWAP, RSI 55, ATR% 0.5, live and fresh."""
    base = SymbolSnapshot(
        symbol="ABC",
        last=20.10,
        close=20.10,
        bid=20.09,
        ask=20.11,
        vwap=20.00,
        rsi=55.0,
        atr_pct=0.5,
        prev_close=19.90,
        gap_pct=1.0,
        market_data_type=1,
        quote_time=now.timestamp() - 1,
        bar_time=now.timestamp() - 35,
        rsi_bars=0,
        atr_bars=0,
        vwap_has_volume=True,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def decide(s: SymbolSnapshot, now: datetime, book: BookState = BOOK, day: date = DAY):  # type: ignore[no-untyped-def]
    return evaluate_entry(s, book, now, session(day), CONFIG)


NOON = at(12, 0)


def test_standard_entry_fires_when_above_vwap_rsi_below_60_and_atr_enough() -> None:
    decision = decide(snap(NOON), NOON)
    assert decision.enter and decision.rule == STANDARD
    fields = decision.log_fields()
    assert fields["decision"] == "enter" and fields["rsi"] == 55.0 and fields["above_vwap"]


@pytest.mark.parametrize(
    "change",
    [
        {"close": 19.99},  # the bar closed below VWAP
        {"close": 20.00},  # at VWAP is not above
        {"rsi": 60.0},  # RSI must be strictly below 60
        {"atr_pct": 0.29},  # not enough range to pay for the spread
    ],
)
def test_standard_entry_refused_when_one_condition_fails(change: dict[str, float]) -> None:
    decision = decide(snap(NOON, **change), NOON)
    assert not decision.enter and decision.reason == NO_SIGNAL


def test_the_standard_rule_reads_the_bar_close_not_the_trade_after_the_bar() -> None:
    # The ticker's last arrives with the bar but is a later trade (seconds later at speed).
    closed_below = snap(NOON, close=19.99, last=20.30)
    assert decide(closed_below, NOON).reason == NO_SIGNAL
    assert decide(closed_below, NOON).values["above_vwap"] is False
    closed_above = snap(NOON, close=20.05, last=19.90)
    assert decide(closed_above, NOON).enter
    assert decide(closed_above, NOON).values["close"] == 20.05


def test_atr_exactly_at_threshold_is_enough() -> None:
    assert decide(snap(NOON, atr_pct=0.3), NOON).enter


def test_gap_and_go_bypasses_vwap_but_needs_rsi_below_60() -> None:
    gapper = snap(NOON, last=19.0, vwap=20.0, gap_pct=6.5, atr_pct=0.1)
    decision = decide(gapper, NOON)
    assert decision.enter and decision.rule == GAP_AND_GO
    assert not decide(replace(gapper, rsi=61.0), NOON).enter
    assert not decide(replace(gapper, gap_pct=4.99), NOON).enter
    # VWAP not yet known (no regular-session volume) does not stop a gap-and-go.
    early = replace(gapper, vwap=math.nan, vwap_has_volume=False, atr_bars=3)
    assert decide(early, NOON).rule == GAP_AND_GO


def test_gap_percent_against_previous_close() -> None:
    assert gap_percent(10.5, 10.0) == pytest.approx(5.0)
    assert math.isnan(gap_percent(10.5, 0.0))


@pytest.mark.parametrize(
    ("book", "reason"),
    [
        (replace(BOOK, active_symbols=frozenset({"ABC"})), POSITION_ACTIVE),
        (replace(BOOK, closed_today=frozenset({"ABC"})), CLOSED_TODAY),
        (replace(BOOK, working_entries=frozenset({"ABC"})), ENTRY_WORKING),
        (replace(BOOK, open_positions=4), MAX_OPEN_POSITIONS),
        (replace(BOOK, kill_switch="file KILL_SWITCH"), KILL_SWITCH),
        (replace(BOOK, exit_manager_problem="exit manager RECONCILING"), EXIT_MANAGER_NOT_READY),
        (replace(BOOK, day_pnl=-2_000.0), DAILY_LOSS_LIMIT),  # 2% of 100k
        (replace(BOOK, day_pnl=math.nan), DAILY_LOSS_LIMIT),  # unknown is not "fine"
        (replace(BOOK, net_liquidation=math.nan), DAILY_LOSS_LIMIT),
    ],
)
def test_book_and_risk_limits_refuse_entries(book: BookState, reason: str) -> None:
    decision = decide(snap(NOON), NOON, book)
    assert not decision.enter and decision.reason == reason


def test_loss_just_under_the_limit_still_allows_entries() -> None:
    assert decide(snap(NOON), NOON, replace(BOOK, day_pnl=-1_999.0)).enter


def test_kill_switch_wins_over_a_perfect_gap_and_go() -> None:
    gapper = snap(NOON, gap_pct=9.0)
    assert decide(gapper, NOON, replace(BOOK, kill_switch="flag")).reason == KILL_SWITCH


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (at(9, 29, 59), MARKET_CLOSED),
        (at(9, 30), None),
        (at(15, 44, 59), None),
        (at(15, 45), AFTER_ENTRY_CUTOFF),
        (at(16, 0), MARKET_CLOSED),
    ],
)
def test_entries_only_in_regular_hours_before_close_minus_15(
    now: datetime, reason: str | None
) -> None:
    decision = decide(snap(now), now)
    assert decision.enter is (reason is None)
    if reason:
        assert decision.reason == reason


def test_half_day_cutoff_is_close_minus_15_from_the_calendar() -> None:
    before, after = at(12, 44, 59, HALF_DAY), at(12, 45, 0, HALF_DAY)
    assert decide(snap(before), before, day=HALF_DAY).enter
    assert decide(snap(after), after, day=HALF_DAY).reason == AFTER_ENTRY_CUTOFF
    # Thanksgiving itself has no session at all.
    holiday = at(11, 0, 0, date(2026, 11, 26))
    assert decide(snap(holiday), holiday, day=date(2026, 11, 26)).reason == MARKET_CLOSED


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"market_data_type": 3}, DELAYED_DATA),
        ({"market_data_type": 4}, DELAYED_DATA),
        ({"market_data_type": 0}, DELAYED_DATA),  # not known to be live
        ({"quote_time": NOON.timestamp() - 31}, STALE_QUOTE),
        ({"quote_time": math.nan}, STALE_QUOTE),
        ({"bar_time": NOON.timestamp() - 91}, STALE_BARS),
        ({"ask": math.nan}, NO_QUOTE),
        ({"last": 0.0}, NO_QUOTE),
    ],
)
def test_stale_delayed_or_missing_data_is_refused(change: dict[str, float], reason: str) -> None:
    decision = decide(snap(NOON, **change), NOON)
    assert not decision.enter and decision.reason == reason


def test_delayed_data_allowed_only_when_opted_in() -> None:
    opted_in = EntryConfig(allow_delayed_data=True)
    delayed = snap(NOON, market_data_type=3)
    assert evaluate_entry(delayed, BOOK, NOON, session(), opted_in).enter


@pytest.mark.parametrize(
    "change",
    [{"rsi_bars": 1, "rsi": math.nan}, {"atr_bars": 2}, {"vwap_has_volume": False}],
)
def test_no_entry_while_an_indicator_warms_up(change: dict[str, object]) -> None:
    decision = decide(snap(NOON, **change), NOON)
    assert not decision.enter and decision.reason == WARMING_UP


def test_config_from_settings_takes_the_risk_limits(_isolated_settings) -> None:  # type: ignore[no-untyped-def]
    config = EntryConfig.from_settings(replace(_isolated_settings, max_open_positions=2))
    assert config.max_open_positions == 2 and config.entry_cutoff_minutes == 15.0


# -- sizing ----------------------------------------------------------------------------------


def test_size_is_allocation_split_over_max_positions_in_whole_shares() -> None:
    # 100k x 0.25 / 4 = 6,250 -> 6250 / 33.33 = 187.5 -> 187 shares
    assert entry_shares(33.33, 100_000, 0.25, 4) == 187
    assert entry_shares(25.00, 100_000, 0.25, 4) == 250  # exact division stays exact


def test_size_never_above_buying_power_nor_max_position_usd() -> None:
    assert entry_shares(10.0, 100_000, 0.25, 4, buying_power=1_234.0) == 123
    assert entry_shares(10.0, 1_000_000, 1.0, 1, max_position_usd=25_000.0) == 2_500
    assert entry_shares(10.0, 100_000, 0.25, 4, buying_power=-5.0) == 0
    assert entry_shares(10.0, 100_000, 0.25, 4, buying_power=math.nan) == 0
    assert entry_shares(7_000.0, 100_000, 0.25, 4) == 0  # not one share fits


def test_sizing_refuses_nonsense_inputs() -> None:
    with pytest.raises(ValueError, match="allocation"):
        entry_shares(10.0, 100_000, 1.5, 4)
    with pytest.raises(ValueError, match="price"):
        entry_shares(0.0, 100_000, 0.25, 4)


def test_marketable_limit_is_ticks_above_the_ask_on_the_grid() -> None:
    assert marketable_limit_price(20.11, 2) == 20.13
    assert marketable_limit_price(20.105, 2) == 20.13  # off-grid ask rounds up, never down
    with pytest.raises(ValueError):
        marketable_limit_price(math.nan)


def test_one_pass_enters_no_more_symbols_than_free_slots() -> None:
    """Bug pinned (supervisor --sim: 6 positions against 4): every symbol that qualified in
    one pass was entered into the same free slot. One free slot: one enter, the gap-and-go
    first; the others become max_open_positions skips, and skips stay as they were."""
    book = replace(BOOK, open_positions=3)
    decisions = [
        EntryDecision("AAA", True, STANDARD, "enter", {}),
        EntryDecision("BBB", False, None, NO_SIGNAL, {}),
        EntryDecision("CCC", True, GAP_AND_GO, "enter", {}),
        EntryDecision("DDD", True, STANDARD, "enter", {}),
    ]
    allotted = allot_free_slots(decisions, book, CONFIG)
    assert [d.symbol for d in allotted] == ["AAA", "BBB", "CCC", "DDD"]
    assert [d.symbol for d in allotted if d.enter] == ["CCC"]
    assert [d.reason for d in allotted] == [
        MAX_OPEN_POSITIONS,
        NO_SIGNAL,
        "enter",
        MAX_OPEN_POSITIONS,
    ]
    two_free = allot_free_slots(decisions, replace(book, open_positions=2), CONFIG)
    assert [d.symbol for d in two_free if d.enter] == ["AAA", "CCC"]
    assert not any(
        d.enter for d in allot_free_slots(decisions, replace(book, open_positions=5), CONFIG)
    )


# -- the core driven bar by bar (how the backtest drives it: a plain loop, no event loop) ------

PREV_CLOSE = 10.0


def gapper_day(core: EntryCore, symbols: list[str]) -> None:
    """A pre-market trade 10% above the previous close, then regular bars see-sawing (RSI
    near 50) until just before the first decision could fire."""
    for symbol in symbols:
        core.on_bar(symbol, Bar(at(9, 0).timestamp(), 11.0, 11.0, 11.0, 11.0, 500))
    for i in range(14):
        t = at(9, 30).timestamp() + 30 * i
        close = 11.0 + (0.05 if i % 2 else -0.05)
        for symbol in symbols:
            core.on_bar(symbol, Bar(t, 11.0, 11.1, 10.9, close, 1000))


def quote(symbol: str, now: datetime) -> Quote:
    return Quote(symbol, 11.0, 10.99, 11.01, now.timestamp(), 1, prev_close=PREV_CLOSE)


def next_bar(core: EntryCore, symbols: list[str], n: int) -> datetime:
    """Bar `n` of the day (0 = 09:30) for each symbol, and its quote; returns when it closed."""
    start = at(9, 30).timestamp() + 30 * n
    now = datetime.fromtimestamp(start + 31, NEW_YORK)
    for symbol in symbols:
        core.on_bar(symbol, Bar(start, 11.0, 11.1, 10.9, 11.0 + 0.05 * (n % 2), 1000))
        core.on_quote(quote(symbol, now))
    return now


def test_the_core_decides_each_new_bar_once_and_keeps_a_slot_while_an_entry_is_placed() -> None:
    """The day trader kept 'entering' in its own set: a driver without it (a backtest) would
    enter the same symbol on every bar until its order showed in the book."""
    core = EntryCore(replace(CONFIG, max_open_positions=1), MarketClock())
    symbols = ["AAA", "BBB"]
    gapper_day(core, symbols)
    assert core.take_due() and not core.take_due()  # the warm-up bars, then nothing new

    now = next_bar(core, symbols, 14)  # the 15th regular bar: RSI and ATR are warm
    first = core.decide(now, session(), BOOK)
    assert [(d.symbol, d.enter, d.rule or d.reason) for d in first] == [
        ("AAA", True, GAP_AND_GO),
        ("BBB", False, MAX_OPEN_POSITIONS),
    ]
    assert core.decide(now, session(), BOOK) == []  # no new bar: nothing to decide

    now = next_bar(core, symbols, 15)  # AAA's entry is still being placed: it holds the slot
    second = core.decide(now, session(), BOOK)
    assert [(d.enter, d.reason) for d in second] == [(False, MAX_OPEN_POSITIONS)] * 2
    held = core.with_entering(BOOK)
    assert (held.working_entries, held.open_positions) == ({"AAA"}, 1)

    core.entry_finished("AAA")  # dropped (too small, refused): the slot is free again
    now = next_bar(core, symbols, 16)
    assert [d.enter for d in core.decide(now, session(), BOOK)] == [True, False]


def test_the_last_look_counts_the_other_entries_being_placed_but_not_its_own() -> None:
    core = EntryCore(replace(CONFIG, max_open_positions=2), MarketClock())
    symbols = ["AAA", "BBB", "CCC"]
    gapper_day(core, symbols)
    now = next_bar(core, symbols, 14)
    enters = [d.symbol for d in core.decide(now, session(), BOOK) if d.enter]
    assert enters == ["AAA", "BBB"] and core.entering == {"AAA", "BBB"}
    assert core.recheck("AAA", now, session(), BOOK).enter  # BBB takes one slot, AAA the other
    full = BookState(net_liquidation=100_000.0, active_symbols=frozenset({"ZZZ"}), open_positions=1)
    assert core.recheck("AAA", now, session(), full).reason == MAX_OPEN_POSITIONS


def test_the_book_from_records_counts_only_this_strategys_pnl_and_every_working_entry() -> None:
    book = book_from_records(
        [HeldPosition("MINE", 100, 50.0, "day_trader"), HeldPosition("ADOPT", 10, 9.0, "adopted")],
        [ClosedPosition("WON", 120.0, "day_trader"), ClosedPosition("OTHER", -900.0, "x")],
        ["WORK", "MINE"],
        {"MINE": 49.0, "ADOPT": 1.0},
        agent="day_trader",
        net_liquidation=100_000.0,
    )
    assert book.day_pnl == pytest.approx(120.0 - 100.0)
    assert book.open_positions == 3  # ADOPT, MINE (held and working counts once), WORK
    assert book.closed_today == {"WON", "OTHER"}
    unpriced = book_from_records(
        [HeldPosition("MINE", 100, 50.0, "day_trader")],
        [],
        [],
        {},
        agent="day_trader",
        net_liquidation=100_000.0,
    )
    assert math.isnan(unpriced.day_pnl)  # unknown, never zero


def test_sizing_spends_the_allocation_within_what_the_account_can_still_pay() -> None:
    funds = AccountFunds(net_liquidation=100_000.0, available_funds=50_000.0, buying_power=40_000.0)
    sizing = {"allocation": 0.25, "max_open_positions": 4, "max_position_usd": None}
    shares, numbers = size_entry(10.0, funds, committed_usd=0.0, **sizing)  # type: ignore[arg-type]
    assert shares == 625 and numbers["buying_power"] == 40_000.0  # 100k x 0.25 / 4 = 6,250
    shares, numbers = size_entry(10.0, funds, committed_usd=38_000.0, **sizing)  # type: ignore[arg-type]
    assert shares == 200 and numbers["buying_power"] == 2_000.0  # working entries spent it
    unknown = AccountFunds(net_liquidation=None, available_funds=50_000.0)
    shares, numbers = size_entry(10.0, unknown, committed_usd=0.0, **sizing)  # type: ignore[arg-type]
    assert shares == 0 and numbers["why"] == "account values unknown"


def test_an_enter_decision_plans_a_marketable_day_limit_sized_by_allocation() -> None:
    decision = decide(snap(NOON, ask=20.11), NOON)
    funds = AccountFunds(net_liquidation=100_000.0, available_funds=80_000.0, buying_power=80_000.0)
    config = replace(CONFIG, allocation=0.5, max_open_positions=4, max_position_usd=None)
    intent, limit, sizing = plan_entry(decision, funds, 0.0, config)
    assert limit == marketable_limit_price(20.11, 2) == 20.13
    assert intent == EnterIntent("ABC", 620, 20.13, STANDARD, "enter", "DAY")  # 12,500 / 20.13
    assert sizing["allocation"] == 0.5
    poor = AccountFunds(net_liquidation=100_000.0, available_funds=10.0, buying_power=10.0)
    assert plan_entry(decision, poor, 0.0, config).intent is None  # not one share: no order


def test_a_pass_for_enters_only_gives_exactly_the_enters_of_the_full_pass() -> None:
    """The backtest asks for the enters only and skips the snapshots of symbols that cannot
    enter; a whole seeded day (gappers and not, hot and cold RSI, delayed and stale data,
    held and closed symbols, slots full, the loss limit and the cutoff) decides the same
    enters, in the same order, and keeps the same symbols entering, as the full pass."""
    import numpy as np

    rng = np.random.default_rng(11)
    symbols = [f"S{i:02d}" for i in range(24)]
    full, lean = (EntryCore(replace(CONFIG, max_open_positions=3), MarketClock()) for _ in "ab")
    prices = dict.fromkeys(symbols, 10.0)
    for core in (full, lean):
        for k, symbol in enumerate(symbols):  # every third a gapper
            core.on_bar(symbol, Bar(at(9, 0).timestamp(), 10, 10, 10, 11.0 if k % 3 else 10, 9))
    enters = 0
    for n in range(13 * 60):
        start = at(9, 30).timestamp() + 30 * n
        now = datetime.fromtimestamp(start + 31, NEW_YORK)
        for k, symbol in enumerate(symbols):
            if rng.random() < 0.1:
                continue  # no trade this bar: no decision for it
            drift = 0.02 if (n // 40 + k) % 2 else -0.02
            close = prices[symbol] = round(
                max(1.0, prices[symbol] + drift + rng.normal(0, 0.03)), 2
            )
            bar = Bar(start, close, close + 0.05, close - 0.05, close, 100)
            data_type = 3 if k == 5 else 1  # one delayed
            quote_time = now.timestamp() - (90 if k == 7 else 0)  # one stale
            tick = Quote(symbol, close, close - 0.01, close + 0.01, quote_time, data_type, 10.0)
            for core in (full, lean):
                core.on_bar(symbol, bar)
                core.on_quote(tick)
        held = frozenset(rng.choice(symbols, size=int(rng.integers(0, 3)), replace=False))
        closed = frozenset(symbols[: n // 60])
        book = BookState(
            active_symbols=held,
            closed_today=closed,
            open_positions=len(held),
            day_pnl=-2_500.0 if 300 <= n < 330 else 0.0,  # the loss limit for a while
            net_liquidation=100_000.0,
        )
        every = full.decide(now, session(), book)
        only = lean.decide(now, session(), book, skips=False)
        assert only == [d for d in every if d.enter]
        assert lean.entering == full.entering
        enters += len(only)
        for decision in only:  # entries finish at once or a bar later, as a driver does
            if rng.random() < 0.5:
                full.entry_finished(decision.symbol)
                lean.entry_finished(decision.symbol)
        if rng.random() < 0.5:
            for symbol in sorted(full.entering):
                full.entry_finished(symbol)
                lean.entry_finished(symbol)
    assert enters > 20  # the day has enters to compare
