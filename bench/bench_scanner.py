"""Benchmark: score and filter a synthetic 12,000-ticker full-market snapshot.

Times what runs on every refresh after the HTTP response is decoded: TickerSnapshot objects
(the massive client's models) -> arrays (`snapshot_arrays`, with today's split factors) ->
the staleness mask -> vectorised scoring and ranking (`rank_picks`). Target: <= 100 ms.
Anchor, measured in the same run: `json.loads` of the same snapshot's bytes, work every
refresh must do anyway, so the ratio says how much scoring adds to it. What bounds the figure:
the Python loop over TickerSnapshot objects in `snapshot_arrays` (one tuple per ticker);
the numpy part is a few ms. Run: python bench/bench_scanner.py [--tickers N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from massive.rest.models import TickerSnapshot

from scanner_polygon import ScanConfig, rank_picks, snapshot_arrays, stale_mask

TARGET_MS = 100.0


def synthetic_snapshot(
    n: int, seed: int = 1
) -> tuple[list[TickerSnapshot], dict[str, float], bytes]:
    """`n` tickers in the API's JSON shape, parsed by the client's own model; plus average
    volumes and the response body they came from."""
    rng = np.random.default_rng(seed)
    prev_close = np.exp(rng.uniform(np.log(0.5), np.log(800), n))
    change = rng.normal(0.0, 0.04, n)
    last = prev_close * (1 + change)
    low = np.minimum(prev_close, last) * (1 - rng.uniform(0, 0.03, n))
    high = np.maximum(prev_close, last) * (1 + rng.uniform(0, 0.03, n))
    avg_volume = np.exp(rng.uniform(np.log(1e4), np.log(5e7), n))
    day_volume = avg_volume * rng.lognormal(0.0, 0.8, n)
    minute_open = last * (1 - rng.normal(0, 0.003, n))
    rows = []
    averages = {}
    for i in range(n):
        symbol = f"T{i:05d}"
        averages[symbol] = float(avg_volume[i])
        rows.append(
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
    body = json.dumps({"status": "OK", "count": n, "tickers": rows}).encode()
    return [TickerSnapshot.from_dict(r) for r in rows], averages, body


def _percentiles(label: str, ms: list[float]) -> str:
    a = np.array(ms)
    return (
        f"{label}: p50 {np.percentile(a, 50):.1f} ms, p90 {np.percentile(a, 90):.1f} ms, "
        f"max {a.max():.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=12_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    snapshots, averages, body = synthetic_snapshot(args.tickers)
    common = frozenset(list(averages)[: int(args.tickers * 0.6)])  # ~60% common stocks
    splits = {f"T{i:05d}": 20.0 for i in range(0, args.tickers, 1000)}  # a few reverse splits
    now = 1795780800.0 + 30.0
    config = ScanConfig()
    parse_ms, filter_ms, anchor_ms = [], [], []
    picks = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        arrays = snapshot_arrays(snapshots, averages, common, splits)
        t1 = time.perf_counter()
        stale = stale_mask(arrays, now, config.max_data_age_s)
        picks = rank_picks(replace(arrays, eligible=arrays.eligible & ~stale), config)
        t2 = time.perf_counter()
        json.loads(body)
        t3 = time.perf_counter()
        parse_ms.append((t1 - t0) * 1e3)
        filter_ms.append((t2 - t1) * 1e3)
        anchor_ms.append((t3 - t2) * 1e3)
    total = [p + f for p, f in zip(parse_ms, filter_ms, strict=True)]
    median = float(np.median(total))
    anchor = float(np.median(anchor_ms))
    print(f"bench_scanner: {args.tickers} tickers, {len(picks)} picks, {args.repeat} runs")
    print("  " + _percentiles("objects->arrays", parse_ms))
    print("  " + _percentiles("stale/score/filter/rank", filter_ms))
    print("  " + _percentiles("total", total))
    print("  " + _percentiles(f"anchor json.loads of the {len(body) / 1e6:.1f} MB body", anchor_ms))
    print(
        f"  total/anchor {median / anchor:.2f}; target {TARGET_MS:.0f} ms, "
        f"median/target {median / TARGET_MS:.2f} -> {'MET' if median <= TARGET_MS else 'MISSED'}"
    )
    return 0 if median <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
