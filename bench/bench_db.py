"""Database benchmark: the entry guard's read latency, and write throughput with two writers.

    python bench/bench_db.py [--reads 50000] [--writes 3000]

Targets: is_position_active + was_closed_today <= 100 microseconds together (per call pair).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_PAIR_US = 100.0


def _writer(path: str, worker: int, writes: int, start_at: float, out: mp.Queue) -> None:
    sys.path.insert(0, str(ROOT))
    from observability import TradingDatabase

    db = TradingDatabase(path)
    db.is_position_active("warm-up")
    while time.time() < start_at:
        time.sleep(0.001)
    began = time.perf_counter()
    for i in range(writes):
        symbol = f"W{worker}_{i}"
        if i % 2 == 0:
            db.add_active_position(symbol, 10, 50.0, 50.9, 49.55)
        else:
            db.record_trade(symbol, "BUY", 10, 50.0, agent="bench", exec_id=f"{worker}.{i}")
    out.put(time.perf_counter() - began)


def bench_reads(path: Path, reads: int) -> list[float]:
    from observability import TradingDatabase

    db = TradingDatabase(path)
    for i in range(200):
        db.add_active_position(f"A{i}", 1, 10.0, 10.18, 9.91)
    samples = []
    for batch in range(20):
        began = time.perf_counter()
        for i in range(reads // 20):
            symbol = f"A{(i + batch) % 400}"  # half present, half absent
            db.is_position_active(symbol)
            db.was_closed_today(symbol)
        samples.append((time.perf_counter() - began) / (reads // 20) * 1e6)
    return samples


def bench_writes(path: Path, writes: int) -> tuple[float, list[float]]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start_at = time.time() + 2.0
    procs = [
        ctx.Process(target=_writer, args=(str(path), w, writes, start_at, out)) for w in (1, 2)
    ]
    for p in procs:
        p.start()
    durations = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return 2 * writes / max(durations), durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=50_000, help="read pairs to time")
    parser.add_argument("--writes", type=int, default=3_000, help="writes per writer process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        samples = bench_reads(Path(tmp) / "reads.db", args.reads)
        median = statistics.median(samples)
        print(
            f"is_position_active + was_closed_today: median {median:.1f} us per pair "
            f"(best batch {min(samples):.1f} us, worst {max(samples):.1f} us); "
            f"target <= {TARGET_PAIR_US:.0f} us -> {TARGET_PAIR_US / median:.1f}x headroom"
        )
        rate, durations = bench_writes(Path(tmp) / "writes.db", args.writes)
        print(
            f"two writers, {args.writes} writes each (synchronous=FULL, BEGIN IMMEDIATE): "
            f"{rate:,.0f} writes/s combined; per-writer times "
            + ", ".join(f"{d:.2f} s" for d in durations)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
