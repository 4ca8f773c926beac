"""What the operator tools share: common flags, a connection with a fixed client id, one-line errors.

Each tool has its own client id (IB refuses a duplicate with 326; the bots use 10 and 2).
Orders placed by one client id are invisible to the others except through reqAllOpenOrders,
so tools that only look never place anything. Starting and ending a tool is core.cli's
run_program; the work at IB is ib.tools' (and ib.liquidation's).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import cli
from core.cli import ProgramError as ToolError
from core.cli import quiet_logging, run_program, settings_for
from core.settings import Settings, check_trading_mode
from ib.account import account_of
from ib.tools import connect
from observability import TradingDatabase, get_database

__all__ = [
    "TOOLS_THAT_SEND_ORDERS",
    "TOOL_CLIENT_IDS",
    "ToolError",
    "ToolSession",
    "add_connection_args",
    "add_db_arg",
    "live_flag_of",
    "open_database",
    "quiet_logging",
    "run_program",
    "settings_for",
    "tool_session",
]

TOOL_CLIENT_IDS = {
    "test_connection": 91,
    "check_orders": 92,
    "monitor_live": 93,
    "liquidate_all": 94,
}
# Tools that can send an order: they take --live and connect only to an account that fits it.
TOOLS_THAT_SEND_ORDERS = frozenset({"liquidate_all"})


def add_connection_args(parser: argparse.ArgumentParser, tool: str) -> None:
    default_id = TOOL_CLIENT_IDS[tool]
    cli.add_gateway_args(parser, default_id, f"API client id (default {default_id})")
    cli.add_seconds_arg(parser, "--timeout", 10.0, "connect timeout")
    if tool in TOOLS_THAT_SEND_ORDERS:  # the bots' paper/live rule, account included
        parser.add_argument(
            "--live", action="store_true", help="trade real money (also needs TRADING_MODE=live)"
        )


def live_flag_of(args: argparse.Namespace) -> bool | None:
    """--live as given to a tool that sends orders; None for a tool that only looks."""
    return getattr(args, "live", None)


def add_db_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="database file (default DATABASE_PATH)")


def open_database(
    args: argparse.Namespace, settings: Settings, *, read_only: bool = False
) -> TradingDatabase:
    """The --db (or DATABASE_PATH) database; a tool that only reads never creates one."""
    return get_database(
        getattr(args, "db", None) or settings.database_path,
        if_missing="refuse" if read_only else "warn",
    )


@dataclass(frozen=True)
class ToolSession:
    """What a tool works with: its settings, the database (None if it needs none), a connected
    IB connection (the tool hands it to ib.tools), and the account it works on."""

    settings: Settings
    db: TradingDatabase | None
    ib: Any
    account: str


@contextmanager
def tool_session(
    args: argparse.Namespace,
    tool: str,
    *,
    database: bool = True,
    read_only_db: bool = False,
    settings: Settings | None = None,
) -> Iterator[ToolSession]:
    """The paper/live check, then the database, then the connection; disconnects on exit.

    `settings` are run_program's (default: loaded here from the flags). A tool that sends
    orders (it has --live) gets the connection only when the gateway's account fits
    paper/live, before it can send anything. With `read_only_db` (the tool only reads) a
    missing database is refused, not created. Raises SettingsError, DatabaseError or
    ToolError before anything later opens.
    """
    settings = settings or settings_for(args)
    check_trading_mode(settings, live_flag_of(args))
    db = open_database(args, settings, read_only=read_only_db) if database else None
    ib = connect(settings.ib_host, settings.ib_port, args.client_id, args.timeout)
    try:
        account = account_of(ib, settings.ib_account)
        if live_flag_of(args) is not None:
            check_trading_mode(settings, live_flag_of(args), account)
        yield ToolSession(settings, db, ib, account)
    finally:
        ib.disconnect()
