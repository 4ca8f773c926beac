"""Day trader restart benchmark: `kill -9` it under the supervisor on the simulated gateway,
and time each phase until it trades again.

    python bench/bench_restart.py [--kills 8] [--symbols 20] [--speed 30]

Runs `supervisor.py --sim`; once the day trader has reconciled and seeded its symbols, kills
it (SIGKILL) after it has been ready for `--healthy-after` + 1 real seconds (a healthy run:
no crash loop, so the first backoff step applies), `--kills` times. For each kill, from the
bots' own JSON logs (millisecond stamps, wall clock):
  kill -> supervisor sees it (bot_failed)        bounded by the watchdog's poll period
  -> new process (bot_started)                   the first backoff step
  -> day trader `starting`                       interpreter start and imports, settings, db
  -> `connected`                                 the API handshake with the gateway
  -> `reconciled`                                intents and fills checked against IB
  -> every symbol `seeded`                       historical bars for the indicators
Prints p50, p90 and max of each phase and of the total (kill -> seeded, back to trading),
against the goal of 5 s; the anchor, measured in the same run, is a bare interpreter's start
(`python -c pass`), the floor of any restart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 5.0
PHASES = ("bot_failed", "bot_started", "starting", "connected", "reconciled", "seeded")


def events(log_dir: Path) -> list[dict]:
    """Every JSON log line of the run, with `t` (unix seconds) and `file` (one per process)."""
    found = []
    for path in sorted(log_dir.glob("*.json")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "ts" in record:
                record["t"] = datetime.fromisoformat(record["ts"]).timestamp()
                record["file"] = path.name
                found.append(record)
    return sorted(found, key=lambda r: r["t"])


def day_trader_pid(lock_file: Path) -> int | None:
    try:
        bots = json.loads(lock_file.read_text()).get("bots", {})
    except (OSError, ValueError):
        return None
    return (bots.get("day_trader") or {}).get("pid")


def processes(records: list[dict]) -> list[list[dict]]:
    """The day trader's records, one list per process (log file), oldest process first."""
    by_file: dict[str, list[dict]] = {}
    for record in records:
        if record.get("bot") == "day_trader":
            by_file.setdefault(record["file"], []).append(record)
    return sorted(by_file.values(), key=lambda rows: rows[0]["t"])


def back_to_trading(rows: list[dict], symbols: int) -> tuple[float, float, float] | None:
    """(connected, reconciled, every symbol seeded) of one process, or None before then."""
    connected = next((r["t"] for r in rows if r.get("event") == "connected"), None)
    reconciled = next((r["t"] for r in rows if r.get("event") == "reconciled"), None)
    seeded = sorted(r["t"] for r in rows if r.get("event") == "seeded")
    if connected is None or reconciled is None or len(seeded) < symbols:
        return None
    return connected, reconciled, seeded[symbols - 1]


def ready_since(records: list[dict], symbols: int) -> float | None:
    """When the day trader process the supervisor started last was back to trading, or None
    (also while that process has not logged yet)."""
    started = [r["t"] for r in records
               if r.get("event") == "bot_started" and r.get("child") == "day_trader"]  # fmt: skip
    newest = processes(records)[-1:]
    if not started or not newest or newest[0][0]["t"] < started[-1]:
        return None
    done = back_to_trading(newest[0], symbols)
    return None if done is None else max(done)


def phases_after(records: list[dict], killed_at: float, symbols: int) -> list[float] | None:
    """Seconds from the kill to each phase of the next day trader process, or None."""
    failed = next(
        (r["t"] for r in records if r["t"] >= killed_at - 0.05 and r.get("event") == "bot_failed"
         and r.get("child") == "day_trader"), None,
    )  # fmt: skip
    started = next(
        (r["t"] for r in records if r["t"] >= killed_at and r.get("event") == "bot_started"
         and r.get("child") == "day_trader"), None,
    )  # fmt: skip
    if failed is None or started is None:
        return None
    rows = next((rows for rows in processes(records) if rows[0]["t"] >= started), None)
    if rows is None:
        return None
    first = next((r["t"] for r in rows if r.get("event") == "starting"), None)
    done = back_to_trading(rows, symbols)
    if first is None or done is None:
        return None
    return [t - killed_at for t in (failed, started, first, *done)]


def bare_start_s(repeats: int = 5) -> float:
    """The anchor: median seconds to run `python -c pass`."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--speed", type=float, default=30.0, help="simulated s per real s")
    parser.add_argument("--healthy-after", type=float, default=5.0, help="real seconds")
    parser.add_argument("--run-dir", type=Path, help="keep the run here (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_restart_") as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        argv = [
            sys.executable, str(ROOT / "supervisor.py"), "--sim", "--symbols", str(args.symbols),
            "--speed", f"{args.speed:g}", "--start", "09:35", "--run-dir", str(run_dir),
            "--status-every", "3600", "--healthy-after", f"{args.healthy_after:g}",
            "--crash-loop-max", "1000",
        ]  # fmt: skip
        supervisor = psutil.Popen(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        kills: list[float] = []
        try:
            deadline = time.monotonic() + 120 + args.kills * 60
            lock = run_dir / "trading_history.db.supervisor.lock"
            while len(kills) < args.kills and time.monotonic() < deadline:
                time.sleep(0.2)
                pid = day_trader_pid(lock)
                if pid is None or supervisor.poll() is not None:
                    continue
                since = ready_since(events(run_dir / "logs"), args.symbols)
                if since is None or time.time() - since < args.healthy_after + 1.0:
                    continue
                kills.append(time.time())
                os.kill(pid, signal.SIGKILL)
                time.sleep(1.0)
            time.sleep(10.0)  # the last restart's phases reach the logs
            records = events(run_dir / "logs")
        finally:
            supervisor.send_signal(signal.SIGINT)
            try:
                supervisor.wait(timeout=60)
            except psutil.TimeoutExpired:
                supervisor.kill()
        measured = [p for p in (phases_after(records, k, args.symbols) for k in kills) if p]
    anchor = bare_start_s()
    print(f"day trader kill -9 under the supervisor: {len(kills)} kills, {len(measured)} measured;"
          f" {args.symbols} symbols at {args.speed:g}x")  # fmt: skip
    print(f"anchor, a bare interpreter start (python -c pass): {anchor:.3f} s")
    if not measured:
        print("no restart measured (see the run's logs)")
        return 1
    table = np.array(measured)
    print(f"{'kill -> ...':<34}{'p50':>8}{'p90':>8}{'max':>8}   seconds")
    previous = np.zeros(len(measured))
    for column, name in enumerate(PHASES):
        at = table[:, column]
        step = at - previous
        previous = at
        print(f"  {name:<20} at {np.median(at):7.3f}  (step p50 {np.median(step):6.3f}"
              f"  p90 {np.percentile(step, 90):6.3f}  max {step.max():6.3f})")  # fmt: skip
    total = table[:, -1]
    print(
        f"back to trading (every symbol seeded): p50 {np.median(total):.2f} s, "
        f"p90 {np.percentile(total, 90):.2f} s, max {total.max():.2f} s; goal {GOAL_S:g} s "
        f"-> {'MET' if total.max() <= GOAL_S else 'MISSED'}; p50 {np.median(total) / anchor:.0f}"
        " x a bare interpreter start"
    )
    return 0 if total.max() <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
