"""Parity: one seeded day through the backtest and through the socket simulator gives the same
entries (symbol, rule, within one bar) and the same exit reasons.

The socket side is `supervisor.py --sim` (the real bots as processes against the simulated
gateway, seed 7, 20 symbols, 2026-03-16, 100x) run from 09:25 until 09:46; the backtest is
`run_backtest` over the same seeded market (sim.days.synthetic_day), participation 1.0
because the simulated gateway fills an order whole (partial_fills off). Compared: the first
wave, the entries decided on the first bar any entry is decided on (09:37:30, when RSI and ATR
are warm), and how each of them that filled on both sides ends.

This test runs the whole stack for about 25 real seconds: it is the proof that the fast
backtest trades the day the bots trade, which no shorter test can give.

Differences that remain, and why the comparison stops at the first wave:
  - timing: the bots decide 10-16 simulated seconds after a bar ends (their real latency
    times the speed, at 100x), the backtest at the bar's end; so entries differ by up to half
    a bar and their prices by what the market did meanwhile (HQQP: 7.83 vs 7.87 on this day).
    `BacktestConfig.order_delay_s` models that latency (12 s brings the day's whole list of
    entries to the same 13 symbols, rules and exit reasons).
  - fills: the gateway moves its path every second and matches stops on the second they
    trigger; the backtest walks 5-s bars (open -> extremes -> close, linear between). A stop
    or target crossed inside a bar fills at the level in both; the second differs.
  - quotes: the gateway's spread is its own per-second draw (spread_ticks plus noise); the
    backtest uses the typical spread (ibsim.market.spread_ticks on the day's liquidity)
    with the print on the side worst for the order.
  - after the first exit, slots free at slightly different seconds, so which symbol takes a
    freed slot (and when) can differ: later entries are not compared one by one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import date, datetime, time
from pathlib import Path

import pytest
from sim_support import wait_for

from core.clock import NEW_YORK, FileTimeSource, MarketClock
from core.settings import PROJECT_ROOT
from observability import TradingDatabase
from reports import build_day_report
from sim.backtest import BacktestConfig, run_backtest
from sim.days import synthetic_days

SEED = 7
SYMBOLS = 20
DAY = date(2026, 3, 16)
SPEED = 100.0
STOP_AT = time(9, 46)  # the first wave has entered and ended by then
BAR = 30.0

pytestmark = pytest.mark.timeout(300)


def _socket_day(run_dir: Path) -> TradingDatabase:
    """Run the simulated day over sockets until STOP_AT; returns its database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "CLOCK", "DATABASE"))}
    env["LOG_DIR"] = str(run_dir.parent / "logs")
    output = (run_dir.parent / "supervisor.out").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "supervisor.py", "--sim", "--seed", str(SEED), "--speed", f"{SPEED:g}",
            "--date", DAY.isoformat(), "--start", "09:25", "--symbols", str(SYMBOLS),
            "--run-dir", str(run_dir), "--status-every", "600",
        ],
        cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output.close()
    stop_at = datetime.combine(DAY, STOP_AT, NEW_YORK)
    try:
        wait_for(lambda: (run_dir / "sim_clock.json").exists(), 90, "the simulated clock")
        clock = MarketClock(FileTimeSource(run_dir / "sim_clock.json"))
        wait_for(lambda: clock.now() >= stop_at, 120, f"simulated {STOP_AT}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    return TradingDatabase(str(run_dir / "trading_history.db"), clock=clock)


def _first_wave(entries: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    """The entries of the first bar any entry was decided on: (symbol, rule, epoch)."""
    first = min(t for _, _, t in entries)
    return sorted(e for e in entries if e[2] < first + BAR)


def _shown(entries: list[tuple[str, str, float]]) -> str:
    return ", ".join(
        f"{s} {r} {datetime.fromtimestamp(t, NEW_YORK):%H:%M:%S}"
        for s, r, t in sorted(entries, key=lambda e: e[2])
    )


def test_the_backtest_enters_and_exits_the_first_wave_as_the_bots_do(tmp_path: Path) -> None:
    db = _socket_day(tmp_path / "run")
    intents = db.get_intents_by_date(DAY.isoformat())
    # Entries as decided and sent: whether one fills depends on the bots' latency (a limit
    # the market ran away from during it times out), not on the rules.
    socket_entries = [
        (i["symbol"], i["purpose"].removeprefix("entry:"),
         datetime.fromisoformat(i["created_at"]).timestamp())
        for i in intents
        if i["side"] == "BUY" and str(i["purpose"]).startswith("entry:")
    ]  # fmt: skip
    socket_exits = {
        t.symbol: t.exit_reason for t in build_day_report(db, DAY.isoformat()).round_trips
    }

    result = run_backtest(synthetic_days(SEED, 1, SYMBOLS, DAY), BacktestConfig(participation=1.0))
    (day,) = result.days
    backtest_entries = [
        (d["symbol"], d["rule"], datetime.fromisoformat(d["exchange_time"]).timestamp())
        for d in day.entry_decisions
    ]
    backtest_exits = {r.symbol: r.exit_reason for r in day.journal}

    socket_wave, backtest_wave = _first_wave(socket_entries), _first_wave(backtest_entries)
    assert socket_wave, "the bots entered nothing: the simulated day did not trade"
    assert [(s, r) for s, r, _ in backtest_wave] == [(s, r) for s, r, _ in socket_wave], (
        f"bots: {_shown(socket_entries)}; backtest: {_shown(backtest_entries)}"
    )
    for (symbol, _, ours), (_, _, theirs) in zip(backtest_wave, socket_wave, strict=True):
        assert abs(ours - theirs) <= BAR, f"{symbol}: entered {ours - theirs:+.0f} s apart"
    both = [s for s, _, _ in socket_wave if s in socket_exits and s in backtest_exits]
    assert both, "no entry of the first wave filled and ended on both sides"
    for symbol in both:
        assert backtest_exits[symbol] == socket_exits[symbol], symbol
