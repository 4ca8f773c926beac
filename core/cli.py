"""The command-line vocabulary every program shares: same flag names, ranges and messages.

A bad value is refused while parsing, in one line naming the flag, the value and the range
(`exit_manager.py: error: argument --port: '99999' is outside [1, 65535] (see --help)`), so no
program ever runs on a port, client id or interval it cannot use.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

from core.tickers import is_ticker

MAX_CLIENT_ID = 999_999
MAX_SECONDS = 3600.0


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def ranged(kind: type, lo: float, hi: float, lo_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: `kind(raw)` within [lo, hi] ((lo, hi] with lo_open); NaN refused."""
    shown = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"

    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{raw!r} is not a {'whole number' if kind is int else 'number'} in {shown}"
            ) from None
        if (
            (isinstance(value, float) and math.isnan(value))
            or value > hi
            or value < lo
            or (lo_open and value == lo)
        ):
            raise argparse.ArgumentTypeError(f"{raw!r} is outside {shown}")
        return value

    return parse


def host(raw: str) -> str:
    """A gateway host name or address: not empty, no spaces or control characters."""
    text = raw.strip()
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a host name or address")
    return text


def tickers(raw: str) -> tuple[str, ...]:
    """A comma-separated list of tickers (AAPL,MSFT), upper-cased, without repeats."""
    symbols = tuple(dict.fromkeys(s.strip().upper() for s in raw.split(",") if s.strip()))
    bad = [s for s in symbols if not is_ticker(s)]
    if not symbols or bad:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a comma-separated list of tickers such as AAPL,MSFT"
        )
    return symbols


port = ranged(int, 1, 65_535)
client_id = ranged(int, 0, MAX_CLIENT_ID)
seconds = ranged(float, 0.0, MAX_SECONDS, lo_open=True)


def add_gateway_args(
    parser: argparse.ArgumentParser, default_client_id: int | None, client_id_help: str
) -> None:
    """--host, --port and --client-id, validated the same way in every program."""
    parser.add_argument("--host", type=host, help="gateway host (default IB_HOST)")
    parser.add_argument("--port", type=port, help="gateway port, 1-65535 (default IB_PORT)")
    parser.add_argument(
        "--client-id", type=client_id, default=default_client_id, help=client_id_help
    )


def add_seconds_arg(parser: argparse.ArgumentParser, flag: str, default: float, what: str) -> None:
    """A duration flag in real seconds, in (0, 3600]."""
    parser.add_argument(
        flag,
        type=seconds,
        default=default,
        help=f"{what}, seconds in (0, 3600] (default {default:g})",
    )
