"""Simulated gateway benchmark: ticks delivered to two ib_async clients, and tick latency.

    python bench/bench_ibsim.py [--symbols 50] [--speed 120] [--seconds 10] [--probes 200]

The gateway runs as its own process (as IB Gateway does); two ib_async clients in this process
stream every symbol. Throughput counts the ticks (Ticker.ticks entries) the clients receive.
Latency, while both clients stream at full rate: a helper thread moves one symbol's price
through the control interface (set_price); "delivery" runs from the moment the gateway wrote
the ticks (time.monotonic is system-wide on Linux) to the pendingTickersEvent showing the new
price; "end to end" also includes the HTTP request and Market.set_price.
Targets: >= 5,000 ticks/s to 2 clients for 50 symbols; p99 <= 5 ms price change -> event.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_TICKS_PER_S = 5000.0
TARGET_P99_MS = 5.0


def gateway_process(symbols: int, speed: float) -> tuple[subprocess.Popen[str], int, int]:
    """The gateway as users start it (`python -m ibsim`) in its own process: it, its port
    and its control port."""
    args = [
        sys.executable, "-m", "ibsim", "--port", "0", "--control-port", "0",
        "--symbols", str(symbols), "--speed", str(speed), "--date", "2026-11-24",
        "--start", "10:00", "--log-level", "WARNING",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"gateway did not start: {line!r}")
    port = int(line.split("127.0.0.1:")[1].split()[0])
    control = int(line.rsplit("control", 1)[1].split()[0])
    return proc, port, control


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--speed", type=float, default=120.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--probes", type=int, default=200)
    opts = parser.parse_args()

    from ib_async import IB, Stock

    from ibsim import ctl

    proc, port, control = gateway_process(opts.symbols, opts.speed)
    clients: list[IB] = []
    try:
        names = ctl.call(control, "health", {})["result"]["symbols"]
        for client_id in (2, 10):
            ib = IB()
            ib.connect("127.0.0.1", port, clientId=client_id, timeout=10)
            clients.append(ib)
        ticks = [0, 0]
        tickers_by_client = []
        for i, ib in enumerate(clients):
            contracts = [Stock(name, "SMART", "USD") for name in names]
            ib.qualifyContracts(*contracts)
            tickers_by_client.append({c.symbol: ib.reqMktData(c) for c in contracts})

            def count(tickers, i=i) -> None:  # type: ignore[no-untyped-def]
                ticks[i] += sum(len(t.ticks) for t in tickers)

            ib.pendingTickersEvent += count
        ib0 = clients[0]
        ib0.sleep(1.0)  # warm up: initial snapshots
        ticks[:] = [0, 0]
        began = time.perf_counter()
        ib0.sleep(opts.seconds)
        elapsed = time.perf_counter() - began
        rate = sum(ticks) / elapsed

        delivery, end_to_end = _probe_latency(
            ib0, tickers_by_client[0], control, names, opts.probes
        )
    finally:
        for ib in clients:
            ib.disconnect()
        proc.terminate()
        proc.wait(timeout=20)

    print(f"symbols={len(names)} speed={opts.speed:g} clients=2 seconds={opts.seconds:g}")
    print(f"ticks delivered: {rate:,.0f}/s (client 2: {ticks[0]:,}, client 10: {ticks[1]:,})")
    print(f"  ratio to target {TARGET_TICKS_PER_S:,.0f}/s: {rate / TARGET_TICKS_PER_S:.2f}")
    print(f"latency to pendingTickersEvent over {len(delivery)} probes:")
    for name, values in (("delivery", delivery), ("end to end", end_to_end)):
        median = statistics.median(values) * 1000
        p99 = sorted(values)[max(0, int(len(values) * 0.99) - 1)] * 1000
        print(
            f"  {name:<10} median {median:.2f} ms, p99 {p99:.2f} ms"
            f" (target p99 {TARGET_P99_MS:g} ms, ratio {p99 / TARGET_P99_MS:.2f})"
        )
    return 0


def _probe_latency(ib, tickers: dict, control: int, names: list[str], probes: int):  # type: ignore[no-untyped-def]
    """(delivery, end_to_end) latencies in seconds."""
    from ibsim import ctl

    delivery: list[float] = []
    end_to_end: list[float] = []
    rng = random.Random(1)
    for _ in range(probes):
        symbol = rng.choice(names)
        ticker = tickers[symbol]
        base = ticker.last if ticker.last == ticker.last and ticker.last > 1 else 50.0
        price = round(base * rng.uniform(0.9, 1.1), 2)
        if price == ticker.last:
            price = round(price + 0.01, 2)
        sent: list[float] = []
        written: list[float] = []
        arrived: list[float] = []

        def on_pending(pending, ticker=ticker, price=price, arrived=arrived) -> None:  # type: ignore[no-untyped-def]
            if ticker in pending and ticker.last == price and not arrived:
                arrived.append(time.monotonic())

        ib.pendingTickersEvent += on_pending

        def push(symbol=symbol, price=price, sent=sent, written=written) -> None:  # type: ignore[no-untyped-def]
            sent.append(time.monotonic())
            reply = ctl.call(control, "set_price", {"symbol": symbol, "price": price})
            written.append(reply["result"]["sent_monotonic"])

        worker = threading.Thread(target=push)
        worker.start()
        deadline = time.monotonic() + 2
        while not arrived and time.monotonic() < deadline:
            ib.sleep(0.0005)
        worker.join()
        ib.pendingTickersEvent -= on_pending
        if arrived and sent and written:
            delivery.append(arrived[0] - written[0])
            end_to_end.append(arrived[0] - sent[0])
    return delivery, end_to_end


if __name__ == "__main__":
    sys.exit(main())
