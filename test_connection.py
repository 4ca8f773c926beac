"""Check the link to IB: server version, account, market-data type, positions, round trip.

    python test_connection.py                 # IB_HOST / IB_PORT from the settings
    python test_connection.py --port 4002 --symbol SPY

Exit code 0 when connected and answering, 1 otherwise (one line saying why).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from ib_async import IB, Stock

from core import cli
from ib_tools import account_of, add_connection_args, run_tool, tool_session

TOOL = "test_connection"
MARKET_DATA_TYPES = {1: "1 live", 2: "2 frozen", 3: "3 delayed", 4: "4 delayed-frozen"}


@dataclass(frozen=True)
class ConnectionReport:
    host: str
    port: int
    client_id: int
    server_version: int
    account: str
    market_data_type: str
    positions: int
    round_trip_ms: float
    server_time: str

    def lines(self) -> list[str]:
        return [
            f"connected:        {self.host}:{self.port} (client id {self.client_id})",
            f"server version:   {self.server_version}",
            f"account:          {self.account}",
            f"market data type: {self.market_data_type}",
            f"positions:        {self.positions}",
            f"round trip:       {self.round_trip_ms:.1f} ms (reqCurrentTime, server {self.server_time})",
        ]


def measure_round_trip(ib: IB) -> tuple[float, str]:
    """Milliseconds for one reqCurrentTime, and the server's time."""
    started = time.perf_counter()
    server_time = ib.reqCurrentTime()
    return (time.perf_counter() - started) * 1000, server_time.isoformat(timespec="seconds")


def market_data_type_in_effect(ib: IB, symbol: str, wait_s: float) -> str:
    """The type IB actually delivers for `symbol` (it may fall back to delayed), or why unknown."""
    contracts = ib.qualifyContracts(Stock(symbol, "SMART", "USD"))
    if not contracts or contracts[0] is None or not contracts[0].conId:
        return f"unknown ({symbol} not found at IB; pick another with --symbol)"
    ticker = ib.reqMktData(contracts[0], "", False, False)
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            ib.sleep(0.1)
            if ticker.marketDataType in MARKET_DATA_TYPES and ticker.time is not None:
                return MARKET_DATA_TYPES[ticker.marketDataType]
        return f"unknown (no tick for {symbol} within {wait_s:g} s; market closed or no data)"
    finally:
        ib.cancelMktData(ticker.contract)


def check(
    ib: IB, account: str, symbol: str | None, wait_s: float, host: str, port: int, cid: int
) -> ConnectionReport:
    """Every check in one report. `symbol` None: probe data with a held symbol, else SPY."""
    round_trip_ms, server_time = measure_round_trip(ib)
    positions = [p for p in ib.reqPositions() if p.account == account and p.position != 0]
    symbol = symbol or (positions[0].contract.symbol if positions else "SPY")
    return ConnectionReport(
        host=host,
        port=port,
        client_id=cid,
        server_version=ib.client.serverVersion(),
        account=account,
        market_data_type=market_data_type_in_effect(ib, symbol, wait_s),
        positions=len(positions),
        round_trip_ms=round_trip_ms,
        server_time=server_time,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(description="Check the connection to IB; exit code 0/1.")
    add_connection_args(parser, TOOL)
    parser.add_argument(
        "--symbol", help="symbol to probe market data with (default: a held one, else SPY)"
    )
    cli.add_seconds_arg(parser, "--data-wait", 3.0, "time to wait for a tick")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        with tool_session(args, TOOL, database=False) as session:
            settings, ib = session.settings, session.ib
            report = check(
                ib,
                account_of(ib, settings),
                args.symbol.upper() if args.symbol else None,
                args.data_wait,
                settings.ib_host,
                settings.ib_port,
                args.client_id,
            )
        print("\n".join(report.lines()))
        return 0

    return run_tool(TOOL, body)


if __name__ == "__main__":
    sys.exit(main())
