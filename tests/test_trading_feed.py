"""The per-symbol feed (trading.feed.SymbolFeed) on the recorded sample: which bars reach
the indicators, where the gap comes from, and that the stream and the history seed agree,
at any speed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from core.clock import MarketClock
from ib.market_data import bar_from_ib
from ibsim.marketdata import BarSub
from tests.stepped_gateway import FAST_STEP, SAMPLE, SLOW_STEP, Recorder, at, sample_gateway
from trading.feed import NO_QUOTE, SymbolFeed, gap_percent
from trading.indicators import Bar, BarAggregator

PREV_CLOSE = 254.08  # the sample's prev_close column


def new_feed() -> SymbolFeed:
    feed = SymbolFeed("MSFT", MarketClock())
    feed.on_quote(NO_QUOTE._replace(symbol="MSFT", prev_close=PREV_CLOSE))  # IB's tick 9
    return feed


def live_feed(step: float, start: float, end: float) -> SymbolFeed:
    """The feed as the trader builds it from the stream: 5-s real-time bars into 30-s bars."""
    sim = sample_gateway(start)
    recorder = Recorder()
    sim.gateway.marketdata.bar_subs.append(BarSub(recorder, 7, "MSFT", True, 5, False, 2))
    sim.drive(end, step)
    feed, aggregator = new_feed(), BarAggregator()
    feed.seed([])
    for start_s, o, h, lo, c, volume in recorder.realtime_bars():
        for bar in aggregator.add(Bar(start_s, o, h, lo, c, volume)):
            feed.on_live_bar(bar)
    return feed


def seeded_feed(end: float) -> SymbolFeed:
    """The feed as the trader seeds it: today's 30-s history from 04:00 (useRTH false)."""
    sim = sample_gateway(end)
    history = sim.gateway.marketdata.bars("MSFT", at(4, 0), end, 30, False)
    feed = new_feed()
    feed.seed([bar_from_ib(SimpleNamespace(date=b.time, **_ohlcv(b))) for b in history])
    return feed


def _ohlcv(b) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {"open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume}


def last_premarket_trade() -> float:
    rows = pd.read_csv(SAMPLE)
    times = pd.to_datetime(rows["time"], format="ISO8601")
    pre = rows[(times.dt.strftime("%H:%M") < "09:30") & (rows["volume"] > 0)]
    return float(pre["close"].iloc[-1])


def test_stream_and_history_seed_give_the_same_indicators_across_a_no_trade_minute() -> None:
    # 09:47 has no trades in the sample: the stream sends 12 flat 5-s bars, history none.
    end = at(10, 0)
    live, seeded = live_feed(FAST_STEP, at(9, 19, 53), end), seeded_feed(end)
    a, b = live.indicators.last, seeded.indicators.last
    assert a is not None and b is not None and a.time == b.time == at(9, 59, 30)
    for name in ("close", "vwap", "rsi", "atr", "atr_pct"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12), name
    assert 0 < a.rsi < 100


def test_pre_market_and_no_trade_bars_never_reach_the_indicators() -> None:
    # At 09:36:30 13 regular bars have closed, 15 are needed: RSI and ATR are still warming
    # up, not computed over pre-market bars (flat ones pinned RSI at 0 or 100 at the open).
    feed = live_feed(FAST_STEP, at(9, 19, 53), at(9, 36, 30))
    warm = feed.indicators.warmup()
    assert (warm.rsi_bars, warm.atr_bars) == (2, 2)
    assert math.isnan(feed.indicators.last.rsi)
    assert feed.last_bar_time == at(9, 36)  # the stream itself is fresh


@pytest.mark.parametrize("step", [SLOW_STEP, FAST_STEP])
def test_the_gap_is_the_last_pre_market_trade_at_any_speed(step: float) -> None:
    feed = live_feed(step, at(9, 19, 53), at(9, 31))
    expected = gap_percent(last_premarket_trade(), PREV_CLOSE)
    assert feed.gap_pct() == pytest.approx(expected, abs=1e-12)
    assert seeded_feed(at(9, 31)).gap_pct() == pytest.approx(expected, abs=1e-12)


def test_without_a_pre_market_trade_the_gap_reference_is_the_previous_close() -> None:
    feed = new_feed()
    feed.on_bar(Bar(at(10, 0), 250.0, 251.0, 249.0, 250.5, 1000))  # regular hours only
    assert feed.gap_pct() == 0.0


def test_the_snapshot_carries_the_bar_close_the_rules_read() -> None:
    feed = seeded_feed(at(10, 0))
    feed.on_quote(feed.quote._replace(last=999.0))  # a later trade: not what the rules
    # compare with VWAP
    snap = feed.snapshot()
    assert snap.close == feed.indicators.last.close != snap.last


class CountingCalendar:
    """The exchange calendar, counting its look-ups."""

    def __init__(self) -> None:
        self.clock, self.lookups = MarketClock(), 0

    def session(self, day):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return self.clock.session(day)


def test_the_session_is_looked_up_once_a_day_not_once_a_bar_and_half_days_end_at_13() -> None:
    """Each bar looked its day's session up (a date and two timestamps per bar: most of a
    backtest's time). Once a day now, and the half day's 13:00 close still ends its bars."""
    calendar = CountingCalendar()
    feed = SymbolFeed("MSFT", calendar)
    taken = []
    for day in ("2026-11-25", "2026-11-27"):  # a full day, then the half day after Thanksgiving
        start = pd.Timestamp(f"{day} 08:00", tz="America/New_York").timestamp()
        for i in range(2 * 9 * 60):  # 08:00 to 17:00
            t = start + 30 * i
            before = feed.indicators.last
            feed.on_bar(Bar(t, 10.0, 10.1, 9.9, 10.0 + 0.01 * (i % 3), 100))
            if feed.indicators.last is not before:
                taken.append(pd.Timestamp(t, unit="s", tz="America/New_York").strftime("%H:%M"))
    assert calendar.lookups == 2
    full, half = 13 * 60, 7 * 60  # 09:30-16:00 and 09:30-13:00 in 30-s bars
    assert len(taken) == full + half
    assert (taken[0], taken[full - 1], taken[full], taken[-1]) == (
        "09:30",
        "15:59",
        "09:30",
        "12:59",
    )
    assert feed.premarket_close == 10.0 + 0.01 * ((2 * 90 - 1) % 3)  # the last bar before 09:30
