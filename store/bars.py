"""Recorded bars in the replay format: one Parquet file per symbol per trading day.

Layout: `<root>/<YYYY-MM-DD>/<SYMBOL>.parquet` (the New York trading date), columns
`symbol,time,open,high,low,close,volume,prev_close` as ibsim/replay.py reads them, `time` the
bar's start as a New York timestamp, `prev_close` NaN when unknown. A day's folder is a replay
directory as it stands (`sim_day.py --replay bars/2026-12-01`, the backtest), and both the day
trader's recorder and the Massive download cache (sim/fetch.py) write it.

`BarRecorder` keeps what the day trader sees: every 30-s bar its feeds take (history seed and
stream alike), so a paper or live day replays through the backtest exactly. Root: BARS_DIR,
default `bars/` beside the database (Settings.recorded_bars_dir).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core.clock import NEW_YORK
from core.logs import get_logger
from trading.indicators import Bar

if TYPE_CHECKING:
    import pandas as pd

# pandas (and ibsim.replay, which imports it) load at the first write, in the flush thread: the
# day trader starts without them.

log = get_logger("bars")

FLUSH_EVERY_S = 60.0  # real seconds between writes: a crash loses at most this much of a day


def bar_file(root: str | Path, day: date, symbol: str) -> Path:
    """Where `symbol`'s bars of trading day `day` live under `root`."""
    return Path(root) / day.isoformat() / f"{symbol}.parquet"


def trading_date(epoch: float) -> date:
    """The New York date of an epoch time: the day a bar belongs to."""
    return datetime.fromtimestamp(epoch, NEW_YORK).date()


def bars_frame(symbol: str, bars: Sequence[Bar], prev_close: float | None) -> pd.DataFrame:
    """One symbol's bars as a replay-format frame, in the given order."""
    import numpy as np
    import pandas as pd

    from ibsim.replay import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

    values = np.asarray(bars, dtype=np.float64).reshape(-1, len(Bar._fields))
    stamps = pd.to_datetime(values[:, 0], unit="s", utc=True).tz_convert(NEW_YORK)
    known = prev_close is not None and math.isfinite(prev_close) and prev_close > 0
    return pd.DataFrame(
        {
            "symbol": pd.Series([symbol] * len(values), dtype=object),
            "time": stamps,
            "open": values[:, 1],
            "high": values[:, 2],
            "low": values[:, 3],
            "close": values[:, 4],
            "volume": values[:, 5],
            "prev_close": np.full(len(values), prev_close if known else np.nan),
        },
        columns=[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS],
    )


def write_bars_file(path: Path, frame: pd.DataFrame) -> None:
    """Write `frame` to `path` atomically: a reader (or a crash) never sees half a file.
    Raises OSError (and pyarrow's errors) when the file cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        frame.to_parquet(partial, index=False)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_bars_file(path: Path) -> list[Bar]:
    """The bars of one recorded file, oldest first (times as epoch seconds)."""
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(path)
    times = (frame["time"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    columns = [frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close")]
    volume = frame["volume"].to_numpy(dtype=np.float64)
    return [
        Bar(float(t), *map(float, row), float(v))
        for t, *row, v in zip(times, *columns, volume, strict=True)
    ]


class _Day:
    """One symbol's bars of one day, by start time, and whether the file is behind."""

    def __init__(self) -> None:
        self.bars: dict[float, Bar] = {}
        self.prev_close: float | None = None
        self.dirty = False
        self.loaded = False  # the file from an earlier run merged in


class BarRecorder:
    """Buffers bars per symbol and day and writes them in the replay format.

    `add` only appends under a lock (the event loop never waits on disk); a daemon thread
    writes the changed days every `flush_every_s` real seconds, and `close` writes the rest.
    A restart the same day merges the file already there (the history seed brings the same
    bars again: the newest copy of a bar wins). A write that fails is logged once (until one
    succeeds again) and retried at the next flush; it never stops trading.
    """

    def __init__(self, root: str | Path, *, flush_every_s: float = FLUSH_EVERY_S) -> None:
        if flush_every_s <= 0:
            raise ValueError("bar recorder needs flush_every_s > 0")
        self.root = Path(root)
        self.flush_every_s = flush_every_s
        self._days: dict[tuple[date, str], _Day] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one flush at a time (timer thread or close)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> BarRecorder:
        """Start the flush timer (a daemon thread); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bar-recorder", daemon=True)
            self._thread.start()
        return self

    def add(self, symbol: str, bar: Bar, prev_close: float | None = None) -> None:
        """Keep one completed bar of `symbol` (prev_close: the previous session's close, when
        known). Cheap: no I/O."""
        key = (trading_date(bar.time), symbol)
        with self._lock:
            day = self._days.get(key)
            if day is None:
                day = self._days[key] = _Day()
            day.bars[bar.time] = bar
            if prev_close is not None and math.isfinite(prev_close) and prev_close > 0:
                day.prev_close = prev_close
            day.dirty = True

    def flush(self) -> list[Path]:
        """Write every day with new bars; returns the files written. Days before the newest
        one are dropped from memory once written."""
        written: list[Path] = []
        with self._write_lock:
            with self._lock:
                due = [(key, day) for key, day in self._days.items() if day.dirty]
                snapshot = [
                    (key, day, sorted(day.bars.values()), day.prev_close) for key, day in due
                ]
                for _, day in due:
                    day.dirty = False
            for (day_date, symbol), day, bars, prev_close in snapshot:
                path = bar_file(self.root, day_date, symbol)
                try:
                    if not day.loaded:
                        bars, prev_close = self._merge_earlier_run(path, day, bars, prev_close)
                    write_bars_file(path, bars_frame(symbol, bars, prev_close))
                except Exception as exc:  # disk full, permissions, a bad file: never fatal
                    with self._lock:
                        day.dirty = True  # retried at the next flush
                    self._report_failure(path, exc)
                    continue
                written.append(path)
            if written and self._failing:
                self._failing = False
                log.info("bars_record_recovered", files=len(written))
            self._forget_past_days()
        return written

    def _merge_earlier_run(
        self, path: Path, day: _Day, bars: list[Bar], prev_close: float | None
    ) -> tuple[list[Bar], float | None]:
        if path.exists():
            import pandas as pd

            earlier = pd.read_parquet(path, columns=["prev_close"])["prev_close"].dropna()
            merged = {b.time: b for b in read_bars_file(path)}
            merged.update({b.time: b for b in bars})
            bars = sorted(merged.values())
            if prev_close is None and not earlier.empty:
                prev_close = float(earlier.iloc[0])
            with self._lock:
                for bar in bars:
                    day.bars.setdefault(bar.time, bar)
                if day.prev_close is None:
                    day.prev_close = prev_close
        day.loaded = True
        return bars, prev_close

    def _report_failure(self, path: Path, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "bars_record_failed",
                path=str(path),
                error=f"{type(exc).__name__}: {exc}",
                fix="check BARS_DIR is writable with free space; trading goes on, the bars "
                "stay in memory and are written at the next flush",
            )

    def _forget_past_days(self) -> None:
        with self._lock:
            newest = max((d for d, _ in self._days), default=None)
            for key in [k for k, v in self._days.items() if k[0] != newest and not v.dirty]:
                del self._days[key]

    def _run(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            self.flush()

    def close(self) -> list[Path]:
        """Stop the timer and write what is left; returns the files written."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_every_s + 5.0)
            self._thread = None
        return self.flush()
