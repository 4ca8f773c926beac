"""The parameter study's cost per trial against the backtest it runs, measured in the same run.

    python bench/bench_improve.py [--days 10] [--symbols 10] [--train 4] [--test 2]
                                  [--trials 10] [--jobs 1] [--seed 7]

Data: `--days` seeded synthetic sessions of `--symbols` stocks from the simulated market
(sim.days.synthetic_days), built once before timing. The study: sim.improve.study_parameters
walk-forward (`--train` days tuned on, `--test` scored on) with `--trials` trials per study,
all seven parameters, into a fresh SQLite storage.

Figures: seconds per trial (each trial's own wall time, from Optuna's start and end stamps):
p50, p95 and max; the study's total wall time and peak RSS. The anchor is
one plain backtest of a train window with the current settings (run_backtest, the same work
a trial does without Optuna), timed in this run, repeated 3 times; the ratio is a trial's
time over the anchor's: what Optuna's sampler and the RDB storage add per trial, plus what the
sampled settings themselves cost (more positions open, more trades, longer holds).

What bounds the figure: the backtest (one core, the per-bar Python work of the pure core);
per trial Optuna adds the TPE sampling over the study's earlier trials and a few SQLite
writes. Parallel trials (`--jobs`) divide the wall time by the free cores of the machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim import improve as im
from sim.backtest import BacktestConfig, run_backtest
from sim.days import synthetic_days


def _trial_seconds(url: str) -> list[float]:
    """Every completed trial's own wall time, from the storage's start and end stamps."""
    import optuna

    storage = im.open_storage(url)
    seconds = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            seconds.append((trial.datetime_complete - trial.datetime_start).total_seconds())
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--train", type=int, default=4)
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    days = list(synthetic_days(args.seed, args.days, args.symbols, date(2026, 11, 2)))
    base = BacktestConfig()
    anchor = []
    for _ in range(3):
        started = time.perf_counter()
        run_backtest(days[: args.train], base)
        anchor.append(time.perf_counter() - started)
    anchor_s = statistics.median(anchor)

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        options = im.StudyOptions(url, trials=args.trials, jobs=args.jobs, seed=args.seed)
        started = time.perf_counter()
        result = im.study_parameters(days, base, im.WalkForwardPlan(args.train, args.test), options)
        wall = time.perf_counter() - started
        trial_s = _trial_seconds(url)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    quantiles = (
        statistics.quantiles(trial_s, n=20, method="inclusive")
        if len(trial_s) > 1
        else trial_s * 19
    )
    p50, p95 = statistics.median(trial_s), quantiles[18]
    print(
        f"study: {args.days} days x {args.symbols} symbols, {len(result.folds)} folds + the "
        f"latest window, {result.trials_run} trials, jobs {args.jobs}"
    )
    print(f"wall: {wall:.1f} s   peak RSS (this process): {peak_mib:.0f} MiB")
    print(f"s per trial: p50 {p50:.3f}  p95 {p95:.3f}  max {max(trial_s):.3f}")
    print(f"anchor, one backtest of {args.train} days: p50 {anchor_s:.3f}  max {max(anchor):.3f}")
    print(f"ratio trial p50 / anchor p50: {p50 / anchor_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
