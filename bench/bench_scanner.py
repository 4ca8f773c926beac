"""Benchmark: score and filter a synthetic 12,000-ticker full-market snapshot.

Times what runs on every refresh after the HTTP response is decoded: TickerSnapshot objects
(the massive client's models) -> arrays (`snapshot_arrays`) -> vectorised scoring and
ranking (`rank_picks`). Target: <= 100 ms. Run: python bench/bench_scanner.py [--tickers N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from massive.rest.models import TickerSnapshot

from scanner_polygon import ScanConfig, rank_picks, snapshot_arrays

TARGET_MS = 100.0


def synthetic_snapshot(n: int, seed: int = 1) -> tuple[list[TickerSnapshot], dict[str, float]]:
    """`n` tickers in the API's JSON shape, parsed by the client's own model; plus avg volumes."""
    rng = np.random.default_rng(seed)
    prev_close = np.exp(rng.uniform(np.log(0.5), np.log(800), n))
    change = rng.normal(0.0, 0.04, n)
    last = prev_close * (1 + change)
    low = np.minimum(prev_close, last) * (1 - rng.uniform(0, 0.03, n))
    high = np.maximum(prev_close, last) * (1 + rng.uniform(0, 0.03, n))
    avg_volume = np.exp(rng.uniform(np.log(1e4), np.log(5e7), n))
    day_volume = avg_volume * rng.lognormal(0.0, 0.8, n)
    minute_open = last * (1 - rng.normal(0, 0.003, n))
    snapshots = []
    averages = {}
    for i in range(n):
        symbol = f"T{i:05d}"
        averages[symbol] = float(avg_volume[i])
        snapshots.append(
            TickerSnapshot.from_dict(
                {
                    "ticker": symbol,
                    "todaysChangePerc": float(change[i] * 100),
                    "todaysChange": float(last[i] - prev_close[i]),
                    "updated": 1795780800000000000,
                    "day": {
                        "o": float(prev_close[i]),
                        "h": float(high[i]),
                        "l": float(low[i]),
                        "c": float(last[i]),
                        "v": float(day_volume[i]),
                        "vw": float(last[i]),
                    },
                    "lastTrade": {"p": float(last[i]), "s": 100, "t": 1795780800000000000, "x": 4},
                    "min": {
                        "av": float(day_volume[i]),
                        "o": float(minute_open[i]),
                        "h": float(max(minute_open[i], last[i])),
                        "l": float(min(minute_open[i], last[i])),
                        "c": float(last[i]),
                        "v": 1000.0,
                        "t": 1795780740000,
                    },
                    "prevDay": {
                        "o": float(prev_close[i]),
                        "h": float(prev_close[i]),
                        "l": float(prev_close[i]),
                        "c": float(prev_close[i]),
                        "v": float(avg_volume[i]),
                    },
                }
            )
        )
    return snapshots, averages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=12_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    snapshots, averages = synthetic_snapshot(args.tickers)
    common = frozenset(list(averages)[: int(args.tickers * 0.6)])  # ~60% common stocks
    config = ScanConfig()
    parse_ms, filter_ms = [], []
    picks = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        arrays = snapshot_arrays(snapshots, averages, common)
        t1 = time.perf_counter()
        picks = rank_picks(arrays, config)
        t2 = time.perf_counter()
        parse_ms.append((t1 - t0) * 1e3)
        filter_ms.append((t2 - t1) * 1e3)
    total = [p + f for p, f in zip(parse_ms, filter_ms, strict=True)]
    median = statistics.median(total)
    print(
        f"bench_scanner: {args.tickers} tickers, {len(picks)} picks; median of {args.repeat}: "
        f"objects->arrays {statistics.median(parse_ms):.1f} ms + score/filter/rank "
        f"{statistics.median(filter_ms):.1f} ms = {median:.1f} ms "
        f"(target {TARGET_MS:.0f} ms, ratio {median / TARGET_MS:.2f}; best {min(total):.1f} ms)"
    )
    return 0 if median <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
