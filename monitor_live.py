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
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core import cli
from core.money import pnl_dollars, pnl_percent
from core.settings import Settings
from ib.tools import PriceFeed, positions_of
from ib_tools import ToolSession, add_connection_args, add_db_arg, tool_session
from trading.model import BrokerPosition

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


def build_views(
    positions: Iterable[BrokerPosition],
    db_rows: Iterable[Mapping[str, Any]],
    prices: Mapping[str, float | None],
) -> list[PositionView]:
    """Pure: one view per IB position, plus database rows IB does not hold."""
    rows = {row["symbol"]: row for row in db_rows}
    views = []
    held = set()
    for pos in positions:
        if pos.quantity == 0:
            continue
        symbol = pos.symbol
        held.add(symbol)
        row = rows.get(symbol)
        note = ""
        if row is None:
            note = "not in database"
        elif int(row["quantity"]) != int(pos.quantity):
            note = f"database qty {row['quantity']}"
        views.append(
            PositionView(
                symbol=symbol,
                quantity=float(pos.quantity),
                entry_price=float(row["entry_price"]) if row else float(pos.avg_cost),
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


def frame(session: ToolSession, feed: PriceFeed) -> list[PositionView]:
    """IB's positions (as the position stream keeps them) beside the database's rows, priced."""
    assert session.db is not None
    positions = positions_of(session.ib, session.account, fresh=False)
    db_rows = session.db.get_active_positions()
    feed.follow([p.symbol for p in positions] + [row["symbol"] for row in db_rows])
    return build_views(positions, db_rows, feed.prices())


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(description="Live view of positions, targets, stops and P&L.")
    add_connection_args(parser, TOOL)
    add_db_arg(parser)
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    cli.add_seconds_arg(parser, "--every", 2.0, "time between refreshes")
    cli.add_seconds_arg(parser, "--price-wait", 5.0, "--once: time to wait for prices")
    return parser


def monitor(args: argparse.Namespace, settings: Settings) -> int:
    with tool_session(args, TOOL, read_only_db=True, settings=settings) as session:
        db, ib = session.db, session.ib
        assert db is not None
        feed = PriceFeed(ib)
        positions_of(ib, session.account)  # subscribes: the stream keeps them current
        if args.once:
            deadline = time.monotonic() + args.price_wait
            views = frame(session, feed)
            while time.monotonic() < deadline and any(v.last is None for v in views):
                ib.sleep(0.2)
                views = frame(session, feed)
            print(render(views, f"{db.clock.now():%H:%M:%S}"), end="")
            return 0
        from rich.live import Live
        from rich.text import Text

        with Live(refresh_per_second=4, screen=False) as live:
            while True:
                views = frame(session, feed)
                live.update(Text(render(views, f"{db.clock.now():%H:%M:%S}")))
                ib.sleep(args.every)


def main(argv: list[str] | None = None) -> int:
    return cli.run_program(TOOL, build_parser(), monitor, argv)


if __name__ == "__main__":
    sys.exit(main())
