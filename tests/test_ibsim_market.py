"""The simulated market: determinism, no look-ahead, bars vs quotes, tradeable days, replay."""

from __future__ import annotations

import math
import time as pytime
from datetime import date, datetime, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.clock import NEW_YORK
from ibsim.market import Bar, Market, MarketConfig

DAY = date(2026, 3, 16)  # a Monday, full session
HALF_DAY = date(2026, 11, 27)  # day after Thanksgiving, closes 13:00


def at(day: date, hh: int, mm: int, ss: int = 0) -> float:
    return datetime.combine(day, time(hh, mm, ss), NEW_YORK).timestamp()


@pytest.fixture(scope="module")
def closed_market() -> Market:
    """The default 50-symbol day, advanced to the regular close (read-only for tests)."""
    market = Market(MarketConfig(DAY))
    market.advance(at(DAY, 16, 0))
    return market


def regular_bars(market: Market, symbol: str, day: date, seconds: int = 30) -> list[Bar]:
    return market.bars(symbol, at(day, 9, 30), at(day, 16, 0), seconds)


def arrays(bars: list[Bar]) -> dict[str, np.ndarray]:
    return {f: np.array([getattr(b, f) for b in bars]) for f in ("open", "high", "low", "close",
                                                                    "volume", "time")}  # fmt: skip


def vwap(b: dict[str, np.ndarray]) -> np.ndarray:
    typical = (b["high"] + b["low"] + b["close"]) / 3
    return np.cumsum(typical * b["volume"]) / np.cumsum(b["volume"])


def wilder(values: np.ndarray, period: int = 14) -> np.ndarray:
    out = np.full(values.size, np.nan)
    if values.size < period:
        return out
    out[period - 1] = values[:period].mean()
    for i in range(period, values.size):
        out[i] = (out[i - 1] * (period - 1) + values[i]) / period
    return out


def rsi(close: np.ndarray, period: int = 14) -> np.ndarray:
    change = np.diff(close, prepend=close[0])
    gain = wilder(np.maximum(change, 0), period)
    loss = wilder(np.maximum(-change, 0), period)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(loss == 0, 100.0, 100 - 100 / (1 + gain / loss))


def atr(b: dict[str, np.ndarray], period: int = 14) -> np.ndarray:
    prev_close = np.r_[b["close"][0], b["close"][:-1]]
    true_range = np.maximum(b["high"], prev_close) - np.minimum(b["low"], prev_close)
    return wilder(true_range, period)


# -- determinism and universe ------------------------------------------------------------------
def test_same_config_gives_the_same_day_bit_for_bit() -> None:
    config = MarketConfig(DAY, symbols=6, seed=11)
    first, second = Market(config), Market(config)
    assert first.symbols == second.symbols
    for when in (at(DAY, 4, 0, 30), at(DAY, 9, 30), at(DAY, 12, 0, 7), at(DAY, 19, 59, 59)):
        # repr compares floats exactly and treats the pre-open nan fields as equal.
        assert repr(first.advance(when)) == repr(second.advance(when))
    for symbol in first.symbols:
        assert first.bars(symbol, 0, 2e9, 1) == second.bars(symbol, 0, 2e9, 1)
    other_seed = Market(MarketConfig(DAY, symbols=6, seed=12))
    assert other_seed.symbols != first.symbols


def test_a_symbol_keeps_its_path_in_a_larger_universe() -> None:
    small = Market(MarketConfig(DAY, symbols=3, seed=5))
    large = Market(MarketConfig(DAY, symbols=8, seed=5))
    assert list(large.symbols)[:3] == list(small.symbols)
    for market in (small, large):
        market.advance(at(DAY, 11, 0))
    # A universe without a natural gapper promotes one symbol; every other path is shared.
    same = [s for s in small.symbols if repr(small.quote(s)) == repr(large.quote(s))]
    assert len(same) >= len(small.symbols) - 1


def test_build_and_whole_day_advance_are_cheap() -> None:
    # CPU time, not wall time, so a busy machine does not make this flaky.
    started = pytime.process_time()
    market = Market(MarketConfig(DAY, symbols=50, seed=21))
    built = pytime.process_time()
    market.advance(at(DAY, 20, 0))  # 57,600 seconds in one call
    advanced = pytime.process_time()
    assert built - started < 2.0
    assert advanced - built < 0.1


def test_universe_is_plausible(closed_market: Market) -> None:
    specs = list(closed_market.symbols.values())
    assert len(specs) == 50
    assert all(s.symbol.isalpha() and s.symbol.isupper() and 3 <= len(s.symbol) <= 4 for s in specs)
    assert len({s.con_id for s in specs}) == 50
    assert {s.primary_exchange for s in specs} <= {"NASDAQ", "NYSE"}
    prices = [s.prev_close for s in specs]
    assert min(prices) > 3 and max(prices) < 400 and max(prices) / min(prices) > 10
    assert all(closed_market.previous_close(s.symbol) == s.prev_close for s in specs)


# -- quotes ----------------------------------------------------------------------------------
def test_quotes_are_tick_rounded_in_round_lots_with_bid_below_ask() -> None:
    market = Market(MarketConfig(DAY, symbols=10, seed=3))
    last_volume = {s: 0 for s in market.symbols}
    steps = 0
    for when in np.arange(at(DAY, 3, 59), at(DAY, 20, 1), 97.0):
        for q in market.advance(float(when)):
            steps += 1
            assert 0 < q.bid < q.ask, q
            for price in (q.bid, q.ask, q.last):
                assert price > 0 and abs(price * 100 - round(price * 100)) < 1e-6, q
            assert q.bid_size % 100 == 0 and q.ask_size % 100 == 0 and q.bid_size > 0
            assert q.volume >= last_volume[q.symbol]
            last_volume[q.symbol] = q.volume
            if at(DAY, 9, 30, 5) <= q.time < at(DAY, 16, 0):  # after hours may pass the high
                assert q.low <= q.last <= q.high and q.low <= q.open <= q.high
            elif q.time < at(DAY, 9, 30):
                assert math.isnan(q.open) and math.isnan(q.high)
    assert steps > 5000


def test_advance_returns_each_changed_symbol_once_and_never_goes_back() -> None:
    market = Market(MarketConfig(DAY, symbols=5))
    quotes = market.advance(at(DAY, 10, 0))
    assert sorted(q.symbol for q in quotes) == sorted(market.symbols)
    assert market.time == at(DAY, 10, 0)
    assert market.advance(at(DAY, 10, 0)) == []  # nothing new at the same time
    assert market.advance(at(DAY, 9, 0)) == []  # the past is not replayed
    assert market.time == at(DAY, 10, 0)
    later = market.advance(at(DAY, 10, 0, 1))
    assert len({q.symbol for q in later}) == len(later)
    assert all(q == market.quote(q.symbol) for q in later)
    with pytest.raises(KeyError, match="ZZZZZ"):
        market.quote("ZZZZZ")


def test_before_4am_the_quote_is_the_previous_close() -> None:
    market = Market(MarketConfig(DAY, symbols=3))
    market.advance(at(DAY, 3, 0))
    for symbol, spec in market.symbols.items():
        q = market.quote(symbol)
        assert q.last == spec.prev_close and q.volume == 0 and q.bid < q.ask


def test_quote_at_a_past_time_is_the_quote_that_time_had_with_its_session_stats() -> None:
    """What a delayed feed shows: a second market stopped at the earlier time agrees."""
    market = Market(MarketConfig(DAY, symbols=4))
    then = Market(MarketConfig(DAY, symbols=4))
    market.advance(at(DAY, 11, 0))
    then.advance(at(DAY, 10, 45, 30))
    for symbol in market.symbols:
        assert market.quote_at(symbol, at(DAY, 10, 45, 30)) == then.quote(symbol)
        assert market.quote_at(symbol, at(DAY, 12, 0)) == market.quote(symbol)  # not ahead
    early = market.quote_at(symbol, at(DAY, 9, 0))  # pre-market: no session stats yet
    assert math.isnan(early.open) and math.isnan(early.high) and math.isnan(early.low)


# -- bars --------------------------------------------------------------------------------------
def test_bars_never_look_ahead() -> None:
    market = Market(MarketConfig(DAY, symbols=2))
    symbol = next(iter(market.symbols))
    now = at(DAY, 10, 0, 14) + 0.5
    market.advance(now)
    bars = market.bars(symbol, at(DAY, 9, 30), at(DAY, 16, 0), 30)
    assert bars[-1].time == at(DAY, 10, 0)  # the partial bar in progress, nothing later
    assert bars[-1].close == market.quote(symbol).last
    assert market.bars(symbol, now + 1, at(DAY, 16, 0), 1) == []
    market.advance(at(DAY, 15, 0))
    again = market.bars(symbol, at(DAY, 9, 30), at(DAY, 10, 0), 30)
    assert again == bars[:-1]  # completed history does not change as time moves on


def test_30s_bar_close_is_the_last_at_its_end_and_volumes_add_up() -> None:
    market = Market(MarketConfig(DAY, symbols=3, seed=9))
    symbols = list(market.symbols)
    closes: dict[str, list[float]] = {s: [] for s in symbols}
    volumes: dict[str, list[int]] = {s: [] for s in symbols}
    for bar_start in np.arange(at(DAY, 9, 30), at(DAY, 11, 0), 30.0):
        market.advance(float(bar_start) + 29.5)  # inside the bar's last second
        for s in symbols:
            closes[s].append(market.quote(s).last)
            volumes[s].append(market.quote(s).volume)
    for s in symbols:
        bars30 = market.bars(s, at(DAY, 9, 30), at(DAY, 11, 0), 30)
        assert len(bars30) == 180
        assert [b.close for b in bars30] == closes[s]
        assert [b.volume for b in bars30[1:]] == np.diff(volumes[s]).tolist()
        assert all(b.low <= min(b.open, b.close) and b.high >= max(b.open, b.close) for b in bars30)
        assert all(b.low <= b.wap <= b.high for b in bars30)
        bars60 = market.bars(s, at(DAY, 9, 30), at(DAY, 11, 0), 60)
        pairs = np.array([b.volume for b in bars30]).reshape(-1, 2)
        assert [b.volume for b in bars60] == pairs.sum(axis=1).tolist()
        assert [b.high for b in bars60] == [max(a.high, b.high) for a, b in
                                            zip(bars30[::2], bars30[1::2], strict=True)]  # fmt: skip
        whole_day = market.bars(s, 0, 2e9, 86400)
        assert len(whole_day) == 1 and whole_day[0].volume == market.quote(s).volume
    with pytest.raises(ValueError, match="bar_seconds 7"):
        market.bars(symbols[0], 0, 2e9, 7)


# -- a tradeable day -----------------------------------------------------------------------------
def test_some_symbols_gap_up_5pct_at_4am_and_hold_it_into_the_open(closed_market: Market) -> None:
    gappers = []
    for symbol, spec in closed_market.symbols.items():
        print_at_4 = closed_market.bars(symbol, at(DAY, 4, 0), at(DAY, 4, 0, 1), 1)
        gap_at_4 = bool(print_at_4) and print_at_4[0].open >= 1.05 * spec.prev_close
        if gap_at_4 and closed_market.quote(symbol).open >= 1.05 * spec.prev_close:
            gappers.append(symbol)
    assert 2 <= len(gappers) <= 15


@pytest.mark.parametrize("seed", range(12))
def test_every_seed_has_a_gapper(seed: int) -> None:
    market = Market(MarketConfig(DAY, symbols=4, seed=seed))
    market.advance(at(DAY, 9, 31))
    assert any(q.open >= 1.05 * q.prev_close for q in map(market.quote, market.symbols))


def test_prices_cross_vwap_and_the_entry_rule_triggers_with_targets_and_stops_hit(
    closed_market: Market,
) -> None:
    crossings, triggered, outcomes = [], [], []
    for symbol in closed_market.symbols:
        b = arrays(regular_bars(closed_market, symbol, DAY))
        session_vwap = vwap(b)
        above = b["close"] > session_vwap
        crossings.append(int(np.count_nonzero(above[1:] != above[:-1])))
        entry = above & (rsi(b["close"]) < 60) & (atr(b) / b["close"] >= 0.003)
        entry[:14] = False  # indicators need 14 bars
        if not entry.any():
            continue
        triggered.append(symbol)
        i = int(np.argmax(entry))
        price = b["close"][i]
        hit_target = np.flatnonzero(b["high"][i + 1 :] >= price * 1.018)
        hit_stop = np.flatnonzero(b["low"][i + 1 :] <= price * 0.991)
        first_target = hit_target[0] if hit_target.size else math.inf
        first_stop = hit_stop[0] if hit_stop.size else math.inf
        if first_target != first_stop:
            outcomes.append("target" if first_target < first_stop else "stop")
    assert np.median(crossings) >= 4, crossings
    assert np.mean(np.array(crossings) >= 2) >= 0.8, crossings
    assert len(triggered) >= 5, triggered
    assert "target" in outcomes and "stop" in outcomes, outcomes


def test_volume_is_u_shaped_and_thin_outside_regular_hours(closed_market: Market) -> None:
    def volume(symbol: str, start: float, end: float) -> int:
        return sum(b.volume for b in closed_market.bars(symbol, start, end, 300))

    share = {"open": 0, "midday": 0, "close": 0, "pre": 0}
    for symbol in closed_market.symbols:
        share["open"] += volume(symbol, at(DAY, 9, 31), at(DAY, 10, 0))  # past the open print
        share["midday"] += volume(symbol, at(DAY, 12, 30), at(DAY, 13, 0))
        share["close"] += volume(symbol, at(DAY, 15, 30), at(DAY, 15, 59))
        share["pre"] += volume(symbol, at(DAY, 8, 0), at(DAY, 8, 30))
    assert share["open"] > 2 * share["midday"] and share["close"] > 1.3 * share["midday"]
    assert share["pre"] < 0.3 * share["midday"]


def test_half_day_ends_regular_volume_at_1pm() -> None:
    market = Market(MarketConfig(HALF_DAY, symbols=5))
    market.advance(at(HALF_DAY, 15, 0))
    for symbol in market.symbols:
        before = sum(
            b.volume for b in market.bars(symbol, at(HALF_DAY, 12, 0), at(HALF_DAY, 13, 0), 60)
        )
        after = sum(
            b.volume for b in market.bars(symbol, at(HALF_DAY, 13, 0), at(HALF_DAY, 14, 0), 60)
        )
        assert after < 0.1 * before
        # Regular-session high/low stop at 13:00: later after-hours prints do not move them.
        regular = market.bars(symbol, at(HALF_DAY, 9, 30), at(HALF_DAY, 13, 0), 86400)[0]
        q = market.quote(symbol)
        assert (q.high, q.low) == (regular.high, regular.low)


# -- set_price ---------------------------------------------------------------------------------
def test_set_price_moves_the_path_and_later_moves_continue_from_there() -> None:
    config = MarketConfig(DAY, symbols=3, seed=4)
    moved, untouched = Market(config), Market(config)
    symbol = list(moved.symbols)[1]
    for market in (moved, untouched):
        market.advance(at(DAY, 11, 0))
    target = round(untouched.quote(symbol).last * 1.2, 2)
    q = moved.set_price(symbol, target)
    assert q.last == target and q.bid <= target <= q.ask
    assert moved.advance(at(DAY, 11, 0)) == [q]  # the next advance reports it
    assert moved.quote(symbol).high >= target
    moved.advance(at(DAY, 11, 30))
    untouched.advance(at(DAY, 11, 30))
    ratio = moved.quote(symbol).bid / untouched.quote(symbol).bid
    assert ratio == pytest.approx(
        target / untouched.bars(symbol, 0, at(DAY, 11, 0, 1), 1)[-1].close, rel=2e-3
    )
    other = next(iter(moved.symbols))
    assert moved.quote(other) == untouched.quote(other)
    with pytest.raises(ValueError, match="price must be > 0"):
        moved.set_price(symbol, 0)


# -- replay ------------------------------------------------------------------------------------
def recorded_bars() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for symbol, price in (("AAPL", 180.0), ("XYZ", 12.5)):
        times = [at(DAY, 8, 0) + 60 * i for i in range(5)]  # some pre-market
        times += [at(DAY, 9, 30) + 60 * i for i in range(60)]
        for t in times:
            o = round(price, 2)
            c = round(o * (1 + rng.normal(0, 0.002)), 2)
            h = round(max(o, c) + rng.integers(0, 10) / 100, 2)
            lo = round(min(o, c) - rng.integers(0, 10) / 100, 2)
            rows.append((symbol, t, o, h, lo, c, int(rng.integers(4, 50) * 100)))
            price = c
    return pd.DataFrame(rows, columns=["symbol", "time", "open", "high", "low", "close", "volume"])


@pytest.mark.parametrize("variant", ["csv-iso-naive", "parquet-epoch", "parquet-datetime-utc"])
def test_replay_round_trips_the_recorded_bars(tmp_path: Path, variant: str) -> None:
    recorded = recorded_bars()
    path = tmp_path / f"day.{variant.split('-')[0]}"
    if variant == "csv-iso-naive":  # ISO times without a zone are New York time
        stamps = [datetime.fromtimestamp(t, NEW_YORK).strftime("%Y-%m-%d %H:%M:%S")
                  for t in recorded["time"]]  # fmt: skip
        recorded.assign(time=stamps).to_csv(path, index=False)
    elif variant == "parquet-epoch":
        prev_close = np.where(recorded["symbol"] == "AAPL", 179.0, np.nan)
        recorded.assign(prev_close=prev_close).to_parquet(path)
    else:
        recorded.assign(time=pd.to_datetime(recorded["time"], unit="s", utc=True)).to_parquet(path)
    market = Market(MarketConfig(DAY, replay_path=str(path)))
    assert sorted(market.symbols) == ["AAPL", "XYZ"]
    market.advance(at(DAY, 16, 0))
    for symbol, rows in recorded.groupby("symbol"):
        replayed = market.bars(symbol, 0, 2e9, 60)
        got = pd.DataFrame([(b.time, b.open, b.high, b.low, b.close, b.volume) for b in replayed],
                           columns=["time", "open", "high", "low", "close", "volume"])  # fmt: skip
        want = rows[["time", "open", "high", "low", "close", "volume"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        given = variant == "parquet-epoch" and symbol == "AAPL"
        assert market.previous_close(symbol) == (179.0 if given else rows["open"].iloc[0])
        q = market.quote(symbol)
        assert q.last == rows["close"].iloc[-1] and q.volume == rows["volume"].sum()
        assert q.open == rows["open"].iloc[5] and q.bid < q.ask  # first bar from 09:30


def test_replay_with_bad_columns_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    recorded_bars().drop(columns=["volume"]).assign(vwap=1.0).to_csv(path, index=False)
    with pytest.raises(ValueError) as error:
        Market(MarketConfig(DAY, replay_path=str(path)))
    message = str(error.value)
    assert str(path) in message and "volume" in message and "vwap" in message
    assert "symbol,time,open,high,low,close,volume" in message and "\n" not in message


def test_replay_of_another_day_says_which_date_to_use(tmp_path: Path) -> None:
    path = tmp_path / "day.csv"
    recorded_bars().to_csv(path, index=False)
    with pytest.raises(ValueError, match="2026-03-16"):
        Market(MarketConfig(date(2026, 3, 17), replay_path=str(path)))


# -- configuration errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"trading_date": date(2026, 3, 14)}, "2026-03-14 is not an XNYS session"),
        ({"trading_date": date(2026, 12, 25)}, "not an XNYS session"),
        ({"trading_date": DAY, "symbols": 0}, "symbols must be >= 1"),
        ({"trading_date": DAY, "symbol_names": ("AAA", "AAA")}, "symbol_names must be"),
        ({"trading_date": DAY, "replay_path": "bars.xlsx"}, "unknown format '.xlsx'"),
    ],
)
def test_bad_config_is_a_one_line_value_error(kwargs: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as error:
        MarketConfig(**kwargs)
    assert "\n" not in str(error.value)


def test_missing_replay_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Market(MarketConfig(DAY, replay_path=str(tmp_path / "none.csv")))


def test_explicit_symbol_names_override_the_count() -> None:
    market = Market(MarketConfig(DAY, symbols=50, symbol_names=("AAPL", "MSFT", "F")))
    assert list(market.symbols) == ["AAPL", "MSFT", "F"]
    assert market.symbols["F"].primary_exchange == "NYSE"
    assert market.symbols["AAPL"].primary_exchange == "NASDAQ"
