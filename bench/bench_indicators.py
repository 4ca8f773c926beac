"""Indicator benchmark: streaming update of 500 symbols per 30-s bar, and batch over a day.

    python bench/bench_indicators.py [--symbols 500] [--bars 780] [--seed 7]

Target: one IndicatorBank update (VWAP, RSI, ATR, ATR% for all symbols) <= 1 ms per bar.
Compared with recomputing talib.RSI + talib.ATR over each symbol's history on every bar.
Batch: RSI + ATR of every symbol over the whole day, ours against TA-Lib on equal terms (the
same contiguous float arrays in, one 2-D array of every value out, the same repeats; p50, p90,
max and the ratio of the medians). Agreement with TA-Lib is checked over the whole series
(every bar of every symbol, warm-up NaNs in the same places), not at the last bar.
Synthetic, seeded data. The streaming figure is bounded by numpy's per-call overhead (a few
dozen small array operations per bar), the batch figures by TA-Lib's C loop and memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import talib  # noqa: E402

from core.clock import NEW_YORK  # noqa: E402
from trading.indicators import (  # noqa: E402
    Bar,
    IndicatorBank,
    StreamingIndicators,
    atr,
    atr_percent,
    rsi,
    session_vwap,
)

TARGET_BANK_UPDATE_MS = 1.0
SESSION_OPEN = datetime(2024, 3, 8, 9, 30, tzinfo=NEW_YORK).timestamp()


def synthetic_day(symbols: int, bars: int, seed: int) -> dict[str, np.ndarray]:
    """Cent-rounded random walks, one row per symbol, with highs, lows and volumes."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(5.0, 300.0, (symbols, 1))
    steps = rng.normal(0.0, 0.0008, (symbols, bars)) * start
    close = np.maximum(np.round(start + np.cumsum(steps, axis=1), 2), 0.01)
    spread = np.abs(rng.normal(0.0, 0.0006, (symbols, bars))) * start
    high = np.round(close + spread, 2)
    low = np.maximum(np.round(close - spread, 2), 0.01)
    volume = rng.integers(0, 20_000, (symbols, bars)).astype(float)
    times = SESSION_OPEN + 30.0 * np.arange(bars)
    return {"time": times, "high": high, "low": low, "close": close, "volume": volume}


def best_of(repeats: int, func) -> float:  # type: ignore[no-untyped-def]
    """Fastest of `repeats` runs, in seconds."""
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        func()
        timings.append(time.perf_counter() - began)
    return min(timings)


def timings_of(repeats: int, func) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Seconds of each of `repeats` runs."""
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        func()
        timings.append(time.perf_counter() - began)
    return np.array(timings)


def interleaved(repeats: int, *funcs) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Seconds of each run of each of `funcs`, run in turn `repeats` times."""
    timings: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeats):
        for func, times in zip(funcs, timings, strict=True):
            began = time.perf_counter()
            func()
            times.append(time.perf_counter() - began)
    return [np.array(times) for times in timings]


def spread(timings: np.ndarray) -> str:
    p50, p90 = np.percentile(timings, [50, 90]) * 1e3
    return f"p50 {p50:7.2f}  p90 {p90:7.2f}  max {timings.max() * 1e3:7.2f} ms"


def bench_bank(
    day: dict[str, np.ndarray],
) -> tuple[list[float], IndicatorBank, dict[str, np.ndarray]]:
    """Per-bar update times, the bank, and its RSI and ATR after every bar (symbol x bar)."""
    symbols, bars = day["close"].shape
    bank = IndicatorBank([f"S{i}" for i in range(symbols)])
    series = {"rsi": np.empty((symbols, bars)), "atr": np.empty((symbols, bars))}
    columns = [
        (day["high"][:, k].copy(), day["low"][:, k].copy(), day["close"][:, k].copy())
        for k in range(bars)
    ]
    volumes = [day["volume"][:, k].copy() for k in range(bars)]
    per_bar = []
    for k in range(bars):
        high, low, close = columns[k]
        began = time.perf_counter()
        snapshot = bank.update(day["time"][k], high, low, close, volumes[k])
        per_bar.append(time.perf_counter() - began)
        series["rsi"][:, k], series["atr"][:, k] = snapshot.rsi, snapshot.atr
    return per_bar, bank, series


def bench_per_symbol_streaming(day: dict[str, np.ndarray], sample_bars: int) -> float:
    """Seconds per bar for all symbols with one StreamingIndicators each (pure Python)."""
    symbols = day["close"].shape[0]
    singles = [StreamingIndicators() for _ in range(symbols)]
    rows = [
        [
            Bar(t, c, h, lo, c, v)
            for t, h, lo, c, v in zip(
                day["time"][:sample_bars],
                day["high"][s, :sample_bars].tolist(),
                day["low"][s, :sample_bars].tolist(),
                day["close"][s, :sample_bars].tolist(),
                day["volume"][s, :sample_bars].tolist(),
                strict=True,
            )
        ]
        for s in range(symbols)
    ]
    began = time.perf_counter()
    for k in range(sample_bars):
        for s in range(symbols):
            singles[s].update(rows[s][k])
    return (time.perf_counter() - began) / sample_bars


def bench_talib_recompute(day: dict[str, np.ndarray], samples: int) -> tuple[float, list[int]]:
    """Mean seconds per bar to recompute talib RSI+ATR over every symbol's history so far.

    Measured at `samples` evenly spaced bars; the cost grows linearly with the history, so the
    mean over evenly spaced bars estimates the day's average bar.
    """
    symbols, bars = day["close"].shape
    sampled = np.linspace(14, bars - 1, samples).round().astype(int).tolist()
    high, low, close = day["high"], day["low"], day["close"]
    timings = []
    for k in sampled:
        end = k + 1

        def recompute(end: int = end) -> None:
            for s in range(symbols):
                talib.RSI(close[s, :end])
                talib.ATR(high[s, :end], low[s, :end], close[s, :end])

        timings.append(best_of(3, recompute))
    return statistics.fmean(timings), sampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--bars", type=int, default=780, help="30-s bars (780 = 09:30-16:00)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    day = synthetic_day(args.symbols, args.bars, args.seed)
    high, low, close, volume = day["high"], day["low"], day["close"], day["volume"]
    n, bars = args.symbols, args.bars
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{n} symbols x {bars} bars of 30 s, seed {args.seed}; load average {load}")

    # Streaming: the vectorised bank, every bar of the day, timed one bar at a time.
    bench_bank(synthetic_day(n, 40, args.seed + 1))  # warm numpy's caches
    per_bar, bank, bank_series = bench_bank(day)
    per_bar_ms = np.array(per_bar) * 1e3
    steady = per_bar_ms[20:]
    median = float(np.median(per_bar_ms))
    print("\nStreaming IndicatorBank.update (VWAP+RSI+ATR+ATR% for all symbols, one bar)")
    print(
        f"  per bar: median {median:.3f} ms, mean {per_bar_ms.mean():.3f} ms, "
        f"p99 {np.percentile(per_bar_ms, 99):.3f} ms, max {per_bar_ms.max():.3f} ms "
        f"(after warm-up: median {np.median(steady):.3f} ms)"
    )
    print(
        f"  target <= {TARGET_BANK_UPDATE_MS:.1f} ms: "
        f"median is {median / TARGET_BANK_UPDATE_MS:.2f} x target -> {'MET' if median <= TARGET_BANK_UPDATE_MS else 'MISSED'}"
    )
    print(f"  whole day: {per_bar_ms.sum():.1f} ms")

    sample_bars = 40
    python_per_bar = bench_per_symbol_streaming(day, sample_bars)
    print(
        f"  for comparison, {n} StreamingIndicators (one per symbol, pure Python): "
        f"{python_per_bar * 1e3:.3f} ms per bar (first {sample_bars} bars), "
        f"{python_per_bar * 1e3 / median:.1f} x the bank"
    )

    # Recompute with TA-Lib on every bar, sampled and extrapolated.
    talib_per_bar, sampled = bench_talib_recompute(day, samples=12)
    print("\nRecompute talib.RSI + talib.ATR over each symbol's history on every bar")
    print(
        f"  measured at {len(sampled)} bars ({sampled[0]}..{sampled[-1]}, evenly spaced), "
        f"best of 3 each; extrapolated to the day:"
    )
    print(
        f"  mean {talib_per_bar * 1e3:.3f} ms per bar "
        f"({talib_per_bar * 1e3 / TARGET_BANK_UPDATE_MS:.2f} x target), "
        f"~{talib_per_bar * bars:.2f} s per day; the bank is "
        f"{talib_per_bar * 1e3 / median:.1f} x faster (and also gives VWAP)"
    )

    # Batch over the whole day, on equal terms: 2-D arrays in, one 2-D array per indicator out.
    def talib_batch() -> tuple[np.ndarray, np.ndarray]:
        return (
            np.stack([talib.RSI(close[s]) for s in range(n)]),
            np.stack([talib.ATR(high[s], low[s], close[s]) for s in range(n)]),
        )

    repeats = 21
    talib_batch()
    rsi(close), atr(high, low, close)  # warm both (imports, caches)
    # Alternating runs: a shared machine's load falls on both alike.
    talib_times, ours_times = interleaved(
        repeats, talib_batch, lambda: (rsi(close), atr(high, low, close))
    )
    loop_times = timings_of(
        5, lambda: [(rsi(close[s]), atr(high[s], low[s], close[s])) for s in range(n)]
    )
    vwap_times = timings_of(repeats, lambda: session_vwap(day["time"], high, low, close, volume))
    ratio = np.median(ours_times) / np.median(talib_times)
    print(f"\nBatch RSI + ATR over the whole day, {n} x {bars} ({repeats} runs each)")
    print(f"  anchor, talib row by row:       {spread(talib_times)}")
    print(f"  indicators, one 2-D call:       {spread(ours_times)}  ({ratio:.2f} x talib)")
    print(
        f"  indicators, one call a symbol:  {spread(loop_times)}  "
        f"({np.median(loop_times) / np.median(talib_times):.2f} x talib)"
    )
    print(f"  session_vwap, one 2-D call:     {spread(vwap_times)}")

    # The numbers are only worth having if the answers agree: every bar of every symbol.
    expected_rsi, expected_atr = talib_batch()
    singles = {"rsi": np.empty((n, sample_bars)), "atr": np.empty((n, sample_bars))}
    for s in range(n):
        single = StreamingIndicators()
        for k in range(sample_bars):
            h, lo, c = high[s, k], low[s, k], close[s, k]
            snap = single.update(Bar(day["time"][k], c, h, lo, c, volume[s, k]))
            singles["rsi"][s, k], singles["atr"][s, k] = snap.rsi, snap.atr
    print("\nAgreement with TA-Lib over the whole series (max abs difference; NaNs placed alike)")
    for label, got_rsi, got_atr, width in (
        ("bank, every bar", bank_series["rsi"], bank_series["atr"], bars),
        ("batch 2-D", *(x for x in (rsi(close), atr(high, low, close))), bars),
        (f"StreamingIndicators, first {sample_bars} bars", singles["rsi"], singles["atr"],
         sample_bars),
    ):  # fmt: skip
        print(
            f"  {label + ':':<38} RSI {max_difference(got_rsi, expected_rsi[:, :width])}, "
            f"ATR {max_difference(got_atr, expected_atr[:, :width])}"
        )
    batch_pct = atr_percent(high, low, close)
    print(
        f"  {'batch ATR% vs talib ATR / close:':<38} "
        f"{max_difference(batch_pct, expected_atr / close * 100.0)}"
    )
    print(f"  {'bank vs batch at the last bar, ATR%:':<38} "
          f"{max_difference(bank.snapshot().atr_pct, batch_pct[:, -1])}")  # fmt: skip


def max_difference(actual: np.ndarray, expected: np.ndarray) -> str:
    """The largest absolute difference, or where the NaNs differ."""
    if not np.array_equal(np.isnan(actual), np.isnan(expected)):
        return f"NaN MISPLACED at {int((np.isnan(actual) != np.isnan(expected)).sum())} values"
    both = ~np.isnan(expected)
    return f"{np.abs(actual[both] - expected[both]).max():.1e}" if both.any() else "no values"


if __name__ == "__main__":
    main()
