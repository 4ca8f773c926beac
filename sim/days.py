"""The trading days a backtest runs on: recorded bars (CSV/Parquet) or seeded synthetic days.

Each day is, per symbol, two arrays of bars as (time, open, high, low, close, volume) rows:
  - `fill` bars at the data's resolution (5-s, 30-s, ...; a coarser bar is split into 30-s
    pieces along the replay path, open -> low -> high -> close for an up bar, as the simulated
    gateway replays it), on which orders are matched;
  - `analysis` bars, the clock-aligned 30-s bars the day trader analyses (trades only: a
    bucket without volume gives no bar, as IB's history gives none), with a 7th column: the
    moment the bar is known. That is its end, except for the pieces of a coarser bar, which
    are known only when the whole bar is: the first half of a minute bar is shaped by the
    minute's high, low and close, so deciding on it at its own end would look ahead.
Prices are put on the tick grid as the simulated gateway does (an export's 139.70000001 is
139.70). A synthetic day is ibsim's seeded market for that date: the same day `sim_day.py`
trades over sockets, in bars the simulated gateway itself builds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

import numpy as np

from core.clock import NEW_YORK, MarketClock, Session

ANALYSIS_SECONDS = 30  # the day trader's bar (entry_rules.BAR_SECONDS)
MIN_TICK = 0.01
_TPD = round(1 / MIN_TICK)  # ticks per dollar
# Synthetic markets are built this many symbols at a time: a day's per-second arrays cost
# about 1.5 MB a symbol.
SYNTHETIC_CHUNK = 100


class BacktestDataError(ValueError):
    """The bars cannot be backtested as given; the message names the file, row and fix."""


@dataclass(frozen=True)
class SymbolDay:
    """One symbol's bars of one day; arrays of rows (time, open, high, low, close, volume)."""

    symbol: str
    prev_close: float
    spread_ticks: int  # the typical regular-hours spread (ibsim.market.spread_ticks)
    fill: np.ndarray
    analysis: np.ndarray  # (time, o, h, l, c, v[, known at]); known at = its end if not given

    def __post_init__(self) -> None:
        analysis = np.asarray(self.analysis, dtype=np.float64).reshape(-1, self.analysis.shape[-1])
        if analysis.shape[1] == 6:
            analysis = np.column_stack([analysis, analysis[:, 0] + ANALYSIS_SECONDS])
        if analysis.shape[1] != 7 or np.asarray(self.fill).reshape(len(self.fill), -1).shape[1] < 6:
            raise ValueError(
                f"{self.symbol}: bars are rows of time, open, high, low, close, volume "
                "(analysis bars may add the time each is known)"
            )
        object.__setattr__(self, "analysis", analysis)


@dataclass(frozen=True)
class TradingDay:
    trading_date: date
    session: Session
    symbols: tuple[SymbolDay, ...]
    fill_seconds: int  # the fill bars' size


def on_tick_grid(values: np.ndarray) -> np.ndarray:
    """Prices rounded to the penny grid, as the simulated gateway quotes them."""
    return np.rint(np.asarray(values, dtype=np.float64) * _TPD) / _TPD


def analysis_bars(fill: np.ndarray, seconds: int = ANALYSIS_SECONDS) -> np.ndarray:
    """Clock-aligned `seconds` bars from finer bars (rows time, o, h, l, c, v); bars without
    volume do not count and a bucket with none gives no bar. A 7th column says when each is
    known: its end."""
    traded = fill[fill[:, 5] > 0]
    if traded.size == 0:
        return np.empty((0, 7))
    bucket = np.floor(traded[:, 0] / seconds).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(traded)] - 1
    return np.column_stack(
        [
            bucket[starts] * float(seconds),
            traded[starts, 1],
            np.maximum.reduceat(traded[:, 2], starts),
            np.minimum.reduceat(traded[:, 3], starts),
            traded[ends, 4],
            np.add.reduceat(traded[:, 5], starts),
            bucket[starts] * float(seconds) + seconds,
        ]
    )


def known_at_source_end(analysis: np.ndarray, source: np.ndarray, bar_seconds: int) -> np.ndarray:
    """`analysis` with each bar known at the end of the `source` bar (rows time, ...) it was
    cut from, `bar_seconds` long."""
    if not len(analysis) or not len(source):
        return analysis
    which = np.searchsorted(source[:, 0], analysis[:, 0], side="right") - 1
    out = analysis.copy()
    out[:, 6] = np.maximum(source[np.maximum(which, 0), 0] + bar_seconds, analysis[:, 6])
    return out


def split_bars(bars: np.ndarray, bar_seconds: int, piece: int = ANALYSIS_SECONDS) -> np.ndarray:
    """Bars longer than `piece` split into `piece`-second bars along the replay path (knots
    at 0, 1/3, 2/3 and the end of the bar, linear in between, as ibsim.replay interpolates),
    the volume spread evenly. `bar_seconds` must be a multiple of `piece`."""
    if bar_seconds <= piece:
        return bars
    parts = bar_seconds // piece
    length = bar_seconds
    knots_x = np.array([0, round((length - 1) / 3), round(2 * (length - 1) / 3), length - 1])
    o, h, lo, c = bars[:, 1], bars[:, 2], bars[:, 3], bars[:, 4]
    up = c >= o
    knots_y = np.column_stack([o, np.where(up, lo, h), np.where(up, h, lo), c])
    k = np.arange(length)
    segment = np.clip(np.searchsorted(knots_x, k, side="right") - 1, 0, 2)
    weight = (k - knots_x[segment]) / (knots_x[segment + 1] - knots_x[segment])
    path = knots_y[:, segment] + (knots_y[:, segment + 1] - knots_y[:, segment]) * weight
    path = on_tick_grid(path).reshape(len(bars), parts, piece)
    times = bars[:, 0:1] + np.arange(parts)[None, :] * piece
    volume = np.repeat(bars[:, 5:6] / parts, parts, axis=1)
    pieces = np.stack(
        [times, path[:, :, 0], path.max(axis=2), path.min(axis=2), path[:, :, -1], volume],
        axis=2,
    )
    return pieces.reshape(-1, 6)


def _spread(prev_close: float, fill: np.ndarray, session: Session) -> int:
    """The typical spread in ticks: ibsim's rule on the day's regular-hours liquidity."""
    import pandas as pd

    from ibsim.market import spread_ticks
    from ibsim.replay import daily_dollar_volume

    rows = pd.DataFrame(fill, columns=["time", "open", "high", "low", "close", "volume"])
    seconds = int(np.median(np.diff(fill[:, 0]))) if len(fill) > 1 else ANALYSIS_SECONDS
    regular = (session.open.timestamp(), session.close.timestamp())
    return spread_ticks(prev_close, daily_dollar_volume(rows, max(seconds, 1), regular))


# -- recorded bars ------------------------------------------------------------------------------
def days_from_data(
    path: str | Path,
    start: date | None = None,
    end: date | None = None,
    symbols: tuple[str, ...] | None = None,
    max_gap_seconds: float | None = None,
) -> list[TradingDay]:
    """The sessions in the recorded bars at `path` (file or folder, CSV or Parquet), between
    `start` and `end` inclusive. Raises BacktestDataError naming the file, row and fix for
    bad input (ibsim.replay's checks, then check_sessions'), an unusable bar size, or no
    data in the range. `max_gap_seconds`: the longest regular-hours hole allowed
    (ibsim.replay.MAX_GAP_SECONDS when None; math.inf allows any)."""
    from ibsim.replay import MAX_GAP_SECONDS, check_sessions, infer_bar_seconds, read_replay_frame

    try:
        frame = read_replay_frame(path)
        check_sessions(frame, MAX_GAP_SECONDS if max_gap_seconds is None else max_gap_seconds)
    except ValueError as exc:
        raise BacktestDataError(str(exc)) from None
    if symbols:
        frame = frame[frame["symbol"].isin(symbols)]
    bar_seconds = infer_bar_seconds(frame)
    if not (ANALYSIS_SECONDS % bar_seconds == 0 or bar_seconds % ANALYSIS_SECONDS == 0):
        raise BacktestDataError(
            f"data {path}: {bar_seconds}-s bars do not make 30-s bars; "
            "use 1-, 5-, 10-, 15- or 30-s bars, or whole minutes"
        )
    for column in ("open", "high", "low", "close"):
        frame[column] = on_tick_grid(frame[column].to_numpy())
    import pandas as pd

    stamps = pd.to_datetime(frame["time"], unit="s", utc=True).dt.tz_convert(NEW_YORK)
    frame = frame.assign(day=stamps.dt.date)
    if start is not None:
        frame = frame[frame["day"] >= start]
    if end is not None:
        frame = frame[frame["day"] <= end]
    if frame.empty:
        raise BacktestDataError(
            f"data {path} has no bars from {start or 'the start'} to {end or 'the end'}; "
            "widen --start/--end or pick other data"
        )
    clock = MarketClock()
    last_close: dict[str, float] = {}
    days = []
    for day, rows_of_day in frame.groupby("day", sort=True):
        session = clock.session(day)
        assert session is not None  # check_sessions refused other days
        per_symbol = []
        for symbol, rows in rows_of_day.groupby("symbol", sort=True):
            bars = rows[["time", "open", "high", "low", "close", "volume"]].to_numpy(np.float64)
            fill = split_bars(bars, bar_seconds) if bar_seconds > ANALYSIS_SECONDS else bars
            prev_close = _prev_close(rows, last_close.get(str(symbol)))
            times = rows["time"].to_numpy()
            regular = rows[times < session.close.timestamp()]
            if len(regular):
                last_close[str(symbol)] = float(regular["close"].iloc[-1])
            per_symbol.append(
                SymbolDay(
                    symbol=str(symbol),
                    prev_close=prev_close,
                    spread_ticks=_spread(prev_close, bars, session),
                    fill=fill,
                    analysis=known_at_source_end(analysis_bars(fill), bars, bar_seconds),
                )
            )
        days.append(TradingDay(day, session, tuple(per_symbol), min(bar_seconds, ANALYSIS_SECONDS)))
    return days


def _prev_close(rows: object, earlier: float | None) -> float:
    """The file's prev_close, else the symbol's last close of the day before in the data,
    else the day's first open (as ibsim.replay has it)."""
    if "prev_close" in rows.columns and rows["prev_close"].notna().any():  # type: ignore[attr-defined]
        value = float(rows["prev_close"].dropna().iloc[0])  # type: ignore[index]
    elif earlier is not None:
        value = earlier
    else:
        value = float(rows["open"].iloc[0])  # type: ignore[index]
    return round(value * _TPD) / _TPD


# -- synthetic days -------------------------------------------------------------------------------
def synthetic_sessions(first: date, count: int) -> list[Session]:
    """`count` exchange sessions from `first` on (the first one if `first` is a session)."""
    clock = MarketClock()
    session = clock.session(first) or clock.next_session(first)
    sessions = [session]
    while len(sessions) < count:
        sessions.append(clock.next_session(sessions[-1].trading_date))
    return sessions


def synthetic_day(
    session: Session, seed: int, symbols: int, names: tuple[str, ...] | None = None
) -> TradingDay:
    """The simulated gateway's seeded market for `session`, as bars: 5-s fill bars and the
    30-s bars its history gives the day trader. The symbols are the gateway's for the seed
    (`names` picks them); built SYNTHETIC_CHUNK at a time."""
    from ibsim.market import Market, MarketConfig, generate_tickers

    day = session.trading_date
    names = names or generate_tickers(symbols, seed)
    start = datetime.combine(day, time(4, 0), NEW_YORK).timestamp()
    end = datetime.combine(day, time(20, 0), NEW_YORK).timestamp()
    out = []
    # One chunk for a universe that fits in one: exactly the gateway's market (its
    # at-least-one-gapper rule is per universe).
    for first in range(0, len(names), SYNTHETIC_CHUNK):
        chunk = names[first : first + SYNTHETIC_CHUNK]
        market = Market(MarketConfig(trading_date=day, symbol_names=chunk, seed=seed))
        market.advance(end)
        for symbol in chunk:
            fill = _bar_rows(market.bars(symbol, start, end, 5))
            prev_close = market.previous_close(symbol)
            out.append(
                SymbolDay(
                    symbol=symbol,
                    prev_close=prev_close,
                    spread_ticks=_spread(prev_close, fill, session),
                    fill=fill,
                    analysis=analysis_bars(
                        _bar_rows(market.bars(symbol, start, end, ANALYSIS_SECONDS))
                    ),
                )
            )
    return TradingDay(day, session, tuple(out), 5)


def _bar_rows(bars: list) -> np.ndarray:  # type: ignore[type-arg]
    if not bars:
        return np.empty((0, 6))
    return np.array([(b.time, b.open, b.high, b.low, b.close, b.volume) for b in bars], float)


def synthetic_sessions_between(first: date, last: date) -> list[Session]:
    """The exchange sessions from `first` to `last` inclusive (none if `last` is earlier)."""
    clock = MarketClock()
    session = clock.session(first) or clock.next_session(first)
    sessions = []
    while session.trading_date <= last:
        sessions.append(session)
        session = clock.next_session(session.trading_date)
    return sessions


def synthetic_days(
    seed: int, days: int, symbols: int, first: date | None = None, last: date | None = None
) -> Iterator[TradingDay]:
    """`days` seeded synthetic sessions from `first` (default: today's session or the next),
    or every session from `first` to `last` when `last` is given. Built one at a time."""
    first = first or MarketClock().today()
    sessions = (
        synthetic_sessions(first, days) if last is None else synthetic_sessions_between(first, last)
    )
    for session in sessions:
        yield synthetic_day(session, seed, symbols)


def session_epochs(session: Session) -> tuple[float, float]:
    return session.open.timestamp(), session.close.timestamp()


__all__ = [
    "ANALYSIS_SECONDS",
    "BacktestDataError",
    "SymbolDay",
    "TradingDay",
    "analysis_bars",
    "days_from_data",
    "split_bars",
    "synthetic_day",
    "synthetic_days",
]
