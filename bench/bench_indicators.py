"""Indicator benchmark: streaming update of 500 symbols per 30-s bar, and batch over a day.

    python bench/bench_indicators.py [--symbols 500] [--bars 780] [--seed 7]

Target: one IndicatorBank update (VWAP, RSI, ATR, ATR% for all symbols) <= 1 ms per bar.
Compared with recomputing talib.RSI + talib.ATR over each symbol's history on every bar, and
the batch functions over the whole day with talib over the whole day. Synthetic, seeded data.
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
from indicators import (  # noqa: E402
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


def bench_bank(day: dict[str, np.ndarray]) -> tuple[list[float], IndicatorBank]:
    symbols, bars = day["close"].shape
    bank = IndicatorBank([f"S{i}" for i in range(symbols)])
    columns = [
        (day["high"][:, k].copy(), day["low"][:, k].copy(), day["close"][:, k].copy())
        for k in range(bars)
    ]
    volumes = [day["volume"][:, k].copy() for k in range(bars)]
    per_bar = []
    for k in range(bars):
        high, low, close = columns[k]
        began = time.perf_counter()
        bank.update(day["time"][k], high, low, close, volumes[k])
        per_bar.append(time.perf_counter() - began)
    return per_bar, bank


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
    per_bar, bank = bench_bank(day)
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

    # Batch over the whole day.
    print("\nBatch over the whole day (RSI + ATR)")
    ours_2d = best_of(5, lambda: (rsi(close), atr(high, low, close)))
    ours_loop = best_of(
        3, lambda: [(rsi(close[s]), atr(high[s], low[s], close[s])) for s in range(n)]
    )
    talib_loop = best_of(
        5, lambda: [(talib.RSI(close[s]), talib.ATR(high[s], low[s], close[s])) for s in range(n)]
    )
    vwap_2d = best_of(5, lambda: session_vwap(day["time"], high, low, close, volume))
    print(f"  talib, one call per symbol:          {talib_loop * 1e3:8.2f} ms")
    print(
        f"  indicators, one 2-D call:            {ours_2d * 1e3:8.2f} ms "
        f"({ours_2d / talib_loop:.2f} x talib)"
    )
    print(
        f"  indicators, one call per symbol:     {ours_loop * 1e3:8.2f} ms "
        f"({ours_loop / talib_loop:.2f} x talib)"
    )
    print(f"  session_vwap, one 2-D call:          {vwap_2d * 1e3:8.2f} ms")

    # The numbers are only worth having if the answers agree.
    final = bank.snapshot()
    expected_rsi = np.array([talib.RSI(close[s])[-1] for s in range(n)])
    expected_atr = np.array([talib.ATR(high[s], low[s], close[s])[-1] for s in range(n)])
    batch_pct = atr_percent(high, low, close)[:, -1]
    print("\nAgreement at the last bar (max abs difference)")
    print(
        f"  bank vs talib: RSI {np.abs(final.rsi - expected_rsi).max():.1e}, "
        f"ATR {np.abs(final.atr - expected_atr).max():.1e}; "
        f"bank vs batch: RSI {np.abs(final.rsi - rsi(close)[:, -1]).max():.1e}, "
        f"ATR% {np.abs(final.atr_pct - batch_pct).max():.1e}"
    )


if __name__ == "__main__":
    main()
