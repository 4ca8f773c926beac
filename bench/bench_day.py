"""Benchmark one simulated day: wall time and peak memory of every process.

    python bench/bench_day.py                  # 50 symbols, speed 300
    python bench/bench_day.py --symbols 50 --speed 1000 --start 09:00

The default speed is the highest at which the bots still trade normally on 2 cores: at 600x
and above the day completes (flat, database = simulator) but no entry gets filled in time.

Runs `supervisor.py --sim` (simulated gateway, exit manager, day trader) and samples the RSS
of the supervisor and all its descendants with psutil; prints the wall time, the peak of the
summed RSS, each program's own peak, and the day's outcome (trades, flat, agreement).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class MemorySampler:
    """Peak RSS of a process tree: summed over the tree, and per program."""

    root: psutil.Process
    peak_total: int = 0
    peak_by_program: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                name = program_name(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += rss
            self.peak_by_program[name] = max(self.peak_by_program.get(name, 0), rss)
        self.peak_total = max(self.peak_total, total)
        self.samples += 1


def program_name(cmdline: list[str]) -> str:
    """supervisor / exit_manager / day_trader / ibsim (gateway) from a command line."""
    for part in cmdline[1:]:
        if part == "ibsim":
            return "ibsim (gateway)"
        if part.endswith(".py"):
            return Path(part).stem
    return Path(cmdline[0]).name if cmdline else "?"


def run_day(args: argparse.Namespace, run_dir: Path) -> tuple[float, MemorySampler, str, int]:
    argv = [
        sys.executable, str(ROOT / "supervisor.py"), "--sim", "--symbols", str(args.symbols),
        "--speed", f"{args.speed:g}", "--seed", str(args.seed), "--start", args.start,
        "--run-dir", str(run_dir), "--status-every", "3600",
    ]  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        process = psutil.Popen(argv, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True)
        sampler = MemorySampler(process)
        while process.poll() is None:
            sampler.sample()
            time.sleep(args.sample_every)
        wall = time.perf_counter() - started
        output.seek(0)
        text = output.read()
    return wall, sampler, text, process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Wall time and peak RSS of one simulated day.")
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--speed", type=float, default=300.0, help="simulated s per real s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", default="09:00")
    parser.add_argument("--sample-every", type=float, default=0.2, help="RSS sample interval, s")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_day_") as tmp:
        wall, sampler, text, code = run_day(args, Path(tmp) / "run")
    trades = re.search(r"trades \(round trips\): (\d+)", text)
    print(f"simulated day: {args.symbols} symbols, speed {args.speed:g}x, from {args.start}")
    print(f"wall time:          {wall:.1f} s")
    print(f"peak RSS (all):     {sampler.peak_total / 2**20:.0f} MiB ({sampler.samples} samples)")
    for name, peak in sorted(sampler.peak_by_program.items()):
        print(f"  peak {name + ':':<18}{peak / 2**20:.0f} MiB")
    print(f"round trips:        {trades.group(1) if trades else '?'}")
    print(f"flat at the close:  {'yes' if 'flat at the close: yes' in text else 'NO'}")
    agree = "database and simulator agree on every fill" in text
    print(f"db = simulator:     {'yes' if agree else 'NO'}")
    print(f"exit code:          {code}")
    if code not in (0, 1):
        print(text[-3000:])
    return 0 if code in (0, 1) else code


if __name__ == "__main__":
    sys.exit(main())
