"""Check the link to IB: server version, account, market-data type, positions, round trip.

    python test_connection.py                 # IB_HOST / IB_PORT from the settings
    python test_connection.py --port 4002 --symbol SPY

Exit code 0 when connected and answering, 1 otherwise (one line saying why).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from core import cli
from core.settings import Settings
from ib.tools import market_data_type_in_effect, positions_of, round_trip, server_version
from ib_tools import ToolSession, add_connection_args, tool_session

TOOL = "test_connection"


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


def check(
    session: ToolSession, symbol: str | None, wait_s: float, client_id: int
) -> ConnectionReport:
    """Every check in one report. `symbol` None: probe data with a held symbol, else SPY."""
    ib, settings = session.ib, session.settings
    round_trip_ms, server_time = round_trip(ib)
    positions = positions_of(ib, session.account)
    symbol = symbol or (positions[0].symbol if positions else "SPY")
    return ConnectionReport(
        host=settings.ib_host,
        port=settings.ib_port,
        client_id=client_id,
        server_version=server_version(ib),
        account=session.account,
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


def probe(args: argparse.Namespace, settings: Settings) -> int:
    with tool_session(args, TOOL, database=False, settings=settings) as session:
        symbol = args.symbol.upper() if args.symbol else None
        report = check(session, symbol, args.data_wait, args.client_id)
    print("\n".join(report.lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_program(TOOL, build_parser(), probe, argv)


if __name__ == "__main__":
    sys.exit(main())
