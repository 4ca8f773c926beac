"""What a backtest returns: each day's result and the run's figures (net P&L, win rate,
profit factor, expectancy, max drawdown, Sharpe)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from journal import JournalRow
from reports import DayReport, max_drawdown

if TYPE_CHECKING:
    from sim.backtest import BacktestConfig


@dataclass(frozen=True)
class DayResult:
    """One backtested day: its report (reports.DayReport), journal rows and equity."""

    trading_date: str
    report: DayReport
    journal: tuple[JournalRow, ...]
    fills: tuple[dict[str, Any], ...]
    equity_start: float
    equity_end: float
    entries_sent: int
    entries_cancelled: int  # timed out (unfilled, or the unfilled rest of a partial fill)
    # Every enter decision (event, symbol, rule, exchange_time, indicator values), filled or not.
    entry_decisions: tuple[dict[str, Any], ...] = ()

    @property
    def net_pnl(self) -> float:
        return self.equity_end - self.equity_start


@dataclass(frozen=True)
class BacktestResult:
    """Every day's result and the multi-day figures."""

    config: BacktestConfig
    days: tuple[DayResult, ...]
    bars: int  # analysis bars run through the strategy
    seconds: float  # wall time the days took to run (loading or building them excluded)

    @property
    def journal(self) -> list[JournalRow]:
        return [row for day in self.days for row in day.journal]

    @property
    def net_pnl(self) -> float:
        return sum(day.net_pnl for day in self.days)

    @property
    def trades(self) -> int:
        return len(self.journal)

    @property
    def win_rate(self) -> float | None:
        rows = self.journal
        return sum(r.net_pnl > 0 for r in rows) / len(rows) * 100 if rows else None

    @property
    def profit_factor(self) -> float | None:
        """Gross winnings over gross losses (net of commissions); None without a loss."""
        wins = sum(r.net_pnl for r in self.journal if r.net_pnl > 0)
        losses = -sum(r.net_pnl for r in self.journal if r.net_pnl < 0)
        return wins / losses if losses > 0 else None

    @property
    def expectancy(self) -> float | None:
        """Mean net P&L per round trip."""
        rows = self.journal
        return sum(r.net_pnl for r in rows) / len(rows) if rows else None

    @property
    def max_drawdown(self) -> float:
        """Largest fall of the equity, round trip by round trip (reports.max_drawdown)."""
        return max_drawdown(r.net_pnl for r in self.journal)

    @property
    def sharpe(self) -> float | None:
        """Annualised Sharpe of the daily returns on the day's starting equity (252 days);
        None with fewer than two days or no variation."""
        returns = np.array([d.net_pnl / d.equity_start for d in self.days])
        if returns.size < 2 or not returns.std(ddof=1) > 0:
            return None
        return float(returns.mean() / returns.std(ddof=1) * math.sqrt(252))

    @property
    def bars_per_second(self) -> float:
        return self.bars / self.seconds if self.seconds > 0 else math.inf
