"""Database benchmark: the entry guard's reads with a writer running, and per-write latency
of two writers on one file.

    python bench/bench_db.py [--reads 20000] [--writes 1500] [--pace-ms 2]

Reads: `is_position_active` and `was_closed_today`, each timed per call, on hits (the symbol
is there) and misses, while another process writes at `--pace-ms`. Target: a guard pair
<= 100 microseconds at the median.

Writes: every write of two writer processes timed alone (p50/p90/p99/max), first with the
writers paced (a write every `--pace-ms`, as bots write), then back to back (the worst
case); the anchor is one writer alone on the same file in the same run, and the ratios are
printed. A write that fails with "database is locked" is counted and printed: it is a
failure (the bench exits 1), not a hang.

What bounds the figures: a write's own cost is its fsync (synchronous=FULL), so the disk;
a write that waits is bounded by how long the other writer holds the lock and by how soon
the waiter sees it free (SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms between tries).
Reads in WAL mode never wait for a writer: they are bounded by Python's call overhead.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_PAIR_US = 100.0


def _writer(
    path: str, worker: int, writes: int, pace_s: float, start_at: float, out: mp.Queue
) -> None:
    """Writes alternating position rows and fills; puts (latencies in s, lock errors)."""
    sys.path.insert(0, str(ROOT))
    from observability import DatabaseLocked, TradingDatabase

    db = TradingDatabase(path, if_missing="create")
    db.is_position_active("warm-up")
    while time.time() < start_at:
        time.sleep(0.001)
    latencies: list[float] = []
    lock_errors = 0
    next_at = time.perf_counter()
    for i in range(writes):
        symbol = f"W{worker}_{i}"
        began = time.perf_counter()
        try:
            if i % 2 == 0:
                db.add_active_position(symbol, 10, 50.0, 50.9, 49.55)
            else:
                db.record_trade(symbol, "BUY", 10, 50.0, agent="bench", exec_id=f"{worker}.{i}")
        except DatabaseLocked:
            lock_errors += 1
        latencies.append(time.perf_counter() - began)
        if pace_s:
            next_at += pace_s
            time.sleep(max(0.0, next_at - time.perf_counter()))
    out.put((latencies, lock_errors))


def run_writers(path: Path, count: int, writes: int, pace_s: float) -> tuple[np.ndarray, int]:
    """`count` writer processes at once; returns every write's latency (s) and lock errors."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start_at = time.time() + 2.0
    procs = [
        ctx.Process(target=_writer, args=(str(path), w, writes, pace_s, start_at, out))
        for w in range(count)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    latencies = np.concatenate([np.array(r[0]) for r in results])
    return latencies, sum(r[1] for r in results)


def percentiles(values_s: np.ndarray, unit: float = 1e3) -> str:
    p50, p90, p99 = np.percentile(values_s, [50, 90, 99]) * unit
    return f"p50 {p50:7.3f}  p90 {p90:7.3f}  p99 {p99:7.3f}  max {values_s.max() * unit:8.3f}"


def bench_reads(path: Path, reads: int, pace_s: float) -> dict[str, np.ndarray]:
    """Per-call read latencies (s) on hits and misses while a writer process runs."""
    from observability import TradingDatabase

    db = TradingDatabase(path, if_missing="create")
    for i in range(200):
        db.add_active_position(f"A{i}", 1, 10.0, 10.18, 9.91)
        db.add_active_position(f"C{i}", 1, 10.0, 10.18, 9.91)
        db.remove_active_position(f"C{i}", 10.1, "PROFIT_TARGET")
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    writes = int(reads * 4 * 40e-6 / max(pace_s, 1e-4)) + 1500  # outlasts the reads
    writer = ctx.Process(target=_writer, args=(str(path), 9, writes, pace_s, 0.0, out))
    writer.start()
    time.sleep(1.5)  # the writer is writing before the first read
    timings: dict[str, list[float]] = {
        "is_position_active hit": [],
        "is_position_active miss": [],
        "was_closed_today hit": [],
        "was_closed_today miss": [],
    }
    perf = time.perf_counter
    for i in range(reads):
        active, closed, absent = f"A{i % 200}", f"C{i % 200}", f"Z{i % 200}"
        for name, call, symbol in (
            ("is_position_active hit", db.is_position_active, active),
            ("is_position_active miss", db.is_position_active, absent),
            ("was_closed_today hit", db.was_closed_today, closed),
            ("was_closed_today miss", db.was_closed_today, absent),
        ):
            began = perf()
            call(symbol)
            timings[name].append(perf() - began)
    writer_alive = writer.is_alive()
    writer.join()
    out.get(timeout=60)
    if not writer_alive:
        print("  (the writer finished before the reads: raise its write count)")
    return {name: np.array(values) for name, values in timings.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20_000, help="reads of each kind")
    parser.add_argument("--writes", type=int, default=1_500, help="writes per writer process")
    parser.add_argument("--pace-ms", type=float, default=2.0, help="paced writers' interval")
    args = parser.parse_args()
    pace_s = args.pace_ms / 1000
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        print(f"reads with a writer running (a write every {args.pace_ms:g} ms), microseconds:")
        reads = bench_reads(Path(tmp) / "reads.db", args.reads, pace_s)
        for name, values in reads.items():
            print(f"  {name:<24} {percentiles(values, 1e6)}")
        pair = np.median(reads["is_position_active miss"]) + np.median(
            reads["was_closed_today miss"]
        )
        print(
            f"  guard pair (both misses), median {pair * 1e6:.1f} us; target <= "
            f"{TARGET_PAIR_US:.0f} us -> {TARGET_PAIR_US / (pair * 1e6):.1f}x headroom"
        )

        print("\nper-write latency, milliseconds (synchronous=FULL, BEGIN IMMEDIATE):")
        alone, alone_errors = run_writers(Path(tmp) / "alone.db", 1, args.writes, pace_s)
        print(f"  anchor, one writer alone, paced:  {percentiles(alone)}")
        anchor_p99 = np.percentile(alone, 99)
        for label, pace in (
            ("two writers, paced:        ", pace_s),
            ("two writers, back to back:", 0.0),
        ):
            name = f"{'paced' if pace else 'b2b'}.db"
            latencies, errors = run_writers(Path(tmp) / name, 2, args.writes, pace)
            ratio = np.percentile(latencies, 99) / anchor_p99
            print(f"  {label}       {percentiles(latencies)}  (p99 {ratio:.1f}x anchor)")
            print(f"    lock errors: {errors} of {latencies.size} writes")
            failures += errors
        failures += alone_errors
    if failures:
        print(f"FAILED: {failures} writes failed with 'database is locked'")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
