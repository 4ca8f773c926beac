"""The day report, from the database's fills: round trips, win rate, P&L, drawdown, chart.

Used by `analyze_today.py` and by `supervisor.py --sim` at the end of a simulated day.
Round trips are built from the `trades` table (FIFO per symbol), so any past date can be
analysed; the exit reason comes from the selling order's intent (its purpose), or from
today's closed-positions row.
"""

from __future__ import annotations

import io
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from observability import TradingDatabase
from trading.model import exit_reason_for

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class RoundTrip:
    """One exit (all fills of one selling order) matched FIFO against the buys before it."""

    symbol: str
    quantity: float
    entry_price: float
    exit_price: float
    entry_time: datetime
    exit_time: datetime
    commission: float
    exit_reason: str
    exit_order_ref: str | None
    entry_order_ref: str | None = None  # the first matched buy's order (its rule, its decision)

    @property
    def gross_pnl(self) -> float:
        return (self.exit_price - self.entry_price) * self.quantity

    @property
    def pnl(self) -> float:
        """Net of both legs' commissions."""
        return self.gross_pnl - self.commission

    @property
    def capital(self) -> float:
        """What the entry cost (shares x entry price)."""
        return self.entry_price * self.quantity

    @property
    def pnl_pct(self) -> float:
        """Net P&L as a percent of the entry's cost (the basis of every P&L shown)."""
        return self.pnl / self.capital * 100 if self.capital else 0.0

    @property
    def gross_pnl_pct(self) -> float:
        """The price move alone, before commissions."""
        return (self.exit_price - self.entry_price) / self.entry_price * 100

    @property
    def hold_seconds(self) -> float:
        return (self.exit_time - self.entry_time).total_seconds()


def round_trips_from_fills(
    fills: Iterable[Mapping[str, Any]],
    reasons_by_ref: Mapping[str, str],
    reasons_by_symbol: Mapping[str, str] | None = None,
) -> tuple[list[RoundTrip], dict[str, float]]:
    """Pure: FIFO-match the day's fills. Returns (round trips by exit time, shares still open).

    Sells beyond the bought shares (a position from an earlier day) are matched at nothing
    and left out of the round trips.
    """
    # symbol -> [qty, price, time, commission per share, order ref]
    lots: dict[str, deque[list[Any]]] = defaultdict(deque)
    pieces: dict[
        tuple[str, str], list[tuple[float, float, float, datetime, datetime, float, str | None]]
    ] = defaultdict(list)
    for fill in sorted(fills, key=lambda f: (f["trade_time"], f["id"])):
        symbol = fill["symbol"]
        qty = float(fill["quantity"])
        price = float(fill["price"])
        when = datetime.fromisoformat(fill["trade_time"])
        commission = float(fill.get("commission") or 0.0)
        if fill["side"] == "BUY":
            per_share = commission / qty if qty else 0.0
            lots[symbol].append([qty, price, when, per_share, fill.get("order_ref")])
            continue
        key = (symbol, fill.get("order_ref") or f"exec:{fill.get('exec_id') or fill['id']}")
        sell_comm_per_share = commission / qty if qty else 0.0
        while qty > 1e-9 and lots[symbol]:
            lot = lots[symbol][0]
            take = min(qty, lot[0])
            commission_part = take * (lot[3] + sell_comm_per_share)
            pieces[key].append((take, lot[1], price, lot[2], when, commission_part, lot[4]))
            lot[0] -= take
            qty -= take
            if lot[0] <= 1e-9:
                lots[symbol].popleft()
    trips = []
    for (symbol, ref), parts in pieces.items():
        shares = sum(p[0] for p in parts)
        reason = reasons_by_ref.get(ref) or (reasons_by_symbol or {}).get(symbol, "UNKNOWN")
        trips.append(
            RoundTrip(
                symbol=symbol,
                quantity=shares,
                entry_price=sum(p[0] * p[1] for p in parts) / shares,
                exit_price=sum(p[0] * p[2] for p in parts) / shares,
                entry_time=min(p[3] for p in parts),
                exit_time=max(p[4] for p in parts),
                commission=sum(p[5] for p in parts),
                exit_reason=reason,
                exit_order_ref=None if ref.startswith("exec:") else ref,
                entry_order_ref=min(parts, key=lambda p: p[3])[6],
            )
        )
    trips.sort(key=lambda t: (t.exit_time, t.symbol))
    still_open = {s: sum(lot[0] for lot in q) for s, q in lots.items() if q}
    return trips, {s: q for s, q in still_open.items() if q > 1e-9}


def max_drawdown(pnls: Iterable[float]) -> float:
    """Largest peak-to-trough fall (>= 0) of the cumulative P&L, starting from 0."""
    equity = peak = worst = 0.0
    for pnl in pnls:
        equity += pnl
        peak = max(peak, equity)
        worst = max(worst, peak - equity)
    return worst


@dataclass(frozen=True)
class DayReport:
    trading_date: str
    round_trips: list[RoundTrip]
    still_open: dict[str, float]
    fills: int

    @property
    def total_pnl(self) -> float:
        return sum(t.pnl for t in self.round_trips)

    @property
    def gross_pnl(self) -> float:
        return sum(t.gross_pnl for t in self.round_trips)

    @property
    def commissions(self) -> float:
        return sum(t.commission for t in self.round_trips)

    @property
    def capital_used(self) -> float:
        """The entries' cost summed over the round trips."""
        return sum(t.capital for t in self.round_trips)

    @property
    def total_pnl_pct(self) -> float:
        """Net P&L as a percent of the capital the round trips used (0 without any)."""
        return self.total_pnl / self.capital_used * 100 if self.capital_used else 0.0

    @property
    def wins(self) -> int:
        return sum(1 for t in self.round_trips if t.pnl > 0)

    @property
    def win_rate(self) -> float | None:
        return self.wins / len(self.round_trips) * 100 if self.round_trips else None

    @property
    def max_drawdown(self) -> float:
        return max_drawdown(t.pnl for t in self.round_trips)

    @property
    def average_hold_seconds(self) -> float | None:
        if not self.round_trips:
            return None
        return sum(t.hold_seconds for t in self.round_trips) / len(self.round_trips)

    def per_symbol(self) -> dict[str, tuple[int, float]]:
        """symbol -> (round trips, net P&L)."""
        out: dict[str, tuple[int, float]] = {}
        for t in self.round_trips:
            count, pnl = out.get(t.symbol, (0, 0.0))
            out[t.symbol] = (count + 1, pnl + t.pnl)
        return dict(sorted(out.items()))

    def exit_reasons(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for t in self.round_trips:
            out[t.exit_reason] += 1
        return dict(sorted(out.items()))


def build_day_report(db: TradingDatabase, trading_date: str) -> DayReport:
    """The report for `trading_date` ('YYYY-MM-DD', New York). Raises ValueError on a bad date."""
    fills = db.get_trades_by_date(trading_date)
    reasons_by_ref = {
        intent["order_ref"]: exit_reason_for(intent["purpose"])
        for intent in db.get_intents_by_date(trading_date)
        if intent["side"] == "SELL"
    }
    reasons_by_symbol = {}
    if trading_date == db.clock.today_str():
        reasons_by_symbol = {row["symbol"]: row["exit_reason"] for row in db.get_closed_today()}
    trips, still_open = round_trips_from_fills(fills, reasons_by_ref, reasons_by_symbol)
    return DayReport(trading_date, trips, still_open, len(fills))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def net_pnl_text(report: DayReport) -> str:
    """The day's P&L in one phrase, net of commissions, gross labelled: the report headline
    and the supervisor's status block say it the same way."""
    if not report.round_trips:
        return "$+0.00 net (no round trips)"
    return (
        f"${report.total_pnl:+,.2f} net ({report.total_pnl_pct:+.2f}% of "
        f"${report.capital_used:,.0f} used; gross ${report.gross_pnl:+,.2f}, "
        f"commissions ${report.commissions:,.2f})"
    )


def render_report(report: DayReport) -> str:
    """The report as text: summary lines, per-symbol table, exit reasons."""
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=110, color_system=None)
    win_rate = "-" if report.win_rate is None else f"{report.win_rate:.0f}%"
    console.print(f"day report {report.trading_date}")
    console.print(
        f"  trades (round trips): {len(report.round_trips)}   fills: {report.fills}   "
        f"wins: {report.wins}   win rate: {win_rate}"
    )
    console.print(f"  P&L: {net_pnl_text(report)}")
    console.print(
        f"  max drawdown: ${report.max_drawdown:,.2f} (net)   "
        f"average hold: {_duration(report.average_hold_seconds)}"
    )
    reasons = ", ".join(f"{k} {v}" for k, v in report.exit_reasons().items()) or "-"
    console.print(f"  exit reasons: {reasons}")
    if report.still_open:
        console.print(f"  STILL OPEN at the end of the fills: {report.still_open}")
    if report.round_trips:
        table = Table(title="round trips (in / out: New York time)")
        columns = (
            "symbol",
            "qty",
            "entry",
            "exit",
            "in",
            "out",
            "net P&L $",
            "net P&L %",
            "reason",
        )
        for column in columns:
            table.add_column(column)
        for t in report.round_trips:
            table.add_row(
                t.symbol,
                f"{t.quantity:g}",
                f"{t.entry_price:.2f}",
                f"{t.exit_price:.2f}",
                f"{t.entry_time:%H:%M:%S}",
                f"{t.exit_time:%H:%M:%S}",
                f"{t.pnl:+,.2f}",
                f"{t.pnl_pct:+.2f}",
                t.exit_reason,
            )
        console.print(table)
        per_symbol = Table(title="per symbol")
        for column in ("symbol", "trades", "net P&L $"):
            per_symbol.add_column(column)
        for symbol, (count, pnl) in report.per_symbol().items():
            per_symbol.add_row(symbol, str(count), f"{pnl:+,.2f}")
        console.print(per_symbol)
    return buffer.getvalue()


def session_window(trading_date: str) -> tuple[datetime, datetime]:
    """The regular session of `trading_date` in New York time, from the exchange calendar
    (half days close at 13:00); 09:30-16:00 on a date the exchange was closed."""
    from core.clock import NEW_YORK, MarketClock

    day = date.fromisoformat(trading_date)
    session = MarketClock().session(day)
    if session is None:
        return (
            datetime.combine(day, time(9, 30), NEW_YORK),
            datetime.combine(day, time(16, 0), NEW_YORK),
        )
    return session.open, session.close


def equity_at(report: DayReport, moment: datetime) -> float:
    """Cumulative net P&L of the round trips closed by `moment`."""
    return sum(t.pnl for t in report.round_trips if t.exit_time <= moment)


_NO_TRADES = {
    "ha": "center",
    "va": "center",
    "fontsize": "x-large",
    "color": "dimgrey",
    "bbox": {"facecolor": "white", "edgecolor": "none"},
}


def pnl_figure(report: DayReport) -> Figure:
    """The chart as a matplotlib Figure: cumulative net P&L over the whole session (New York
    time) with entry and exit markers, and net P&L per symbol. An empty day says so."""
    from matplotlib.dates import DateFormatter, HourLocator, MinuteLocator
    from matplotlib.figure import Figure

    from core.clock import NEW_YORK

    trips = report.round_trips
    start, end = session_window(report.trading_date)
    if trips:  # a fill outside regular hours still shows
        start = min(start, *(t.entry_time for t in trips))
        end = max(end, *(t.exit_time for t in trips))
    fig = Figure(figsize=(9, 7))
    curve, bars = fig.subplots(2, 1, height_ratios=(3, 2))
    curve.axhline(0, color="grey", linewidth=0.8)
    if trips:
        times = [start, *(t.exit_time for t in trips), end]
        equity = [0.0, *(equity_at(report, t.exit_time) for t in trips)]
        curve.step(times, [*equity, equity[-1]], where="post", color="tab:blue", label="net P&L")
        curve.plot(
            [t.entry_time for t in trips],
            [equity_at(report, t.entry_time) for t in trips],
            "^",
            color="tab:blue",
            markersize=7,
            label="entry",
            linestyle="none",
        )
        for won, color, label in (
            (True, "tab:green", "exit, win"),
            (False, "tab:red", "exit, loss"),
        ):
            exits = [t for t in trips if (t.pnl > 0) == won]
            if exits:
                curve.plot(
                    [t.exit_time for t in exits],
                    [equity_at(report, t.exit_time) for t in exits],
                    "v",
                    color=color,
                    markersize=7,
                    label=label,
                    linestyle="none",
                )
        curve.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize="small")
    else:
        curve.set_ylim(-1, 1)
        curve.set_yticks([0])
        curve.text(0.5, 0.5, "no trades", transform=curve.transAxes, **_NO_TRADES)
    curve.set_xlim(start, end)
    curve.xaxis.set_major_locator(HourLocator(tz=NEW_YORK))
    curve.xaxis.set_minor_locator(MinuteLocator(byminute=30, tz=NEW_YORK))
    curve.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=NEW_YORK))
    curve.set_xlabel(f"New York time (ET), {report.trading_date}")
    curve.set_ylabel("USD, net of commissions")
    # "\$": a bare pair of $ would switch matplotlib into math text.
    curve.set_title(
        f"{report.trading_date}: cumulative net P&L \\${report.total_pnl:+,.2f}, "
        f"max drawdown \\${report.max_drawdown:,.2f}"
        if trips
        else f"{report.trading_date}: no trades"
    )
    curve.grid(True, alpha=0.3)
    per_symbol = report.per_symbol()
    if per_symbol:
        colors = ["tab:green" if pnl >= 0 else "tab:red" for _, pnl in per_symbol.values()]
        bars.bar(list(per_symbol), [pnl for _, pnl in per_symbol.values()], color=colors)
        bars.axhline(0, color="grey", linewidth=0.8)
        bars.tick_params(axis="x", labelrotation=45)
        bars.set_ylabel("USD")
    else:
        bars.set_xticks([])
        bars.set_yticks([])
        bars.text(0.5, 0.5, "no trades", transform=bars.transAxes, **_NO_TRADES)
    bars.set_title("net P&L per symbol")
    fig.tight_layout()
    return fig


def write_pnl_chart(report: DayReport, path: Path) -> Path:
    """Write `pnl_figure(report)` as a PNG to `path`. Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pnl_figure(report).savefig(path, dpi=90)
    return path
