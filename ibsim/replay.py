"""Recorded bars (CSV or Parquet) turned into a 1-second trade path for the simulated market.

Within each bar the path runs open -> low -> high -> close when the bar closed up (or
open -> high -> low -> close when it closed down), linearly, so aggregating the replayed seconds
back to the file's bar size gives the file's OHLCV again (when a bar has >= 4 shares of volume).

Input: one file, or a directory of them (every .csv/.parquet/.pq inside); the symbols are the
data's. A per-symbol export (`date,open,high,low,close,volume`, no symbol column) takes its
symbol from the file name before the first `_` (`AAPL_1min.csv` -> AAPL). Each symbol's timestamps must strictly increase within a file and never repeat across
files: a duplicate or out-of-order row is an error naming the file and the row. The bar size
is the data's typical spacing (the most common step between a symbol's rows) unless given.
A row with no volume but a price range keeps its prices on the quote path without trades.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from core.clock import NEW_YORK

REQUIRED_COLUMNS = ("symbol", "time", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS = ("prev_close",)
EXPORT_COLUMNS = ("date", "open", "high", "low", "close", "volume")  # one symbol per file
SUPPORTED_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class ReplayPath:
    """One symbol's replayed day on the market grid (column 0 = before 04:00, column c = second c-1)."""

    symbol: str
    prev_close: float
    daily_dollar_volume: float  # regular-hours dollars per minute x 390: its liquidity
    trade_ticks: np.ndarray  # int64, path price in ticks where `priced` (undefined elsewhere)
    volume: np.ndarray  # int64 shares traded in each grid second
    priced: np.ndarray  # bool, seconds covered by a row (with or without volume)


def replay_files(path: str | Path) -> list[Path]:
    """The file itself, or a directory's replay files in path order, its subfolders' too (the
    recorded bars' layout: one folder per day). Raises ValueError for a missing path, an
    unknown format, or a directory with no replay file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(
            f
            for f in path.rglob("*")
            if f.suffix.lower() in SUPPORTED_SUFFIXES and f.is_file() and not f.name.startswith(".")
        )
        if not files:
            raise ValueError(
                f"replay directory {path} has no .csv or .parquet file; "
                "put the recorded bars there or pass one file"
            )
        return files
    if not path.exists():
        raise ValueError(f"replay path {path} does not exist; check the --replay path")
    replay_format(path)
    return [path]


def replay_format(path: str | Path) -> str:
    """'csv' or 'parquet' from the file name ('' for a directory or a path without a suffix,
    which replay_files checks); ValueError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir() or not suffix:
        return ""
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"replay file {path}: unknown format {suffix or '(no suffix)'!r}; "
            "use a .csv or .parquet file"
        )
    return SUPPORTED_SUFFIXES[suffix]


def read_replay_frame(path: str | Path) -> pd.DataFrame:
    """The rows of a replay file or directory, validated, `time` as unix seconds (float),
    sorted by symbol and time.

    Raises ValueError naming the file (and row) and the fix for a missing path, an unknown
    format, missing or unknown columns, unparseable times or prices, and a symbol's duplicate
    or out-of-order timestamps.
    """
    frames = [_read_one_file(f) for f in replay_files(path)]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = frame.sort_values(["symbol", "time"], kind="stable").reset_index(drop=True)
    repeated = frame.duplicated(["symbol", "time"], keep="first")
    if repeated.any():
        second = frame[repeated].iloc[0]
        first = frame[(frame["symbol"] == second["symbol"]) & (frame["time"] == second["time"])]
        first = first.iloc[0]
        raise ValueError(
            f"replay {second['file']} row {second['row']}: {second['symbol']} at "
            f"{_stamp(second['time'])} repeats {first['file']} row {first['row']}; "
            "drop the duplicate row"
        )
    return frame


@lru_cache(maxsize=8)
def _first_day(path: str, modified: float) -> date:
    del modified  # part of the cache key only: an edited file is read again
    first = float(read_replay_frame(path)["time"].min())
    return pd.Timestamp(first, unit="s", tz="UTC").tz_convert(NEW_YORK).date()


def first_replay_day(path: str | Path) -> date:
    """The New York date of the data's first bar: the day a replay simulates by default.
    Raises ValueError as read_replay_frame does."""
    files = replay_files(path)
    return _first_day(str(path), max(f.stat().st_mtime for f in files))


def replay_symbols(path: str | Path, day: date) -> tuple[str, ...]:
    """The symbols with bars on `day` (New York date), sorted. Raises ValueError as
    read_replay_frame does, or when the data has no bar that day."""
    frame = read_replay_frame(path)
    stamps = pd.to_datetime(frame["time"], unit="s", utc=True).dt.tz_convert(NEW_YORK)
    on_day = frame.loc[stamps.dt.date == day, "symbol"]
    if on_day.empty:
        raise ValueError(
            f"replay {path} has no bars on {day}; pass --date with a date in the data "
            f"(first bar {first_replay_day(path)})"
        )
    return tuple(sorted(set(on_day)))


def _stamp(epoch: float) -> str:
    return f"{pd.Timestamp(float(epoch), unit='s', tz='UTC').tz_convert(NEW_YORK):%F %T}"


def _read_one_file(path: Path) -> pd.DataFrame:
    """One file's rows, validated, with `file` and `row` (its line in a CSV, 1 = header)."""
    fmt = replay_format(path)
    try:
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except Exception as exc:  # parser errors vary by engine; one clear message is what matters
        raise ValueError(
            f"replay file {path} is unreadable as {fmt} ({exc}); re-export it"
        ) from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "symbol" not in frame.columns and "time" not in frame.columns and "date" in frame.columns:
        # The common per-symbol export: the file name says the symbol, `date` the bar's time.
        frame = frame.rename(columns={"date": "time"})
        frame.insert(0, "symbol", symbol_from_file_name(path))
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
            f"{','.join(REQUIRED_COLUMNS)} (optional prev_close), or "
            f"{','.join(EXPORT_COLUMNS)} in a file named after its symbol"
        )
    frame = frame.copy()
    frame["symbol"] = frame["symbol"].astype(str).str.strip().str.upper()
    frame["time"] = _to_epoch_seconds(frame["time"], path)
    for column in ("open", "high", "low", "close", "volume", *OPTIONAL_COLUMNS):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    prices = frame[["open", "high", "low", "close", "volume"]]
    bad = prices.isna().any(axis=1) | (frame[["open", "high", "low", "close"]] <= 0).any(axis=1)
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + (2 if fmt == "csv" else 1)
        raise ValueError(
            f"replay file {path} row {line}: open/high/low/close must be positive numbers and "
            "volume a number on every row; fix or drop the bad rows"
        )
    frame["file"] = str(path)
    frame["row"] = np.arange(len(frame)) + (2 if fmt == "csv" else 1)  # a CSV's line 1: header
    steps = frame.groupby("symbol", sort=False)["time"].diff()
    backwards = steps <= 0
    if backwards.any():
        bad = frame[backwards].iloc[0]
        kind = "repeats the time of" if steps[backwards].iloc[0] == 0 else "is earlier than"
        raise ValueError(
            f"replay file {path} row {bad['row']}: {bad['symbol']} at {_stamp(bad['time'])} "
            f"{kind} the row before it; a symbol's rows must be in time order without "
            "duplicates: sort the file and drop the repeated row"
        )
    return frame


def symbol_from_file_name(path: str | Path) -> str:
    """The symbol of a per-symbol export: the file name up to the first `_` or `.`."""
    return Path(path).name.split(".")[0].split("_")[0].strip().upper()


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
    """The data's bar size: the most common step between a symbol's rows, in whole seconds
    (the smaller on a tie; 60 with no two rows). Missing bars and a stray row do not change
    it, as they would the smallest step."""
    steps = frame.groupby("symbol", sort=False)["time"].diff().to_numpy()
    steps = np.rint(steps[np.isfinite(steps) & (steps > 0)]).astype(np.int64)
    steps = steps[steps > 0]
    if steps.size == 0:
        return 60
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


def replay_paths(
    path: str | Path,
    day_start: float,
    grid_seconds: int,
    ticks_per_dollar: int,
    symbols: tuple[str, ...] | None = None,
    bar_seconds: int | None = None,
    regular: tuple[float, float] | None = None,
) -> list[ReplayPath]:
    """Per-symbol trade paths on the grid [day_start, day_start + grid_seconds); `regular`,
    the session's (open, close) epochs, bounds the volume the liquidity is measured on.

    Raises ValueError when the data has no bars on that grid or lacks a requested symbol.
    """
    frame = read_replay_frame(path)
    bar_seconds = bar_seconds or infer_bar_seconds(frame)
    offsets = np.floor(frame["time"].to_numpy() - day_start).astype(np.int64)
    on_day = (offsets >= 0) & (offsets < grid_seconds)
    if not on_day.any():
        first = pd.Timestamp(float(frame["time"].min()), unit="s", tz="UTC").tz_convert(NEW_YORK)
        raise ValueError(
            f"replay {path} has no bars between 04:00 and 20:00 New York on the trading "
            f"date; pass --date with a date in the data (first bar {first:%F})"
        )
    frame = frame.loc[on_day].assign(offset=offsets[on_day])
    available = list(dict.fromkeys(frame["symbol"]))
    wanted = list(symbols) if symbols else sorted(available)
    absent = [s for s in wanted if s not in available]
    if absent:
        raise ValueError(
            f"replay {path} has no bars for {', '.join(absent)} on the trading date; "
            "drop them from the symbol names (the data has " + ", ".join(sorted(available)) + ")"
        )
    result = []
    for symbol in wanted:
        rows = frame[frame["symbol"] == symbol]
        if "prev_close" in rows.columns and rows["prev_close"].notna().any():
            prev_close = float(rows["prev_close"].dropna().iloc[0])
        else:
            prev_close = float(rows["open"].iloc[0])
        # On the tick grid: a float32 column gives 254.13999938964844 for 254.14.
        prev_close = round(prev_close * ticks_per_dollar) / ticks_per_dollar
        ticks, volume, priced = _interpolate_bars(rows, bar_seconds, grid_seconds, ticks_per_dollar)
        liquidity = daily_dollar_volume(rows, bar_seconds, regular)
        result.append(ReplayPath(symbol, prev_close, liquidity, ticks, volume, priced))
    return result


def daily_dollar_volume(
    rows: pd.DataFrame, bar_seconds: int, regular: tuple[float, float] | None
) -> float:
    """Regular-hours dollar volume per minute of the rows, times 390 (all rows if none)."""
    times = rows["time"].to_numpy()
    inside = (
        np.ones(len(rows), bool)
        if regular is None
        else ((times >= regular[0]) & (times < regular[1]))
    )
    if not inside.any():
        inside[:] = True
    dollars = float((rows["close"].to_numpy() * rows["volume"].to_numpy())[inside].sum())
    minutes = max(inside.sum() * bar_seconds / 60.0, 1.0)
    return dollars / minutes * 390.0


def _interpolate_bars(
    rows: pd.DataFrame, bar_seconds: int, grid_seconds: int, ticks_per_dollar: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised open->extreme->extreme->close path, evenly spread volume and the seconds
    the rows cover, for one symbol."""
    n = grid_seconds + 1
    trade_ticks = np.zeros(n, dtype=np.int64)
    volume = np.zeros(n, dtype=np.int64)
    priced = np.zeros(n, dtype=bool)
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
    priced[cols[inside]] = True
    return trade_ticks, volume, priced


# Regular-hours holes longer than this are missing data, not a quiet stock: the indicators
# would bridge them as if no time had passed.
MAX_GAP_SECONDS = 30 * 60


def check_sessions(frame: pd.DataFrame, max_gap_seconds: float = MAX_GAP_SECONDS) -> None:
    """Check a read_replay_frame() frame for what a day of trading needs, per symbol and New
    York day: bars consistent (low <= open, close <= high; volume >= 0), the day an exchange
    session, some regular-hours bars, some regular-hours volume, and no regular-hours hole
    longer than `max_gap_seconds`. Raises ValueError naming the file, the row and the fix.
    """
    from core.clock import MarketClock  # the calendar: only when a replay is checked

    def fail(index: int, problem: str, fix: str) -> None:
        row = frame.loc[index]
        raise ValueError(
            f"replay file {row['file']} row {row['row']}: {row['symbol']} at "
            f"{_stamp(row['time'])} {problem}; {fix}"
        )

    low, high = frame["low"].to_numpy(), frame["high"].to_numpy()
    inconsistent = (
        (frame[["open", "close"]].min(axis=1).to_numpy() < low - 1e-9)
        | (frame[["open", "close"]].max(axis=1).to_numpy() > high + 1e-9)
        | (frame["volume"].to_numpy() < 0)
    )
    if inconsistent.any():
        fail(
            int(frame.index[np.flatnonzero(inconsistent)[0]]),
            "is not a bar (open and close must lie within low..high, volume >= 0)",
            "fix or drop the row",
        )
    stamps = pd.to_datetime(frame["time"], unit="s", utc=True).dt.tz_convert(NEW_YORK)
    days = stamps.dt.date
    clock = MarketClock()
    for (_, day), rows in frame.groupby([frame["symbol"], days], sort=False):
        session = clock.session(day)
        if session is None:
            fail(rows.index[0], f"is on {day}, not an XNYS session", "drop that day's rows")
        assert session is not None
        times = rows["time"].to_numpy()
        inside = (times >= session.open.timestamp()) & (times < session.close.timestamp())
        if not inside.any():
            fail(
                rows.index[0],
                f"starts a day without regular-hours bars ({session.open:%H:%M}-"
                f"{session.close:%H:%M} New York)",
                "check the time zone (naive times are New York) or drop the day",
            )
        regular = rows[inside]
        if not regular["volume"].sum() > 0:
            fail(
                regular.index[0],
                "starts a day with zero volume in every regular-hours bar",
                "re-export the bars with their traded volume",
            )
        steps = np.diff(regular["time"].to_numpy())
        holes = np.flatnonzero(steps > max_gap_seconds)
        if holes.size:
            fail(
                regular.index[holes[0] + 1],
                f"follows a gap of {steps[holes[0]] / 60:.0f} minutes in regular hours "
                f"(at most {max_gap_seconds / 60:.0f})",
                "fill the missing bars, drop the symbol's day, or allow longer gaps "
                "(backtest.py --max-gap-minutes)",
            )
