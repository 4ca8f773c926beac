"""Exit reaction benchmark: a price through the bot stop -> the exit's order at the simulator,
against a bare ib_async loop reacting to the same ticks in the same run.

    python bench/bench_exit_reaction.py [--trials 200] [--writes-per-s 10]

The gateway runs in its own process (as IB Gateway does). Each trial: the day trader
(client 2) buys, the exit manager (client 10, in this process, production stop and
backstop percentages from core.settings) protects the position; then the gateway moves
the price through the bot stop, above the server-side backstop. Nothing is flushed or
quieted before a move, and a separate process writes the database all along
(`--writes-per-s`, default 10: an entry's intent, its updates, fill and position row every
half second, well above the day trader's normal rate of a heartbeat per 10 s and about
five writes per entry).

The anchor: a bare ib_async client (client 20, its own process) that only turns
pendingTickersEvent into placeOrder (a resting BUY far below the market) when the price
falls under a fixed line the move crosses. Measured inside the gateway process on the wall
clock, from the moment the new price exists (after the simulator rescaled its path) to the
moment each client's first order message after it reaches the order engine. Both see the
same move, so the ratio cancels the simulator's own tick fan-out; what bounds both is the
machine's scheduling (2 shared cores: other work adds latency to both) and the gateway's
tick path. Trials start 0.5 s apart: ib_async queues requests beyond 45 per second.
Goal: the exit's p99 at most 2x the bare loop's p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from datetime import time as dtime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_RATIO = 2.0
TRIAL_SPACING_S = 0.5
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMD")
START_PRICE = 50.0
BARE_LINE = 49.7  # the bare loop fires below this and re-arms above REARM
BARE_REARM = 49.9
EM, DT, BARE = 10, 2, 20


def _gateway_child(folder: Path) -> None:
    """The gateway in its own process (as IB Gateway is): probes append wall-clock times."""
    from ibsim.market import Market
    from ibsim.thread import GatewayThread
    from tests.sim_support import gateway_config

    probe = (folder / "probe.txt").open("a", buffering=1)
    config = gateway_config(
        folder, symbols=SYMBOLS, trading_date=date(2026, 11, 25), start=dtime(10, 0),
        initial_cash=10_000_000.0, control_port=0,
    )  # fmt: skip
    original_set_price = Market.set_price

    def timed_set_price(self, symbol: str, price: float):  # type: ignore[no-untyped-def]
        quote = original_set_price(self, symbol, price)  # rescales the day's path (numpy)
        if price < BARE_LINE:  # a trial's move (not the reset before its entry)
            probe.write(f"move {symbol} {time.time():.6f}\n")  # the new price exists from here
        return quote

    Market.set_price = timed_set_price  # the bench's probe; the gateway's code is unchanged
    with GatewayThread(config) as gw:
        engine = gw.gateway.engine
        original_place = engine.place

        def timed_place(client_id, req, now):  # type: ignore[no-untyped-def]
            if client_id == EM and req.action == "SELL":
                probe.write(f"exit {req.contract.symbol} {time.time():.6f}\n")
            elif client_id == BARE:
                probe.write(f"bare {req.contract.symbol} {time.time():.6f}\n")
            return original_place(client_id, req, now)

        engine.place = timed_place
        (folder / "ports.tmp").write_text(f"{gw.port} {gw.control_port}")
        (folder / "ports.tmp").rename(folder / "ports.txt")
        sys.stdin.read()  # until the parent closes our stdin


def _bare_child(port: int) -> None:
    """The anchor: pendingTickersEvent -> placeOrder, nothing else (its own process)."""
    from ib_async import IB, LimitOrder, Stock

    ib = IB()
    ib.connect("127.0.0.1", port, clientId=BARE, timeout=10)
    armed = dict.fromkeys(SYMBOLS, False)
    resting: dict[str, object] = {}

    def on_tickers(tickers) -> None:  # type: ignore[no-untyped-def]
        for ticker in tickers:
            symbol, last = ticker.contract.symbol, ticker.last
            if armed[symbol] and last < BARE_LINE:
                armed[symbol] = False
                resting[symbol] = ib.placeOrder(ticker.contract, LimitOrder("BUY", 1, 1.0))
            elif not armed[symbol] and last > BARE_REARM:
                armed[symbol] = True
                trade = resting.pop(symbol, None)
                if trade is not None:
                    ib.cancelOrder(trade.order)  # type: ignore[attr-defined]

    for symbol in SYMBOLS:
        [contract] = ib.qualifyContracts(Stock(symbol, "SMART", "USD"))
        ib.reqMktData(contract)
    ib.pendingTickersEvent += on_tickers
    print("ready", flush=True)
    ib.run()


def _database_writer_child(path: Path, clock_file: Path, writes_per_s: float) -> None:
    """Another process writing the shared database like the day trader enters: an intent,
    its two updates, the fill and the position row per entry (and a heartbeat)."""
    from core.clock import get_clock
    from observability import FILLED, SUBMITTED, TradingDatabase

    db = TradingDatabase(path, clock=get_clock(clock_file))
    per_entry = 5
    pause = per_entry / writes_per_s
    n = 0
    while True:
        n += 1
        symbol = f"W{n % 500:03d}"
        ref = db.create_order_intent(symbol, "BUY", 1.0, "MKT", "day_trader", purpose="ENTRY")
        db.update_order_intent(ref, SUBMITTED, ib_order_id=n)
        db.update_order_intent(ref, FILLED, filled_quantity=1.0, avg_fill_price=10.0)
        db.record_trade(symbol, "BUY", 1.0, 10.0, "day_trader", order_ref=ref, exec_id=f"w{n}")
        db.beat("day_trader", "RUNNING", f"bench writer {n}")
        time.sleep(pause)


def _latencies(probe: Path, kind: str) -> list[float]:
    """Per move: the first `kind` order message after it minus the move (ms)."""
    pending: dict[str, float] = {}
    out = []
    for line in probe.read_text().splitlines():
        what, symbol, stamp = line.split()
        if what == "move":
            pending[symbol] = float(stamp)
        elif what == kind and symbol in pending:
            out.append((float(stamp) - pending.pop(symbol)) * 1000)
    return out


async def _bench(trials: int, writes_per_s: float, folder: Path) -> int:
    from ib_async import IB, MarketOrder, Stock

    from core.clock import calendar_loaded, get_clock, preload_calendar
    from core.money import profit_target_price, stop_loss_price
    from core.settings import load_settings, set_settings
    from exit_manager import AGENT, ExitManager
    from ib.session import BrokerSession
    from ibsim.ctl import call
    from observability import TradingDatabase
    from tests.sim_support import until
    from trading.exits import ExitConfig

    children: list[subprocess.Popen] = []
    child = subprocess.Popen(
        [sys.executable, __file__, "--gateway-child", str(folder)], stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    children.append(child)
    try:
        await until(lambda: (folder / "ports.txt").exists(), 60, "gateway process")
        port, control = map(int, (folder / "ports.txt").read_text().split())

        async def set_price(symbol: str, price: float) -> None:
            reply = await asyncio.to_thread(
                call, control, "set_price", {"symbol": symbol, "price": price}
            )
            assert reply.get("ok"), reply

        settings = load_settings(
            environ={}, dotenv_path=folder / "none.env", database_path=folder / "bench.db",
            log_dir=folder / "logs", ib_port=port,
        )  # fmt: skip
        set_settings(settings)
        exit_config = ExitConfig.from_settings(settings)  # the production percentages
        clock = get_clock(folder / "sim_clock.json")
        db = TradingDatabase(folder / "bench.db", clock=clock)
        day_trader_db = TradingDatabase(folder / "bench.db", clock=clock)
        for symbol in SYMBOLS:
            await set_price(symbol, START_PRICE)
        bare = subprocess.Popen(
            [sys.executable, __file__, "--bare-child", str(port)], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        children.append(bare)
        assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
        writer = subprocess.Popen(
            [sys.executable, __file__, "--writer-child", str(folder), str(writes_per_s)],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        children.append(writer)
        session = BrokerSession(settings, EM, AGENT, retry_seconds=1)
        manager = ExitManager(session, db, exit_config, clock)
        preload_calendar()  # as exit_manager.main does; the bot stop acts once it is built
        runner = asyncio.ensure_future(manager.run())
        await until(lambda: manager.reconciled and calendar_loaded(), 30, "reconciliation")
        trader = IB()
        await trader.connectAsync("127.0.0.1", port, clientId=DT, timeout=5)
        missed = 0
        next_trial_at = time.monotonic()
        try:
            for trial in range(trials):
                await asyncio.sleep(max(0.0, next_trial_at - time.monotonic()))
                next_trial_at = time.monotonic() + TRIAL_SPACING_S
                symbol = SYMBOLS[trial % len(SYMBOLS)]
                await set_price(symbol, START_PRICE)
                trade = trader.placeOrder(Stock(symbol, "SMART", "USD"), MarketOrder("BUY", 10))
                await until(lambda t=trade: t.orderStatus.status == "Filled", 5, "entry")
                entry = trade.orderStatus.avgFillPrice
                target = profit_target_price(entry, exit_config.profit_target_pct)
                stop = stop_loss_price(entry, exit_config.stop_loss_pct)
                # The day trader is another process: its write must not run on our loop.
                await asyncio.to_thread(
                    day_trader_db.add_active_position, symbol, 10, entry, target, stop
                )
                await until(
                    lambda s=symbol: s in manager.book.held() and s in manager.book.quotes()
                    and len([t for t in manager.broker.our_sells(s)
                             if t.orderStatus.status in ("Submitted", "PreSubmitted")]) == 2
                    and all(t.order.auxPrice == manager.book.held()[s].backstop_price
                            for t in manager.broker.server_stops(s)),
                    5, "protection",
                )  # fmt: skip
                held = manager.book.held()[symbol]
                between = round((held.stop_price + held.backstop_price) / 2, 2)
                await set_price(symbol, between)  # through the bot stop only
                await until(lambda s=symbol: not db.is_position_active(s), 5, "closed")
                closed = db.get_closed_today()[-1]
                missed += closed["exit_reason"] != "STOP_LOSS"
        finally:
            trader.disconnect()
            manager.request_stop()
            await asyncio.wait_for(runner, 10)
    finally:
        for extra in children[1:]:
            extra.kill()
            extra.wait(10)
        child.communicate(timeout=30)
    return missed


def _pct(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, round(q * (len(samples) - 1)))]


def _line(name: str, samples: list[float]) -> str:
    samples = sorted(samples)
    return (
        f"  {name:<13} n={len(samples):<4} p50 {_pct(samples, 0.5):6.2f}  p90 "
        f"{_pct(samples, 0.9):6.2f}  p99 {_pct(samples, 0.99):6.2f}  max {samples[-1]:6.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--writes-per-s", type=float, default=10.0)
    parser.add_argument("--gateway-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bare-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--writer-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gateway_child:
        _gateway_child(args.gateway_child)
        return 0
    if args.bare_child:
        _bare_child(args.bare_child)
        return 0
    if args.writer_child:
        folder = Path(args.writer_child[0])
        _database_writer_child(folder / "bench.db", folder / "sim_clock.json",
                               float(args.writer_child[1]))  # fmt: skip
        return 0
    if args.trials < 1 or args.writes_per_s <= 0:
        print(
            "bench_exit_reaction: error: --trials and --writes-per-s must be > 0", file=sys.stderr
        )
        return 2
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory() as folder:
        missed = asyncio.run(_bench(args.trials, args.writes_per_s, Path(folder)))
        probe = Path(folder) / "probe.txt"
        exits, bare = _latencies(probe, "exit"), _latencies(probe, "bare")
    if not exits or not bare:
        print("bench_exit_reaction: error: no exits or no bare reactions measured", file=sys.stderr)
        return 1
    ratio = _pct(sorted(exits), 0.99) / _pct(sorted(bare), 0.99)
    print(f"exit reaction, price through the bot stop -> order at the gateway ({args.trials} "
          f"trials, database writer at {args.writes_per_s:g} writes/s)")  # fmt: skip
    print(_line("exit manager", exits))
    print(_line("bare ib_async", bare))
    print(f"  ratio p99 exit / p99 bare {ratio:.2f}   (goal <= {GOAL_RATIO:.1f})")
    if missed:
        print(f"  {missed} trial(s) closed by the server stop or target, not the bot stop")
    print("  verdict:", "OK" if ratio <= GOAL_RATIO else "SLOWER THAN GOAL")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  machine: {os.cpu_count()} cpus, load average {load:.2f} (other work adds latency)")
    return 0 if ratio <= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
