"""Benchmark one simulated day: wall time and memory (PSS) of every program.

    python bench/bench_day.py                  # 50 symbols, speed 300
    python bench/bench_day.py --symbols 50 --speed 1000 --start 09:00

The default speed is the highest at which the bots still trade normally on 2 cores: at 600x
and above the day completes (flat, database = simulator) but no entry gets filled in time.

Runs `supervisor.py --sim` (simulated gateway, exit manager, day trader) and samples every
process of the tree with psutil's `memory_full_info`: PSS (proportional set size) per
program, because summed RSS counts the pages the programs share (the interpreter, the
libraries) once per process. Prints per program the median and peak PSS and the peak RSS
(the supervisor's own limit is in RSS), the peak of the three programs' PSS together
(supervisor, exit manager, day trader; the simulated gateway and the chart child are shown
apart), and as the anchor a bare interpreter's PSS measured in the same run, with ratios.

The bars/s printed is the simulated market's offer, symbols x speed / bar length: it is
bounded by the simulated clock's speed, not by how fast the bots could take bars.
Memory is bounded by what each program imports and holds; PSS also by what else shares
its pages at that moment (a bare interpreter running alongside lowers everyone's share).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trading.indicators import BAR_SECONDS, IB_REALTIME_BAR_SECONDS  # noqa: E402

TRADING_PROGRAMS = ("supervisor", "exit_manager", "day_trader")
MiB = 2**20


@dataclass
class MemorySampler:
    """PSS and RSS samples of a process tree, per program; the three programs' PSS summed."""

    root: psutil.Process
    pss_by_program: dict[str, list[int]] = field(default_factory=dict)
    peak_rss_by_program: dict[str, int] = field(default_factory=dict)
    peak_trading_pss: int = 0
    samples: int = 0

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        pss_now: dict[str, int] = {}
        for proc in procs:
            try:
                memory = proc.memory_full_info()
                cmdline = proc.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if not cmdline:  # exiting: its memory is already gone
                continue
            name = program_name(cmdline)
            pss_now[name] = pss_now.get(name, 0) + memory.pss
            rss = max(self.peak_rss_by_program.get(name, 0), memory.rss)
            self.peak_rss_by_program[name] = rss
        for name, pss in pss_now.items():
            self.pss_by_program.setdefault(name, []).append(pss)
        trading = sum(pss_now.get(name, 0) for name in TRADING_PROGRAMS)
        self.peak_trading_pss = max(self.peak_trading_pss, trading)
        self.samples += 1


def program_name(cmdline: list[str]) -> str:
    """supervisor / exit_manager / day_trader / ibsim (gateway) from a command line."""
    for part in cmdline[1:]:
        if part == "ibsim":
            return "ibsim (gateway)"
        if part.endswith(".py"):
            return Path(part).stem
    return Path(cmdline[0]).name if cmdline else "?"


def bare_interpreter_pss() -> int:
    """The anchor: PSS of an interpreter that imported nothing, measured now."""
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                          stdin=subprocess.PIPE) as bare:  # fmt: skip
        time.sleep(0.5)
        pss = psutil.Process(bare.pid).memory_full_info().pss
        assert bare.stdin is not None
        bare.stdin.close()
    return pss


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
    parser = argparse.ArgumentParser(description="Wall time and memory (PSS) of one simulated day.")
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--speed", type=float, default=300.0, help="simulated s per real s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", default="09:00")
    parser.add_argument("--sample-every", type=float, default=0.2, help="memory sample interval, s")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_day_") as tmp:
        wall, sampler, text, code = run_day(args, Path(tmp) / "run")
    anchor = bare_interpreter_pss()
    trades = re.search(r"trades \(round trips\): (\d+)", text)
    bars_per_s = args.symbols * args.speed / BAR_SECONDS
    print(f"simulated day: {args.symbols} symbols, speed {args.speed:g}x, from {args.start}")
    print(f"wall time:          {wall:.1f} s")
    print(
        f"bars/s offered:     {bars_per_s:,.0f} {BAR_SECONDS}-s bars "
        f"({bars_per_s * BAR_SECONDS / IB_REALTIME_BAR_SECONDS:,.0f} 5-s bars): "
        "symbols x speed / bar length, bounded by the clock speed"
    )
    print(f"anchor, a bare interpreter: {anchor / MiB:.1f} MiB PSS")
    print(
        f"{'program':<18}{'PSS p50':>9}{'PSS max':>9}{'x bare':>8}{'RSS max':>9}   ({sampler.samples} samples)"
    )
    for name, values in sorted(sampler.pss_by_program.items()):
        peak = max(values)
        print(f"{name:<18}{statistics.median(values) / MiB:>9.1f}{peak / MiB:>9.1f}"
              f"{peak / anchor:>8.1f}{sampler.peak_rss_by_program[name] / MiB:>9.1f}")  # fmt: skip
    print(f"three programs together, peak PSS: {sampler.peak_trading_pss / MiB:.0f} MiB "
          f"({' + '.join(TRADING_PROGRAMS)}; goal <= 250 at 50 symbols)")  # fmt: skip
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
