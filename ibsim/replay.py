"""Recorded bars (CSV or Parquet) turned into a 1-second trade path for the simulated market.

Within each bar the path runs open -> low -> high -> close when the bar closed up (or
open -> high -> low -> close when it closed down), linearly, so aggregating the replayed seconds
back to the file's bar size gives the file's OHLCV again (when a bar has >= 4 shares of volume).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.clock import NEW_YORK

REQUIRED_COLUMNS = ("symbol", "time", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS = ("prev_close",)
SUPPORTED_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class ReplayPath:
    """One symbol's replayed day on the market grid (column 0 = before 04:00, column c = second c-1)."""

    symbol: str
    prev_close: float
    trade_ticks: np.ndarray  # int64, trade price in ticks where volume > 0 (undefined elsewhere)
    volume: np.ndarray  # int64 shares traded in each grid second


def replay_format(path: str | Path) -> str:
    """'csv' or 'parquet' from the file name; ValueError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"replay file {path}: unknown format {suffix or '(no suffix)'!r}; "
            "use a .csv or .parquet file"
        )
    return SUPPORTED_SUFFIXES[suffix]


def read_replay_frame(path: str | Path) -> pd.DataFrame:
    """The file's rows with validated columns and `time` as unix seconds (float), sorted.

    Raises ValueError naming the file and the fix for a missing file, unknown format, missing or
    unknown columns, and unparseable times or prices.
    """
    fmt = replay_format(path)
    if not Path(path).is_file():
        raise ValueError(f"replay file {path} does not exist; fix MarketConfig.replay_path")
    try:
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except Exception as exc:  # parser errors vary by engine; one clear message is what matters
        raise ValueError(
            f"replay file {path} is unreadable as {fmt} ({exc}); re-export it"
        ) from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    unknown = [c for c in frame.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        problem = "; ".join(
            part
            for part in (
                f"missing column(s) {', '.join(missing)}" if missing else "",
                f"unknown column(s) {', '.join(unknown)}" if unknown else "",
            )
            if part
        )
        raise ValueError(
            f"replay file {path}: {problem}; the columns must be "
            f"{','.join(REQUIRED_COLUMNS)} (optional prev_close)"
        )
    frame = frame.copy()
    frame["symbol"] = frame["symbol"].astype(str).str.strip().str.upper()
    frame["time"] = _to_epoch_seconds(frame["time"], path)
    for column in ("open", "high", "low", "close", "volume", *OPTIONAL_COLUMNS):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    prices = frame[["open", "high", "low", "close", "volume"]]
    if prices.isna().to_numpy().any() or (frame[["open", "high", "low", "close"]] <= 0).any(
        axis=None
    ):
        raise ValueError(
            f"replay file {path}: open/high/low/close must be positive numbers and volume a "
            "number on every row; fix or drop the bad rows"
        )
    return frame.sort_values(["symbol", "time"], kind="stable").reset_index(drop=True)


def _to_epoch_seconds(column: pd.Series, path: str | Path) -> pd.Series:
    """Epoch seconds from numbers (epoch s, ms, us or ns) or ISO strings (naive = New York)."""
    if pd.api.types.is_numeric_dtype(column):
        seconds = column.astype("float64")
        # Exporters differ in units; today's epoch is ~1.8e9 s, so larger numbers are finer units.
        magnitude = float(seconds.abs().max()) if len(seconds) else 0.0
        for limit, divisor in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
            if magnitude > limit:
                return seconds / divisor
        return seconds
    if pd.api.types.is_datetime64_any_dtype(column):  # Parquet keeps real timestamps
        stamps = column
    else:
        try:
            stamps = pd.to_datetime(column.astype(str), format="ISO8601")
        except (ValueError, TypeError):
            try:  # mixed UTC offsets parse only as UTC
                stamps = pd.to_datetime(column.astype(str), format="ISO8601", utc=True)
            except (ValueError, TypeError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(
                    f"replay file {path}: column time is neither epoch seconds nor ISO 8601 "
                    f"({reason}); write times like 2026-03-16T09:30:00-04:00"
                ) from exc
    if stamps.dt.tz is None:
        stamps = stamps.dt.tz_localize(NEW_YORK)
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def infer_bar_seconds(frame: pd.DataFrame) -> int:
    """The file's bar size: the smallest positive step between a symbol's bars (60 if unknown)."""
    steps = frame.groupby("symbol", sort=False)["time"].diff().to_numpy()
    steps = steps[np.isfinite(steps) & (steps > 0)]
    if steps.size == 0:
        return 60
    return max(1, round(float(steps.min())))


def replay_paths(
    path: str | Path,
    day_start: float,
    grid_seconds: int,
    ticks_per_dollar: int,
    symbols: tuple[str, ...] | None = None,
) -> list[ReplayPath]:
    """Per-symbol trade paths on the grid [day_start, day_start + grid_seconds).

    Raises ValueError when the file has no bars on that grid or lacks a requested symbol.
    """
    frame = read_replay_frame(path)
    bar_seconds = infer_bar_seconds(frame)
    offsets = np.floor(frame["time"].to_numpy() - day_start).astype(np.int64)
    on_day = (offsets >= 0) & (offsets < grid_seconds)
    if not on_day.any():
        first = pd.Timestamp(float(frame["time"].min()), unit="s", tz="UTC").tz_convert(NEW_YORK)
        raise ValueError(
            f"replay file {path} has no bars between 04:00 and 20:00 New York on the trading "
            f"date; set MarketConfig.trading_date to a date in the file (first bar {first:%F})"
        )
    frame = frame.loc[on_day].assign(offset=offsets[on_day])
    available = list(dict.fromkeys(frame["symbol"]))
    wanted = list(symbols) if symbols else sorted(available)
    absent = [s for s in wanted if s not in available]
    if absent:
        raise ValueError(
            f"replay file {path} has no bars for {', '.join(absent)} on the trading date; "
            "drop them from MarketConfig.symbol_names"
        )
    result = []
    for symbol in wanted:
        rows = frame[frame["symbol"] == symbol]
        if "prev_close" in rows.columns and rows["prev_close"].notna().any():
            prev_close = float(rows["prev_close"].dropna().iloc[0])
        else:
            prev_close = float(rows["open"].iloc[0])
        trade_ticks, volume = _interpolate_bars(rows, bar_seconds, grid_seconds, ticks_per_dollar)
        result.append(ReplayPath(symbol, prev_close, trade_ticks, volume))
    return result


def _interpolate_bars(
    rows: pd.DataFrame, bar_seconds: int, grid_seconds: int, ticks_per_dollar: int
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised open->extreme->extreme->close path and evenly spread volume for one symbol."""
    n = grid_seconds + 1
    trade_ticks = np.zeros(n, dtype=np.int64)
    volume = np.zeros(n, dtype=np.int64)
    length = bar_seconds
    knots_x = np.array([0, round((length - 1) / 3), round(2 * (length - 1) / 3), length - 1])
    o, h, lo, c = (
        np.rint(rows[name].to_numpy(dtype=np.float64) * ticks_per_dollar)
        for name in ("open", "high", "low", "close")
    )
    up = c >= o  # an up bar visits its low first
    knots_y = np.column_stack([o, np.where(up, lo, h), np.where(up, h, lo), c])
    k = np.arange(length)
    if length >= 4:
        segment = np.clip(np.searchsorted(knots_x, k, side="right") - 1, 0, 2)
        weight = (k - knots_x[segment]) / (knots_x[segment + 1] - knots_x[segment])
        path = knots_y[:, segment] + (knots_y[:, segment + 1] - knots_y[:, segment]) * weight
    else:  # too short to visit four points: open first (unless 1 s long), close last
        path = np.repeat(knots_y[:, [3]], length, axis=1)
        if length > 1:
            path[:, 0] = knots_y[:, 0]
    # Volume: an even share per second, the remainder first to the key seconds so they trade.
    bar_volume = np.maximum(rows["volume"].to_numpy(dtype=np.float64), 0).astype(np.int64)
    rank = np.full(length, 4 + k)
    rank[knots_x[::-1]] = np.arange(4)[::-1]
    rank = np.argsort(np.argsort(rank))
    per_second = bar_volume[:, None] // length + (rank[None, :] < (bar_volume % length)[:, None])
    cols = rows["offset"].to_numpy()[:, None] + 1 + k[None, :]
    inside = cols <= grid_seconds
    trade_ticks[cols[inside]] = np.rint(path[inside]).astype(np.int64)
    volume[cols[inside]] = per_second[inside]
    return trade_ticks, volume
