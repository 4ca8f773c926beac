"""What the operator tools share: common flags, a connection with a fixed client id, one-line errors.

Each tool has its own client id (IB refuses a duplicate with 326; the bots use 10 and 2).
Orders placed by one client id are invisible to the others except through reqAllOpenOrders,
so tools that only look never place anything.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ib_async import IB

from core import cli
from core.broker import connect_failure
from core.clock import ClockError
from core.logs import setup_logging
from core.settings import (
    Settings,
    SettingsError,
    check_trading_mode,
    get_settings,
    set_settings,
    with_overrides,
)
from observability import DatabaseError, TradingDatabase, get_database

TOOL_CLIENT_IDS = {
    "test_connection": 91,
    "check_orders": 92,
    "monitor_live": 93,
    "liquidate_all": 94,
}
# Tools that can send an order: they take --live and connect only to an account that fits it.
TOOLS_THAT_SEND_ORDERS = frozenset({"liquidate_all"})


class ToolError(RuntimeError):
    """A tool cannot do its job; the message is one line saying what to do."""


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


def settings_for(args: argparse.Namespace) -> Settings:
    """Settings with --host/--port applied (validated like the environment would be), checked
    against the paper/live rule. Raises SettingsError."""
    settings = get_settings()
    changes = {}
    if getattr(args, "host", None):
        changes["ib_host"] = args.host
    if getattr(args, "port", None):
        changes["ib_port"] = args.port
    if changes:
        settings = with_overrides(settings, **changes)
        set_settings(settings)
    check_trading_mode(settings, live_flag_of(args))
    return settings


def open_database(
    args: argparse.Namespace, settings: Settings, *, read_only: bool = False
) -> TradingDatabase:
    """The --db (or DATABASE_PATH) database; a tool that only reads never creates one."""
    return get_database(
        getattr(args, "db", None) or settings.database_path,
        if_missing="refuse" if read_only else "warn",
    )


def quiet_logging(tool: str, settings: Settings) -> None:
    """JSON run file for the record, nothing on the console (the tool prints its own lines)."""
    setup_logging(tool, log_dir=settings.log_dir, level=settings.log_level, console=False)
    logging.getLogger("ib_async").setLevel(logging.CRITICAL)


def connect(settings: Settings, client_id: int, timeout: float = 10.0) -> IB:
    """A connected IB. Raises ToolError naming host, port and client id when it fails."""
    ib = IB()
    ib.RequestTimeout = max(timeout, 5.0)
    try:
        ib.connect(settings.ib_host, settings.ib_port, clientId=client_id, timeout=timeout)
    except TimeoutError as exc:
        failure = connect_failure(settings.ib_host, settings.ib_port, timeout, exc)
        raise ToolError(f"{failure} (or is client id {client_id} in use?)") from None
    except OSError as exc:
        raise ToolError(connect_failure(settings.ib_host, settings.ib_port, timeout, exc)) from None
    return ib


@dataclass(frozen=True)
class ToolSession:
    """What a tool works with: its settings, the database (None if it needs none), a connected IB."""

    settings: Settings
    db: TradingDatabase | None
    ib: IB


@contextmanager
def tool_session(
    args: argparse.Namespace, tool: str, *, database: bool = True, read_only_db: bool = False
) -> Iterator[ToolSession]:
    """Settings, then logging, then the database, then the connection; disconnects on exit.

    A tool that sends orders (it has --live) gets the connection only when the gateway's
    account fits paper/live, before it can send anything.
    With `read_only_db` (the tool only reads) a missing database is refused, not created.
    Raises SettingsError, DatabaseError or ToolError (see run_tool) before anything later opens.
    """
    settings = settings_for(args)
    quiet_logging(tool, settings)
    db = open_database(args, settings, read_only=read_only_db) if database else None
    ib = connect(settings, args.client_id, args.timeout)
    try:
        if live_flag_of(args) is not None:
            check_trading_mode(settings, live_flag_of(args), account_of(ib, settings))
        yield ToolSession(settings, db, ib)
    finally:
        ib.disconnect()


def account_of(ib: IB, settings: Settings) -> str:
    accounts = ib.managedAccounts()
    if settings.ib_account:
        if settings.ib_account not in accounts:
            raise ToolError(
                f"IB_ACCOUNT={settings.ib_account} is not managed by this gateway "
                f"({', '.join(accounts) or 'none'})"
            )
        return settings.ib_account
    if not accounts:
        raise ToolError("the gateway reports no managed account")
    return accounts[0]


def run_tool(tool: str, body: Callable[[], int]) -> int:
    """Run a tool's body; expected failures become one line on stderr and exit code 1."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{tool}: interrupted", file=sys.stderr)
        return 130
    except (ToolError, SettingsError, DatabaseError, ClockError) as exc:
        print(f"{tool}: error: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"{tool}: error: lost the connection to IB ({exc})", file=sys.stderr)
        return 1
