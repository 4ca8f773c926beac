"""Live terminal view of the positions: price, distance to target and stop, P&L.

    python monitor_live.py              # refreshes every 2 s until Ctrl+C
    python monitor_live.py --once       # one frame (scripts, tests)

Quantities come from IB (the truth), target and stop from the database; prices stream from
reqMktData. A position IB holds that the database does not know, or the reverse, is marked.
Read-only: it never places or cancels anything.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ib_async import IB, Position, Ticker

from core import cli
from core.money import pnl_dollars, pnl_percent
from ib_tools import account_of, add_connection_args, add_db_arg, run_tool, tool_session

TOOL = "monitor_live"


@dataclass(frozen=True)
class PositionView:
    symbol: str
    quantity: float  # at IB
    entry_price: float
    last: float | None
    profit_target_price: float | None
    stop_loss_price: float | None
    note: str  # "" when IB and the database agree

    @property
    def to_target_pct(self) -> float | None:
        if self.last is None or not self.profit_target_price:
            return None
        return (self.profit_target_price - self.last) / self.last * 100

    @property
    def to_stop_pct(self) -> float | None:
        if self.last is None or not self.stop_loss_price:
            return None
        return (self.last - self.stop_loss_price) / self.last * 100

    @property
    def pnl(self) -> float | None:
        return (
            None if self.last is None else pnl_dollars(self.entry_price, self.last, self.quantity)
        )

    @property
    def pnl_pct(self) -> float | None:
        return None if self.last is None else pnl_percent(self.entry_price, self.last)


def _price(ticker: Ticker | None) -> float | None:
    if ticker is None:
        return None
    for value in (ticker.last, ticker.midpoint(), ticker.close):
        if value is not None and not math.isnan(value) and value > 0:
            return float(value)
    return None


def build_views(
    positions: Iterable[Position],
    db_rows: Iterable[Mapping[str, Any]],
    prices: Mapping[str, float | None],
) -> list[PositionView]:
    """Pure: one view per IB position, plus database rows IB does not hold."""
    rows = {row["symbol"]: row for row in db_rows}
    views = []
    held = set()
    for pos in positions:
        if pos.position == 0:
            continue
        symbol = pos.contract.symbol
        held.add(symbol)
        row = rows.get(symbol)
        note = ""
        if row is None:
            note = "not in database"
        elif int(row["quantity"]) != int(pos.position):
            note = f"database qty {row['quantity']}"
        views.append(
            PositionView(
                symbol=symbol,
                quantity=float(pos.position),
                entry_price=float(row["entry_price"]) if row else float(pos.avgCost),
                last=prices.get(symbol),
                profit_target_price=row["profit_target_price"] if row else None,
                stop_loss_price=row["stop_loss_price"] if row else None,
                note=note,
            )
        )
    for symbol, row in rows.items():
        if symbol not in held:
            views.append(
                PositionView(
                    symbol,
                    0.0,
                    float(row["entry_price"]),
                    prices.get(symbol),
                    row["profit_target_price"],
                    row["stop_loss_price"],
                    "database only: not held at IB",
                )
            )
    return sorted(views, key=lambda v: v.symbol)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(views: list[PositionView], now_text: str) -> str:
    from rich.console import Console
    from rich.table import Table

    total = sum(v.pnl or 0.0 for v in views)
    # Open positions have paid no exit commission yet: their P&L is the price move, labelled.
    table = Table(title=f"positions {now_text} New York — open P&L ${total:+,.2f} gross")
    for column in ("symbol", "qty", "entry", "last", "target", "to target", "stop", "to stop"):
        table.add_column(column, justify="right")
    table.add_column("gross P&L $", justify="right")
    table.add_column("gross P&L %", justify="right")
    table.add_column("note")
    for v in views:
        table.add_row(
            v.symbol,
            f"{v.quantity:g}",
            f"{v.entry_price:.2f}",
            _fmt(v.last, ".2f"),
            _fmt(v.profit_target_price, ".2f"),
            _fmt(v.to_target_pct, "+.2f") + ("%" if v.to_target_pct is not None else ""),
            _fmt(v.stop_loss_price, ".2f"),
            _fmt(v.to_stop_pct, "+.2f") + ("%" if v.to_stop_pct is not None else ""),
            _fmt(v.pnl, "+,.2f"),
            _fmt(v.pnl_pct, "+.2f"),
            v.note,
        )
    if not views:
        table.caption = "no positions"
    buffer = io.StringIO()
    Console(file=buffer, width=140, color_system=None).print(table)
    return buffer.getvalue()


class PriceFeed:
    """reqMktData streams for the held symbols, opened and closed as positions change."""

    def __init__(self, ib: IB) -> None:
        self.ib = ib
        self.tickers: dict[str, Ticker] = {}

    def follow(self, positions: Iterable[Position], extra_symbols: Iterable[str]) -> None:
        wanted = {p.contract.symbol: p.contract for p in positions if p.position != 0}
        for symbol in extra_symbols:
            if symbol not in wanted and symbol not in self.tickers:
                from ib_async import Stock

                qualified = self.ib.qualifyContracts(Stock(symbol, "SMART", "USD"))
                if qualified and qualified[0] is not None:
                    wanted[symbol] = qualified[0]
            elif symbol in self.tickers:
                wanted.setdefault(symbol, self.tickers[symbol].contract)
        for symbol in list(self.tickers):
            if symbol not in wanted:
                self.ib.cancelMktData(self.tickers.pop(symbol).contract)
        for symbol, contract in wanted.items():
            if symbol not in self.tickers:
                contract.exchange = contract.exchange or "SMART"
                self.tickers[symbol] = self.ib.reqMktData(contract, "", False, False)

    def prices(self) -> dict[str, float | None]:
        return {symbol: _price(ticker) for symbol, ticker in self.tickers.items()}


def frame(ib: IB, feed: PriceFeed, db, account: str) -> list[PositionView]:  # type: ignore[no-untyped-def]
    positions = [p for p in ib.positions() if p.account == account]
    db_rows = db.get_active_positions()
    feed.follow(positions, [row["symbol"] for row in db_rows])
    return build_views(positions, db_rows, feed.prices())


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(description="Live view of positions, targets, stops and P&L.")
    add_connection_args(parser, TOOL)
    add_db_arg(parser)
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    cli.add_seconds_arg(parser, "--every", 2.0, "time between refreshes")
    cli.add_seconds_arg(parser, "--price-wait", 5.0, "--once: time to wait for prices")
    return parser


def monitor(args: argparse.Namespace) -> int:
    with tool_session(args, TOOL, read_only_db=True) as session:
        settings, db, ib = session.settings, session.db, session.ib
        feed = PriceFeed(ib)
        account = account_of(ib, settings)
        ib.reqPositions()
        if args.once:
            deadline = time.monotonic() + args.price_wait
            views = frame(ib, feed, db, account)
            while time.monotonic() < deadline and any(v.last is None for v in views):
                ib.sleep(0.2)
                views = frame(ib, feed, db, account)
            print(render(views, f"{db.clock.now():%H:%M:%S}"), end="")
            return 0
        from rich.live import Live
        from rich.text import Text

        with Live(refresh_per_second=4, screen=False) as live:
            while True:
                views = frame(ib, feed, db, account)
                live.update(Text(render(views, f"{db.clock.now():%H:%M:%S}")))
                ib.sleep(args.every)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(TOOL, lambda: monitor(args))


if __name__ == "__main__":
    sys.exit(main())
