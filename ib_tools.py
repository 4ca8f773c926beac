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

from core.clock import ClockError
from core.logs import setup_logging
from core.settings import Settings, SettingsError, get_settings, set_settings, with_overrides
from observability import DatabaseError, TradingDatabase, get_database

TOOL_CLIENT_IDS = {
    "test_connection": 91,
    "check_orders": 92,
    "monitor_live": 93,
    "liquidate_all": 94,
}


class ToolError(RuntimeError):
    """A tool cannot do its job; the message is one line saying what to do."""


def add_connection_args(parser: argparse.ArgumentParser, tool: str) -> None:
    parser.add_argument("--host", help="gateway host (default IB_HOST)")
    parser.add_argument("--port", type=int, help="gateway port (default IB_PORT)")
    parser.add_argument(
        "--client-id",
        type=int,
        default=TOOL_CLIENT_IDS[tool],
        help=f"API client id (default {TOOL_CLIENT_IDS[tool]})",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="connect timeout, seconds")


def add_db_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="database file (default DATABASE_PATH)")


def settings_for(args: argparse.Namespace) -> Settings:
    """Settings with --host/--port applied (validated like the environment would be)."""
    settings = get_settings()
    changes = {}
    if getattr(args, "host", None):
        changes["ib_host"] = args.host
    if getattr(args, "port", None):
        changes["ib_port"] = args.port
    if changes:
        settings = with_overrides(settings, **changes)
        set_settings(settings)
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
    where = f"{settings.ib_host}:{settings.ib_port} (client id {client_id})"
    try:
        ib.connect(settings.ib_host, settings.ib_port, clientId=client_id, timeout=timeout)
    except ConnectionRefusedError:
        raise ToolError(
            f"cannot connect to IB at {where}: connection refused; is the gateway running "
            "and its API port enabled?"
        ) from None
    except TimeoutError:
        raise ToolError(
            f"no answer from IB at {where} within {timeout:g} s; the client id may be in use "
            "or the gateway is hung"
        ) from None
    except OSError as exc:
        raise ToolError(f"cannot connect to IB at {where}: {exc}") from None
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

    With `read_only_db` (the tool only reads) a missing database is refused, not created.
    Raises SettingsError, DatabaseError or ToolError (see run_tool) before anything later opens.
    """
    settings = settings_for(args)
    quiet_logging(tool, settings)
    db = open_database(args, settings, read_only=read_only_db) if database else None
    ib = connect(settings, args.client_id, args.timeout)
    try:
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
