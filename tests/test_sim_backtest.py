"""The backtest engine (sim.backtest): what the live system does that changes results, on
small hand-made days where the gap-and-go rule fires at a known bar.

Every day here: prev close 100, a pre-market trade at 106 (a 6% gap), then 30-s bars from
09:30 alternating 106.00 / 106.10 (RSI near 50). RSI is warm after 15 bars, so the rule
fires on the bar ending 09:37:30 and the entry is first looked at on the next bar's open.
"""

from __future__ import annotations

from datetime import date, datetime, time

import numpy as np
import pytest

from core.clock import NEW_YORK, MarketClock
from journal import JournalRow
from reports import DayReport
from sim.backtest import BacktestConfig, BacktestResult, DayResult, run_backtest
from sim.days import SymbolDay, TradingDay, analysis_bars

DAY = date(2026, 3, 16)
HALF_DAY = date(2026, 11, 27)  # the day after Thanksgiving: the close is 13:00


def _at(day: date, hh: int, mm: int, ss: int = 0) -> float:
    return datetime.combine(day, time(hh, mm, ss), NEW_YORK).timestamp()


def _bar(t: float, o: float, h: float, lo: float, c: float, v: float = 10_000) -> list[float]:
    return [t, o, h, lo, c, v]


def _warmup(day: date, start: tuple[int, int] = (9, 30), bars: int = 15) -> list[list[float]]:
    """The pre-market gap print and `bars` alternating regular-hours bars."""
    rows = [_bar(_at(day, 8, 0), 106.0, 106.0, 106.0, 106.0, 5_000)]
    t0 = _at(day, *start)
    for k in range(bars):
        c = 106.10 if k % 2 else 106.00
        o = 106.00 if k % 2 else 106.10
        rows.append(_bar(t0 + 30 * k, o, max(o, c) + 0.05, min(o, c) - 0.05, c))
    return rows


def _flat(t0: float, until: float, price: float = 106.00) -> list[list[float]]:
    """Bars that trade one price: neither target nor stop, no new RSI swing."""
    rows = []
    t = t0
    k = 0
    while t < until:
        c = price + (0.02 if k % 2 else 0.0)
        rows.append(_bar(t, price, price + 0.02, price, c))
        t += 30
        k += 1
    return rows


def _symbol(name: str, rows: list[list[float]], spread_ticks: int = 1) -> SymbolDay:
    fill = np.array(sorted(rows), dtype=float)
    return SymbolDay(name, 100.0, spread_ticks, fill, analysis_bars(fill))


def _day(day: date, *symbols: SymbolDay) -> TradingDay:
    session = MarketClock().session(day)
    assert session is not None
    return TradingDay(day, session, tuple(symbols), 30)


def _run(day: TradingDay, **config) -> object:  # type: ignore[no-untyped-def]
    return run_backtest([day], BacktestConfig(**config))


DECIDED = (9, 37, 30)  # the end of the 15th regular bar


def test_a_spike_in_the_next_bar_cannot_fill_the_entry_decided_before_it_better() -> None:
    rows = _warmup(DAY)
    decided = _at(DAY, *DECIDED)
    # The decision: the bar closed at 106.00, so the limit is its ask + 2 ticks, 106.03. The
    # next bar opens at 106.00 and spikes to 95 before closing back: the entry buys at the
    # ask of the open (106.01), not anywhere near the spike.
    rows.append(_bar(decided, 106.00, 106.05, 95.0, 106.05))
    result = _run(_day(DAY, _symbol("GAPR", rows)))
    buys = [f for f in result.days[0].fills if f["side"] == "BUY"]
    assert buys, "the rule fired and the entry was sent"
    assert {f["price"] for f in buys} == {106.01}
    assert min(datetime.fromisoformat(f["trade_time"]).timestamp() for f in buys) >= decided


def test_a_resting_entry_traded_through_fills_at_its_limit_not_at_the_spike() -> None:
    rows = _warmup(DAY)
    decided = _at(DAY, *DECIDED)
    # Limit 106.03. The next bar opens above it (not marketable), then falls through it.
    rows.append(_bar(decided, 106.50, 106.50, 100.0, 106.40))
    result = _run(_day(DAY, _symbol("GAPR", rows)))
    buys = [f for f in result.days[0].fills if f["side"] == "BUY"]
    assert {f["price"] for f in buys} == {106.03}


@pytest.mark.parametrize(("low", "fills"), [(106.03, False), (106.02, True)])
def test_a_limit_the_market_only_touches_does_not_fill(low: float, fills: bool) -> None:
    rows = _warmup(DAY)
    decided = _at(DAY, *DECIDED)
    # The next two bars come down to the limit (106.03) exactly, or one tick through it.
    rows.append(_bar(decided, 106.50, 106.50, low, 106.40))
    rows.append(_bar(decided + 30, 106.40, 106.45, 106.30, 106.40))
    result = _run(_day(DAY, _symbol("GAPR", rows)))
    day = result.days[0]
    assert bool([f for f in day.fills if f["side"] == "BUY"]) is fills
    if not fills:
        assert day.entries_sent >= 1 and day.entries_cancelled == day.entries_sent


def test_an_unfilled_entry_is_cancelled_after_its_timeout_and_may_be_tried_again() -> None:
    rows = _warmup(DAY)
    decided = _at(DAY, *DECIDED)
    # Two bars that stay a tick above the limit (106.03): the entry times out after 60 s and
    # is cancelled; the rule still fires on the second bar (limit 106.07) and the third
    # bar's open fills the new entry.
    rows.append(_bar(decided, 106.50, 106.55, 106.04, 106.04))
    rows.append(_bar(decided + 30, 106.10, 106.12, 106.04, 106.04))
    rows.append(_bar(decided + 60, 106.05, 106.06, 106.05, 106.06))
    day = _run(_day(DAY, _symbol("GAPR", rows)), entry_timeout_s=60.0).days[0]
    assert (day.entries_sent, day.entries_cancelled) == (2, 1)
    buys = [f for f in day.fills if f["side"] == "BUY"]
    assert {f["price"] for f in buys} == {106.06}
    assert datetime.fromisoformat(buys[0]["trade_time"]).timestamp() == decided + 60


def test_the_eod_flatten_sells_at_1245_on_a_half_day() -> None:
    rows = _warmup(HALF_DAY)
    decided = _at(HALF_DAY, *DECIDED)
    rows += _flat(decided, _at(HALF_DAY, 13, 0))
    day = _run(_day(HALF_DAY, _symbol("GAPR", rows))).days[0]
    assert len(day.journal) == 1
    trip = day.journal[0]
    assert trip.exit_reason == "EOD"
    assert trip.exit_time == "2026-11-27T12:45:00-05:00"
    assert day.report.still_open == {}


def test_a_symbol_stopped_out_today_is_not_entered_again() -> None:
    rows = _warmup(DAY)
    decided = _at(DAY, *DECIDED)
    # Bought at 106.01 on the open, then a dip through the stop (106.01 x 0.991 = 105.06),
    # then the same alternating bars that made the rule fire, for an hour.
    rows.append(_bar(decided, 106.00, 106.00, 104.0, 104.5))
    for k in range(120):
        c = 106.10 if k % 2 else 106.00
        o = 106.00 if k % 2 else 106.10
        rows.append(_bar(decided + 30 * (k + 1), o, max(o, c) + 0.05, min(o, c) - 0.05, c))
    day = _run(_day(DAY, _symbol("GAPR", rows))).days[0]
    assert [r.exit_reason for r in day.journal] == ["STOP_LOSS"]
    assert day.entries_sent == 1


def _loser_then_late_gapper(day: date) -> TradingDay:
    first = _warmup(day)
    decided = _at(day, *DECIDED)
    first.append(_bar(decided, 106.00, 106.00, 104.0, 104.5))  # stopped out at once
    late = _warmup(day, start=(9, 45))  # fires at 09:52:30
    late += _flat(_at(day, 9, 52, 30), _at(day, 10, 30))
    return _day(day, _symbol("AAAA", first), _symbol("BBBB", late))


def test_the_daily_loss_limit_stops_new_entries() -> None:
    normal = _run(_loser_then_late_gapper(DAY)).days[0]
    assert {r.symbol for r in normal.journal} == {"AAAA", "BBBB"}
    # 0.01% of 100,000 is $10: the first stop-out loses more.
    limited = _run(_loser_then_late_gapper(DAY), daily_loss_limit_pct=0.01).days[0]
    assert {r.symbol for r in limited.journal} == {"AAAA"}


def test_the_kill_switch_stops_new_entries_from_its_time() -> None:
    stopped = _run(_loser_then_late_gapper(DAY), kill_switch_at=time(9, 50)).days[0]
    assert {r.symbol for r in stopped.journal} == {"AAAA"}
    assert _run(_loser_then_late_gapper(DAY), kill_switch_at=time(9, 0)).days[0].journal == ()


def test_max_open_positions_caps_the_symbols_held_at_once() -> None:
    symbols = []
    for name in ("AAAA", "BBBB", "CCCC"):
        rows = _warmup(DAY) + _flat(_at(DAY, *DECIDED), _at(DAY, 10, 30))
        symbols.append(_symbol(name, rows))
    day = _run(_day(DAY, *symbols), max_open_positions=2).days[0]
    assert len({r.symbol for r in day.journal}) == 2


def test_fills_take_at_most_their_share_of_a_bars_volume() -> None:
    rows = _warmup(DAY)
    decided = _at(DAY, *DECIDED)
    rows += [_bar(decided + 30 * k, 106.00, 106.02, 106.00, 106.02, 200) for k in range(4)]
    rows += _flat(decided + 120, _at(DAY, 10, 0))
    day = _run(_day(DAY, _symbol("GAPR", rows)), participation=0.1).days[0]
    buys = [f for f in day.fills if f["side"] == "BUY"]
    assert len(buys) == 2 and all(f["quantity"] == 20 for f in buys)  # 10% of 200, 60 s
    assert day.entries_cancelled == 1  # the unfilled rest, at the timeout
    assert sum(r.quantity for r in day.journal) == 40


def test_a_round_trip_pays_each_orders_commission_and_the_equity_follows() -> None:
    rows = _warmup(DAY)
    decided = _at(DAY, *DECIDED)
    rows.append(_bar(decided, 106.00, 106.02, 106.00, 106.02))  # bought at 106.01
    rows.append(_bar(decided + 30, 106.05, 108.5, 106.05, 108.4))  # through the target
    result = _run(_day(DAY, _symbol("GAPR", rows)))
    day = result.days[0]
    (trip,) = day.journal
    assert trip.exit_reason == "PROFIT_TARGET"
    # 58 shares (100,000 x 0.25 / 4 at the 106.03 limit): $1 minimum per order.
    assert trip.commissions == 2.0
    assert trip.net_pnl == pytest.approx(trip.gross_pnl - 2.0)
    assert day.equity_end == pytest.approx(100_000 + trip.net_pnl)
    assert trip.entry_rule == "gap_and_go" and trip.entry_rsi is not None


def test_a_synthetic_day_runs_flat_by_the_close() -> None:
    from sim.days import synthetic_days

    result = run_backtest(synthetic_days(7, 1, 3, DAY))
    assert len(result.days) == 1 and result.bars > 0
    assert result.days[0].report.still_open == {}


def _trip(net: float) -> JournalRow:
    return JournalRow(
        trading_date="2026-03-16", symbol="X", entry_time="2026-03-16T10:00:00-04:00",
        entry_price=10.0, entry_rule="standard", entry_vwap=None, entry_rsi=None,
        entry_atr_pct=None, llm_verdict=None, exit_time="2026-03-16T10:05:00-04:00",
        exit_price=10.0, exit_reason="STOP_LOSS", quantity=1, gross_pnl=net + 2,
        commissions=2.0, net_pnl=net, hold_seconds=300.0, entry_order_ref=None,
        exit_order_ref=None,
    )  # fmt: skip


def _day_result(nets: list[float], equity: float) -> DayResult:
    return DayResult("2026-03-16", DayReport("2026-03-16", [], {}, 0),
                     tuple(_trip(n) for n in nets), (), equity, equity + sum(nets), 0, 0)  # fmt: skip


def test_the_summary_figures_are_the_journals() -> None:
    days = (_day_result([100.0, -50.0], 100_000.0), _day_result([-25.0, 75.0, -50.0], 100_050.0))
    result = BacktestResult(BacktestConfig(), days, bars=0, seconds=1.0)
    assert result.net_pnl == 50.0 and result.trades == 5
    assert result.win_rate == 40.0
    assert result.profit_factor == pytest.approx(175 / 125)
    assert result.expectancy == pytest.approx(10.0)
    assert result.max_drawdown == 75.0  # +100, +50, +25: then +100 and +50
    returns = np.array([50 / 100_000, 0 / 100_050])
    assert result.sharpe == pytest.approx(returns.mean() / returns.std(ddof=1) * 252**0.5)


def test_an_order_delay_sends_the_entry_later_priced_from_the_ask_then() -> None:
    rows = _warmup(DAY)
    decided = _at(DAY, *DECIDED)
    # An up bar: open 106.00, 10 s later its low 105.50 (the path's knots: 0, 10, 19, 29 s).
    rows.append(_bar(decided, 106.00, 106.20, 105.50, 106.10))
    at_once = _run(_day(DAY, _symbol("GAPR", rows))).days[0]
    later = _run(_day(DAY, _symbol("GAPR", rows)), order_delay_s=10.0).days[0]
    first_buy = next(f for f in at_once.fills if f["side"] == "BUY")
    delayed_buy = next(f for f in later.fills if f["side"] == "BUY")
    assert (first_buy["price"], first_buy["trade_time"]) == (106.01, "2026-03-16T09:37:30-04:00")
    assert (delayed_buy["price"], delayed_buy["trade_time"]) == (
        105.51,
        "2026-03-16T09:37:40-04:00",
    )


def test_synthetic_days_between_two_dates_are_their_sessions() -> None:
    from sim.days import synthetic_sessions_between

    sessions = synthetic_sessions_between(date(2026, 11, 25), date(2026, 11, 30))
    # Thanksgiving (26th) and the weekend are no sessions; the 27th is the half day.
    assert [s.trading_date.day for s in sessions] == [25, 27, 30]
    assert sessions[1].close.hour == 13
