"""What a backtest writes: the day reports, the multi-day summary, the equity curve and the
trade journal.

    out/summary.txt            the multi-day summary (per-day table and the totals)
    out/days/<date>.txt        each day's report, reports.render_report's text
    out/equity.png             equity over the run, round trip by round trip
    out/journal.csv, .parquet  one journal.JournalRow per round trip
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

from journal import write_journal
from reports import render_report
from sim.backtest import BacktestResult


def _number(value: float | None, fmt: str) -> str:
    """`value` formatted ('.1f%' appends a percent sign), '-' when there is none."""
    if value is None:
        return "-"
    return format(value, fmt[:-1]) + "%" if fmt.endswith("%") else format(value, fmt)


def render_summary(result: BacktestResult) -> str:
    """The multi-day summary as text: one row per day, then the run's figures."""
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=110, color_system=None)
    table = Table(title="backtest: per day (net of commissions)")
    for column in ("date", "trades", "wins", "net P&L $", "gross $", "commissions $",
                   "entries sent", "timed out", "equity $"):  # fmt: skip
        table.add_column(column)
    for day in result.days:
        report = day.report
        table.add_row(
            day.trading_date,
            str(len(report.round_trips)),
            str(report.wins),
            f"{day.net_pnl:+,.2f}",
            f"{report.gross_pnl:+,.2f}",
            f"{report.commissions:,.2f}",
            str(day.entries_sent),
            str(day.entries_cancelled),
            f"{day.equity_end:,.2f}",
        )
    console.print(table)
    config = result.config
    first = result.days[0].equity_start if result.days else config.capital
    console.print(
        f"days: {len(result.days)}   round trips: {result.trades}   "
        f"win rate: {_number(result.win_rate, '.1f%')}   "
        f"profit factor: {_number(result.profit_factor, '.2f')}"
    )
    console.print(
        f"net P&L: ${result.net_pnl:+,.2f} ({result.net_pnl / first * 100:+.2f}% of "
        f"${first:,.0f})   expectancy: ${_number(result.expectancy, '+,.2f')} a trade   "
        f"max drawdown: ${result.max_drawdown:,.2f}   Sharpe: {_number(result.sharpe, '.2f')}"
    )
    console.print(
        f"{result.bars:,} bars in {result.seconds:.2f} s ({result.bars_per_second:,.0f} bars/s)"
    )
    return buffer.getvalue()


def equity_figure(result: BacktestResult):  # type: ignore[no-untyped-def]
    """Equity over the run as a matplotlib Figure: a step at every round trip's exit."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5))
    axis = fig.subplots()
    start = result.days[0].equity_start if result.days else result.config.capital
    times: list[datetime] = []
    equity = [start]
    for row in result.journal:
        times.append(datetime.fromisoformat(row.exit_time))
        equity.append(equity[-1] + row.net_pnl)
    if times:
        axis.step(range(len(equity)), equity, where="post", color="tab:blue")
        axis.set_xlabel("round trip (in exit order)")
        first_day, last_day = times[0].date(), times[-1].date()
        span = f"{first_day} to {last_day}" if first_day != last_day else f"{first_day}"
    else:
        axis.axhline(start, color="tab:blue")
        axis.text(0.5, 0.5, "no trades", transform=axis.transAxes, ha="center", va="center")
        span = ", ".join(d.trading_date for d in result.days[:1]) or "no days"
    axis.set_ylabel("equity, USD (net of commissions)")
    # "\$": a bare pair of $ would switch matplotlib into math text.
    axis.set_title(
        f"backtest {span}: net P&L \\${result.net_pnl:+,.2f}, "
        f"max drawdown \\${result.max_drawdown:,.2f}"
    )
    axis.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def write_outputs(result: BacktestResult, out: Path) -> dict[str, Path]:
    """Write every output under `out` (created); returns them by name. Raises OSError when
    the folder cannot be written, journal.JournalError for the journal."""
    days = out / "days"
    days.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for day in result.days:
        path = days / f"{day.trading_date}.txt"
        path.write_text(render_report(day.report), encoding="utf-8")
    written["days"] = days
    summary = out / "summary.txt"
    summary.write_text(render_summary(result), encoding="utf-8")
    written["summary"] = summary
    written["equity"] = out / "equity.png"
    equity_figure(result).savefig(written["equity"], dpi=90)
    rows = result.journal
    written["journal_csv"] = write_journal(rows, out / "journal.csv")
    written["journal_parquet"] = write_journal(rows, out / "journal.parquet")
    return written
