"""Indicators: batch vs streaming vs IndicatorBank vs TA-Lib, VWAP sessions, bar aggregation."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
import talib

from core.clock import NEW_YORK
from trading.indicators import (
    Bar,
    BarAggregator,
    IndicatorBank,
    StreamingIndicators,
    atr,
    atr_percent,
    completed_bars,
    regular_open_epoch,
    rsi,
    session_vwap,
    true_range,
)

OPEN_2024_03_08 = datetime(2024, 3, 8, 9, 30, tzinfo=NEW_YORK).timestamp()  # Friday, EST
OPEN_2024_03_11 = datetime(2024, 3, 11, 9, 30, tzinfo=NEW_YORK).timestamp()  # Monday, EDT
TALIB_TOL = 1e-9
FORMS_TOL = 1e-12


def random_bars(
    seed: int, count: int, start: float = OPEN_2024_03_08, flat_from: int | None = None
) -> dict[str, np.ndarray]:
    """A cent-rounded random walk (many zero changes), optionally flat from `flat_from` on."""
    rng = np.random.default_rng(seed)
    close = np.round(50.0 + np.cumsum(rng.choice([-0.02, -0.01, 0.0, 0.0, 0.01, 0.02], count)), 2)
    if flat_from is not None:
        close[flat_from:] = close[flat_from]
    high = close + np.round(rng.uniform(0.0, 0.05, count), 2)
    low = close - np.round(rng.uniform(0.0, 0.05, count), 2)
    if flat_from is not None:
        high[flat_from:] = low[flat_from:] = close[flat_from:]
    volume = rng.integers(0, 5000, count).astype(float)
    volume[rng.random(count) < 0.1] = 0.0
    times = start + 30.0 * np.arange(count)
    return {"time": times, "high": high, "low": low, "close": close, "volume": volume}


def stream(data: dict[str, np.ndarray], **kwargs: object) -> dict[str, np.ndarray]:
    indicators = StreamingIndicators(**kwargs)  # type: ignore[arg-type]
    snapshots = [
        indicators.update(Bar(t, c, h, lo, c, v))
        for t, h, lo, c, v in zip(
            data["time"], data["high"], data["low"], data["close"], data["volume"], strict=True
        )
    ]
    return {name: np.array([getattr(s, name) for s in snapshots]) for name in snapshots[0]._fields}


def assert_same(actual: np.ndarray, expected: np.ndarray, tol: float) -> None:
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol, equal_nan=True)


# ------------------------------------------------------------------ RSI / ATR against TA-Lib


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("period", [14, 5])
def test_batch_and_streaming_match_talib_on_random_walk_with_flat_stretch(
    seed: int, period: int
) -> None:
    # A 300-bar flat stretch drives both RSI averages towards 0 and ATR towards 0.
    data = random_bars(seed, 1200, flat_from=700 if seed % 2 else None)
    h, lo, c = data["high"], data["low"], data["close"]
    expected_rsi = talib.RSI(c, timeperiod=period)
    expected_atr = talib.ATR(h, lo, c, timeperiod=period)

    batch_rsi, batch_atr = rsi(c, period), atr(h, lo, c, period)
    streamed = stream(data, rsi_period=period, atr_period=period)

    assert_same(batch_rsi, expected_rsi, TALIB_TOL)
    assert_same(batch_atr, expected_atr, TALIB_TOL)
    assert_same(streamed["rsi"], expected_rsi, TALIB_TOL)
    assert_same(streamed["atr"], expected_atr, TALIB_TOL)
    assert_same(streamed["rsi"], batch_rsi, FORMS_TOL)
    assert_same(streamed["atr"], batch_atr, FORMS_TOL)
    assert_same(streamed["atr_pct"], atr_percent(h, lo, c, period), FORMS_TOL)


def test_warmup_nan_region_matches_talib_lookback() -> None:
    data = random_bars(1, 60)
    h, lo, c = data["high"], data["low"], data["close"]
    for period in (2, 14, 30):
        assert np.flatnonzero(~np.isnan(rsi(c, period)))[0] == period
        assert np.flatnonzero(~np.isnan(atr(h, lo, c, period)))[0] == period
        assert np.flatnonzero(~np.isnan(talib.RSI(c, period)))[0] == period
        assert np.flatnonzero(~np.isnan(talib.ATR(h, lo, c, period)))[0] == period


def test_history_not_longer_than_period_is_all_nan() -> None:
    c = np.linspace(10, 11, 14)
    assert np.isnan(rsi(c)).all()
    assert np.isnan(atr(c + 0.1, c - 0.1, c)).all()
    assert np.isnan(talib.RSI(c)).all()


def test_rsi_is_100_when_there_are_no_losses_and_0_when_nothing_moves() -> None:
    rising = np.arange(30.0) + 10.0
    flat = np.full(30, 10.0)
    assert np.all(rsi(rising)[14:] == 100.0)
    assert np.all(talib.RSI(rising)[14:] == 100.0)
    # Both averages exactly 0: TA-Lib reports 0, not nan or 50.
    assert np.all(rsi(flat)[14:] == 0.0)
    assert np.all(talib.RSI(flat)[14:] == 0.0)
    assert np.all(stream(bars_from_close(flat))["rsi"][14:] == 0.0)


def test_rsi_decaying_averages_stay_50_like_talib_not_flushed_to_zero() -> None:
    # One up tick, one down tick, then 1000 flat bars: the averages shrink but never hit 0.
    close = np.full(1030, 10.0)
    close[3] = 10.01
    expected = talib.RSI(close)
    assert np.all(expected[14:] == pytest.approx(50.0))
    assert_same(rsi(close), expected, TALIB_TOL)
    assert_same(stream(bars_from_close(close))["rsi"], expected, TALIB_TOL)


def bars_from_close(close: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "time": OPEN_2024_03_08 + 30.0 * np.arange(close.size),
        "high": close,
        "low": close,
        "close": close,
        "volume": np.ones(close.size),
    }


def test_true_range_uses_previous_close_gaps() -> None:
    high = np.array([10.0, 10.5, 12.0, 9.0])
    low = np.array([9.0, 10.0, 11.5, 8.5])
    close = np.array([9.5, 10.2, 11.8, 8.8])
    # gap up: 12.0 - 10.2; gap down: 11.8 - 8.5
    np.testing.assert_allclose(true_range(high, low, close)[1:], [1.0, 1.8, 3.3])
    np.testing.assert_allclose(true_range(high, low, close), talib.TRANGE(high, low, close))


def test_atr_percent_is_atr_over_close_and_scale_free() -> None:
    data = random_bars(3, 100)
    h, lo, c = data["high"], data["low"], data["close"]
    expected = talib.ATR(h, lo, c) / c * 100.0
    assert_same(atr_percent(h, lo, c), expected, TALIB_TOL)
    # Prices ten times larger: ATR ten times larger, ATR% unchanged.
    np.testing.assert_allclose(atr(10 * h, 10 * lo, 10 * c)[14:], 10 * atr(h, lo, c)[14:])
    np.testing.assert_allclose(atr_percent(10 * h, 10 * lo, 10 * c)[14:], expected[14:])


def test_batch_accepts_one_row_per_symbol() -> None:
    rows = [random_bars(seed, 200) for seed in range(3)]
    close = np.stack([r["close"] for r in rows])
    high = np.stack([r["high"] for r in rows])
    low = np.stack([r["low"] for r in rows])
    for i in range(3):
        assert_same(rsi(close)[i], rsi(close[i]), FORMS_TOL)
        assert_same(atr(high, low, close)[i], talib.ATR(high[i], low[i], close[i]), TALIB_TOL)


def test_batch_of_many_symbols_matches_talib_row_by_row() -> None:
    rows = [
        random_bars(100 + seed, 150, flat_from=100 if seed % 3 == 0 else None) for seed in range(40)
    ]
    close = np.stack([r["close"] for r in rows])
    high = np.stack([r["high"] for r in rows])
    low = np.stack([r["low"] for r in rows])
    batch_rsi, batch_atr = rsi(close), atr(high, low, close)
    for i in range(len(rows)):
        assert_same(batch_rsi[i], talib.RSI(close[i]), TALIB_TOL)
        assert_same(batch_atr[i], talib.ATR(high[i], low[i], close[i]), TALIB_TOL)
        assert_same(batch_rsi[i], rsi(close[i]), FORMS_TOL)


def test_bad_period_and_shapes_raise() -> None:
    with pytest.raises(ValueError):
        rsi(np.arange(20.0), period=1)
    with pytest.raises(ValueError):
        atr(np.ones(20), np.ones(19), np.ones(20))
    with pytest.raises(ValueError):
        StreamingIndicators(rsi_period=0)


# ------------------------------------------------------------------------------------ VWAP


def test_vwap_by_hand_with_zero_volume_bar_and_nan_before_volume() -> None:
    t = OPEN_2024_03_08 + 30.0 * np.arange(4)
    high = np.array([11.0, 13.0, 20.0, 12.0])
    low = np.array([9.0, 11.0, 20.0, 9.0])
    close = np.array([10.0, 12.0, 20.0, 12.0])
    volume = np.array([0.0, 100.0, 0.0, 300.0])
    # typical prices 10, 12, 20, 11; the zero-volume bars do not count
    expected = [np.nan, 12.0, 12.0, (12.0 * 100 + 11.0 * 300) / 400]

    vwap = session_vwap(t, high, low, close, volume)
    streamed = stream({"time": t, "high": high, "low": low, "close": close, "volume": volume})

    np.testing.assert_allclose(vwap, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(streamed["vwap"], expected, rtol=0, atol=1e-12)


def test_vwap_ignores_pre_market_and_restarts_each_session() -> None:
    # Friday 09:29:00..09:31:00 and Monday (after the DST change) 09:29:30..09:30:30
    times = np.array(
        [
            *(OPEN_2024_03_08 + s for s in (-60, -30, 0, 30)),
            *(OPEN_2024_03_11 + s for s in (-30, 0, 30)),
        ]
    )
    price = np.array([100.0, 100.0, 10.0, 20.0, 50.0, 30.0, 40.0])
    volume = np.array([1e6, 1e6, 1.0, 3.0, 5.0, 1.0, 1.0])
    expected = [np.nan, np.nan, 10.0, 17.5, np.nan, 30.0, 35.0]

    vwap = session_vwap(times, price, price, price, volume)
    streamed = stream(
        {"time": times, "high": price, "low": price, "close": price, "volume": volume}
    )

    np.testing.assert_allclose(vwap, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(streamed["vwap"], expected, rtol=0, atol=1e-12)


def test_vwap_with_fixed_session_open_does_not_restart() -> None:
    times = np.array([OPEN_2024_03_08 - 30, OPEN_2024_03_08, OPEN_2024_03_11])
    price = np.array([100.0, 10.0, 30.0])
    volume = np.array([5.0, 1.0, 1.0])
    vwap = session_vwap(times, price, price, price, volume, session_open_epoch=OPEN_2024_03_08)
    np.testing.assert_allclose(vwap, [np.nan, 10.0, 20.0])


def test_regular_open_follows_new_york_daylight_saving() -> None:
    assert regular_open_epoch(OPEN_2024_03_08 + 3600 * 5) == OPEN_2024_03_08
    assert OPEN_2024_03_11 - OPEN_2024_03_08 == 3 * 86400 - 3600
    assert regular_open_epoch(OPEN_2024_03_11 - 9 * 3600) == OPEN_2024_03_11  # 00:30 New York


def test_vwap_rejects_unsorted_times() -> None:
    with pytest.raises(ValueError):
        session_vwap([2.0, 1.0], [1, 1], [1, 1], [1, 1], [1, 1])


# --------------------------------------------------------------------- streaming and the bank


def test_streaming_vwap_matches_batch_over_two_days() -> None:
    first = random_bars(7, 900, start=OPEN_2024_03_08 - 600)
    second = random_bars(8, 900, start=OPEN_2024_03_11 - 600)
    data = {k: np.concatenate([first[k], second[k]]) for k in first}
    batch = session_vwap(data["time"], data["high"], data["low"], data["close"], data["volume"])
    streamed = stream(data)
    assert_same(streamed["vwap"], batch, FORMS_TOL)
    assert np.isnan(streamed["vwap"][900])  # Monday pre-market after Friday's session


def test_streaming_rejects_bar_not_after_previous() -> None:
    indicators = StreamingIndicators()
    indicators.update(Bar(OPEN_2024_03_08, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError):
        indicators.update(Bar(OPEN_2024_03_08, 1, 1, 1, 1, 1))


def test_bank_and_batch_agree_with_talib_at_every_bar_of_every_symbol() -> None:
    """Over the whole series, not the last bar: the bank's RSI and ATR after each bar are
    TA-Lib's values at that index, for every symbol, warm-up NaNs included."""
    rows = [random_bars(300 + seed, 400, flat_from=250 if seed == 2 else None) for seed in range(6)]
    close = np.stack([r["close"] for r in rows])
    high = np.stack([r["high"] for r in rows])
    low = np.stack([r["low"] for r in rows])
    volume = np.stack([r["volume"] for r in rows])
    expected_rsi = np.stack([talib.RSI(close[i]) for i in range(len(rows))])
    expected_atr = np.stack([talib.ATR(high[i], low[i], close[i]) for i in range(len(rows))])
    bank = IndicatorBank([f"S{i}" for i in range(len(rows))])

    streamed_rsi, streamed_atr = np.empty(close.shape), np.empty(close.shape)
    for k in range(close.shape[1]):
        snapshot = bank.update(
            OPEN_2024_03_08 + 30.0 * k, high[:, k], low[:, k], close[:, k], volume[:, k]
        )
        streamed_rsi[:, k], streamed_atr[:, k] = snapshot.rsi, snapshot.atr

    assert_same(streamed_rsi, expected_rsi, TALIB_TOL)
    assert_same(streamed_atr, expected_atr, TALIB_TOL)
    assert_same(rsi(close), expected_rsi, TALIB_TOL)
    assert_same(atr(high, low, close), expected_atr, TALIB_TOL)
    assert_same(atr_percent(high, low, close), expected_atr / close * 100.0, TALIB_TOL)


def test_bank_equals_per_symbol_streaming_with_missing_bars_across_sessions() -> None:
    rng = np.random.default_rng(11)
    symbols = ["AAA", "BBB", "CCC", "DDD", "EEE"]
    per_symbol = [random_bars(20 + i, 1000) for i in range(len(symbols))]
    times = np.concatenate(
        [
            OPEN_2024_03_08 - 300 + 30.0 * np.arange(500),
            OPEN_2024_03_11 - 300 + 30.0 * np.arange(500),
        ]
    )
    present = rng.random((len(symbols), times.size)) < 0.8
    present[0] = True  # one symbol never misses a bar: the all-rows path

    bank = IndicatorBank(symbols)
    singles = [StreamingIndicators() for _ in symbols]
    compared = 0
    for k, t in enumerate(times):
        column = {name: np.array([d[name][k] for d in per_symbol]) for name in per_symbol[0]}
        mask = present[:, k]
        snapshot = bank.update(
            t, column["high"], column["low"], column["close"], column["volume"], updated=mask
        )
        for i in np.flatnonzero(mask):
            expected = singles[i].update(
                Bar(t, 0.0, column["high"][i], column["low"][i], column["close"][i],
                    column["volume"][i])
            )  # fmt: skip
            actual = bank.snapshot_of(symbols[i])
            assert actual.ready == expected.ready == bool(snapshot.ready[i])
            np.testing.assert_allclose(actual[:6], expected[:6], rtol=0, atol=FORMS_TOL)
            compared += 1
    assert compared > 3500
    assert bank.snapshot().ready.all()


def test_bank_keeps_values_of_symbols_without_a_bar() -> None:
    bank = IndicatorBank(["AAA", "BBB"])
    bank.update(OPEN_2024_03_08, [2.0, 4.0], [1.0, 2.0], [1.5, 3.0], [10.0, 10.0])
    after = bank.update(
        OPEN_2024_03_08 + 30, [9.0, 9.0], [9.0, 9.0], [9.0, 9.0], [10.0, 10.0], [True, False]
    )
    assert after.close.tolist() == [9.0, 3.0]
    assert after.time.tolist() == [OPEN_2024_03_08 + 30, OPEN_2024_03_08]
    assert after.vwap[1] == 3.0


def test_warmup_counts_down_to_ready() -> None:
    indicators = StreamingIndicators(rsi_period=14, atr_period=5)
    bank = IndicatorBank(["AAA"], rsi_period=14, atr_period=5)
    assert indicators.warmup() == (15, 6, False)
    assert bank.warmup().rsi_bars.tolist() == [15]
    volumes = [0.0] * 10 + [100.0] * 10
    for n, volume in enumerate(volumes, start=1):
        t = OPEN_2024_03_08 + 30 * n
        snapshot = indicators.update(Bar(t, 10.0, 10.0 + n % 3, 9.0, 10.0 + n % 2, volume))
        bank.update(t, [10.0 + n % 3], [9.0], [10.0 + n % 2], [volume])
        status = indicators.warmup()
        assert status.rsi_bars == max(0, 15 - n)
        assert status.atr_bars == max(0, 6 - n)
        assert status.vwap_has_volume == (n > 10)
        assert np.isnan(snapshot.rsi) == (n < 15)
        assert np.isnan(snapshot.atr) == (n < 6)
        assert snapshot.ready == status.ready == (n >= 15)
        assert bank.warmup() == (
            [status.rsi_bars],
            [status.atr_bars],
            [status.vwap_has_volume],
        )


# -------------------------------------------------------------------------------- bar building


def five_second_bar(t: float, price: float, volume: float = 1.0) -> Bar:
    return Bar(t, price, price + 0.5, price - 0.5, price + 0.1, volume)


def test_aggregator_emits_aligned_window_when_its_last_5s_bar_arrives() -> None:
    aggregator = BarAggregator()
    base = 1_700_000_010.0  # a multiple of 30
    assert base % 30 == 0
    emitted = [b for i in range(6) for b in aggregator.add(five_second_bar(base + 5 * i, 10.0 + i))]
    assert emitted == [Bar(base, 10.0, 15.5, 9.5, 15.1, 6.0)]
    assert aggregator.pending is None


def flat(t: float, previous_close: float) -> Bar:
    """IB's 5-s bar for seconds without trades: flat at the previous close, no volume."""
    return Bar(t, previous_close, previous_close, previous_close, previous_close, 0.0)


def test_aggregator_takes_no_price_from_5s_bars_without_trades() -> None:
    # The 30-s history bar of this window holds only its trades (10.0 .. 12.6); the flat
    # bars at the previous close 9.0 must not become its open and low.
    aggregator = BarAggregator()
    base = 1_700_000_010.0
    bars = [flat(base, 9.0), five_second_bar(base + 5, 10.0), flat(base + 10, 10.1)]
    bars += [five_second_bar(base + 15, 12.0), flat(base + 20, 12.1), flat(base + 25, 12.1)]
    emitted = [b for bar in bars for b in aggregator.add(bar)]
    assert emitted == [Bar(base, 10.0, 12.5, 9.5, 12.1, 2.0)]


def test_aggregator_window_without_trades_is_flat_with_no_volume() -> None:
    aggregator = BarAggregator()
    base = 1_700_000_010.0
    emitted = [b for i in range(6) for b in aggregator.add(flat(base + 5 * i, 9.0))]
    assert emitted == [Bar(base, 9.0, 9.0, 9.0, 9.0, 0.0)]


def test_aggregator_starting_mid_window_aligns_to_the_clock() -> None:
    aggregator = BarAggregator()
    base = 1_700_000_010.0
    assert aggregator.add(five_second_bar(base + 20, 10.0)) == []
    (bar,) = aggregator.add(five_second_bar(base + 25, 11.0))
    assert bar.time == base
    assert bar.volume == 2.0


def test_aggregator_gap_does_not_merge_windows() -> None:
    aggregator = BarAggregator()
    base = 1_700_000_010.0
    aggregator.add(five_second_bar(base, 10.0))
    aggregator.add(five_second_bar(base + 5, 11.0))
    # next window is skipped entirely; the first bar of a later window closes the old one
    emitted = aggregator.add(five_second_bar(base + 60, 20.0))
    assert emitted == [Bar(base, 10.0, 11.5, 9.5, 11.1, 2.0)]
    assert aggregator.pending == Bar(base + 60, 20.0, 20.5, 19.5, 20.1, 1.0)


def test_aggregator_gap_then_closing_bar_emits_two() -> None:
    aggregator = BarAggregator()
    base = 1_700_000_010.0
    aggregator.add(five_second_bar(base, 10.0))
    emitted = aggregator.add(five_second_bar(base + 55, 20.0))
    assert [b.time for b in emitted] == [base, base + 30]


def test_aggregator_ignores_duplicates_out_of_order_and_replays() -> None:
    aggregator = BarAggregator()
    base = 1_700_000_010.0
    aggregator.add(five_second_bar(base, 10.0))
    aggregator.add(five_second_bar(base + 10, 12.0))
    assert aggregator.add(five_second_bar(base + 10, 99.0)) == []  # duplicate
    assert aggregator.add(five_second_bar(base + 5, 99.0)) == []  # out of order
    (bar,) = aggregator.add(five_second_bar(base + 25, 13.0))
    assert bar == Bar(base, 10.0, 13.5, 9.5, 13.1, 3.0)
    # a reconnect replays the whole window: nothing new
    assert all(aggregator.add(five_second_bar(base + 5 * i, 99.0)) == [] for i in range(6))
    assert aggregator.pending is None


def test_aggregator_flush_if_due_and_late_bar_after_flush() -> None:
    aggregator = BarAggregator()
    base = 1_700_000_010.0
    aggregator.add(five_second_bar(base, 10.0))
    assert aggregator.flush_if_due(base + 29) is None
    assert aggregator.flush_if_due(base + 30) == Bar(base, 10.0, 10.5, 9.5, 10.1, 1.0)
    assert aggregator.add(five_second_bar(base + 20, 99.0)) == []  # its window was emitted


def test_aggregator_rejects_misaligned_sizes() -> None:
    with pytest.raises(ValueError):
        BarAggregator(bar_seconds=30, source_seconds=7)


def test_completed_bars_excludes_in_progress_last_bar() -> None:
    history = [Bar(1000.0 + 30 * i, 1, 1, 1, 1, 1) for i in range(4)]
    assert completed_bars(history) == history[:3]
    assert completed_bars(history, after=1030.0) == history[2:3]
    assert completed_bars(history[:1]) == []
    assert completed_bars([]) == []
    # the last bar updates in place: still nothing new until a newer bar starts
    updated = [*history[:3], history[3]._replace(close=2.0, volume=5.0)]
    assert completed_bars(updated, after=1060.0) == []
    assert completed_bars([*updated, Bar(1120.0, 2, 2, 2, 2, 1)], after=1060.0) == [updated[3]]


def test_adding_a_bar_gives_the_snapshot_update_returns_made_only_when_read() -> None:
    """The feed adds every bar with `add` (no snapshot per bar: most are never read); what
    `last` then shows is what `update` returns, bit for bit, warm-up included."""
    rng = np.random.default_rng(5)
    updated, added = StreamingIndicators(), StreamingIndicators()
    assert added.last is None
    start = 1_764_340_200.0  # 09:30 New York
    for i in range(60):
        close = round(20.0 + rng.normal(0, 0.2), 2)
        volume = float(rng.choice([0.0, 300.0]))
        bar = Bar(start + 30 * i, close, close + 0.03, close - 0.03, close, volume)
        expected = updated.update(bar)
        added.add(bar)
        assert added.warmup() == updated.warmup()
        assert np.array_equal(np.array(added.last), np.array(expected), equal_nan=True)
        assert added.last is added.last  # made once per bar, when read
