"""GatewayConfig: every knob of the simulated gateway, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time

from core.clock import NEW_YORK, CalendarRangeError, MarketClock, SystemTimeSource

SERVER_VERSION = 176


class ConfigError(ValueError):
    """A gateway setting is invalid; the message says which and why."""


@dataclass(frozen=True)
class GatewayConfig:
    port: int = 4002  # 0 = a free loopback port
    account: str = "DU1234567"
    symbols: int = 50
    symbol_names: tuple[str, ...] | None = None
    seed: int = 7
    replay_path: str | None = None  # a file or directory of recorded bars
    bar_seconds: int | None = None  # the replay's bar size; None: its typical spacing
    spread: float | None = None  # a fixed spread in dollars; None: price and liquidity
    trading_date: date | None = None  # None: the replay's day, else today or the next session
    start: time = time(9, 25)
    speed: float = 1.0
    steps_per_second: float = 20.0
    clock_file: str | None = None
    control_port: int | None = None  # None: no HTTP control interface; 0 = a free port
    market_data_subscribed: bool = True  # False: 354 / 162 / 420 like an unsubscribed account
    delayed_data_lag_s: float = 900.0  # simulated seconds delayed quotes lag (IB: 15-20 min)
    pacing: bool = False  # enforce IB's small-bar historical pacing (error 162)
    no_shorting: bool = True  # cash account: a SELL below zero shares is rejected (201)
    check_buying_power: bool = True
    initial_cash: float = 100_000.0
    commission_per_share: float = 0.005
    commission_min: float = 1.0
    slippage_ticks: int = 0
    partial_fills: bool = False
    master_client_id: int | None = None  # receives every client's order events
    portfolio_refresh_s: float = 180.0  # simulated seconds between updatePortfolio refreshes
    max_clients: int = 32
    first_order_id: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} must be 0..65535")
        if self.speed <= 0:
            raise ConfigError(f"speed {self.speed} must be > 0")
        if not 0.5 <= self.steps_per_second <= 1000:
            raise ConfigError(f"steps_per_second {self.steps_per_second} must be 0.5..1000")
        if not self.account or "," in self.account:
            raise ConfigError(f"account {self.account!r} must be one non-empty account id")
        if self.symbols < 1 and not self.symbol_names:
            raise ConfigError("symbols must be >= 1")
        if self.delayed_data_lag_s < 0:
            raise ConfigError(f"delayed_data_lag_s {self.delayed_data_lag_s} must be >= 0")
        if self.initial_cash < 0 or self.commission_per_share < 0 or self.commission_min < 0:
            raise ConfigError("cash and commissions must be >= 0")
        if self.spread is not None and not self.spread >= 0.01:
            raise ConfigError(f"spread {self.spread} must be at least one tick, e.g. 0.01")
        if self.bar_seconds is not None and not 1 <= self.bar_seconds <= 86400:
            raise ConfigError(f"bar_seconds {self.bar_seconds} must be 1..86400, e.g. 60")

    def resolved_date(self) -> date:
        """The trading date to simulate. Raises ConfigError when it is not an XNYS session."""
        clock = MarketClock(SystemTimeSource())
        day = self.trading_date
        if day is None and self.replay_path is not None:
            day = _replay_day(self.replay_path)
        try:
            if day is None:
                today = clock.today()
                if clock.is_trading_day(today):
                    return today
                return clock.next_session(today).trading_date
            if not clock.is_trading_day(day):
                raise ConfigError(f"{day} is not an XNYS trading day; pick a session date")
        except CalendarRangeError as exc:
            raise ConfigError(str(exc)) from None
        return day

    def start_datetime(self) -> datetime:
        return datetime.combine(self.resolved_date(), self.start, NEW_YORK)


def _replay_day(path: str) -> date:
    """The New York date of the replay's first bar; ConfigError for unreadable data."""
    from ibsim.replay import first_replay_day  # pandas: only when replaying

    try:
        return first_replay_day(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
