"""Writes tests/data/replay/: a small generated sample of 1-minute bars in the replay format.

    python tests/data/make_replay_sample.py

Two symbols on 2022-05-19 (a Thursday, more than three years back), one file each, with what
recorded minute bars of a liquid large cap look like and what the simulator must handle:
pre-market minutes without trades (no row), a zero-volume row with a real price range (some
feeds print quote-only minutes), a gap into the open, and the first hour of regular trading.
Prices are on the cent grid. Deterministic: the same file every run.
"""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

NEW_YORK = ZoneInfo("America/New_York")
DAY = datetime(2022, 5, 19).date()
OUT = Path(__file__).resolve().parent / "replay"
# symbol, previous close, first pre-market price, shares per regular minute
SYMBOLS = (("MSFT", 254.08, 251.90, 60_000), ("AAPL", 140.82, 139.70, 120_000))


def _minutes(start: time, end: time) -> list[float]:
    first = datetime.combine(DAY, start, NEW_YORK).timestamp()
    last = datetime.combine(DAY, end, NEW_YORK).timestamp()
    return list(np.arange(first, last, 60.0))


def sample(symbol: str, prev_close: float, price: float, volume: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    pre = _minutes(time(8, 0), time(9, 30))
    regular = _minutes(time(9, 30), time(10, 30))
    for t in pre + regular:
        is_pre = t < regular[0]
        if is_pre and rng.random() < 0.4:
            continue  # a pre-market minute without trades has no row
        o = round(price, 2)
        c = round(o * (1 + rng.normal(0, 0.0006 if is_pre else 0.0012)), 2)
        h = round(max(o, c) + int(rng.integers(0, 6)) / 100, 2)
        lo = round(min(o, c) - int(rng.integers(0, 6)) / 100, 2)
        shares = int(rng.integers(2, 30)) * 100 if is_pre else int(volume * rng.uniform(0.4, 1.6))
        rows.append([symbol, datetime.fromtimestamp(t, NEW_YORK).isoformat(), o, h, lo, c, shares])
        price = c
    frame = pd.DataFrame(rows, columns=["symbol", "time", "open", "high", "low", "close", "volume"])
    # A quote-only minute in each session: a real price range, no volume.
    for at in ("08:41", "09:47"):
        stamp = datetime.combine(DAY, time.fromisoformat(at), NEW_YORK).isoformat()
        hit = frame.index[frame["time"] == stamp]
        if len(hit):
            frame.loc[hit, "volume"] = 0
    frame["prev_close"] = prev_close
    return frame


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for seed, (symbol, prev_close, price, volume) in enumerate(SYMBOLS, start=1):
        sample(symbol, prev_close, price, volume, seed).to_csv(
            OUT / f"{symbol}_{DAY}.csv", index=False
        )


if __name__ == "__main__":
    main()
