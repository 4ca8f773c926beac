"""The simulated market behind ibsim: a deterministic day of quotes, trades and bars.

The whole day (04:00-20:00 New York) is generated up front at 1-second resolution into
(symbols x seconds) numpy arrays, so `advance()` only indexes one column and `bars()` only
aggregates slices. Column 0 is the state before 04:00 (last = previous close, no volume);
column c holds the state during second c-1 after 04:00.

Prices are kept as integer ticks (min_tick units) so rounding is exact and bid < ask is checked
in integers; they become dollars only when a Quote or Bar is built.

The spread is a function of price and liquidity (`spread_ticks`): the relative spread falls
with the daily dollar volume, 114 bps / ($M a day) ** 0.65, and is at least one tick. That
gives 1 cent on a liquid large cap (MSFT at $250 trading $6B a day: 0.4 bps), 2 cents on a
$5 stock trading $5M, 6 cents on a $100 stock trading $100M. Synthetic days add a tick in
30% of seconds and in the first two minutes; outside regular hours every spread is
2 x base + 1 ticks. A replay's liquidity is its regular-hours dollar volume per minute times
390. `MarketConfig.spread` (`--spread`) replaces all of it with one fixed spread in dollars.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import date, datetime, time

import numpy as np

from core.clock import NEW_YORK, CalendarRangeError, MarketClock
from ibsim.replay import replay_format, replay_paths

BAR_SECONDS = frozenset({1, 5, 10, 15, 30, 60, 120, 180, 300, 900, 1800, 3600, 86400})
DAY_START = time(4, 0)  # pre-market opens
DAY_END = time(20, 0)  # after-hours ends
MIN_TICK = 0.01
_PREMARKET_GAP_PROBABILITY = 0.15
_SHARES_PER_LOT = 100


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    symbol: str
    con_id: int
    primary_exchange: str  # "NASDAQ" or "NYSE"
    min_tick: float
    prev_close: float  # previous session close
    long_name: str


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    time: float  # unix seconds (simulated): start of the second this quote state began
    bid: float
    ask: float
    last: float
    bid_size: int
    ask_size: int
    last_size: int
    volume: int  # cumulative shares today (including pre-market)
    open: float  # regular session so far; nan before the first regular trade
    high: float
    low: float
    prev_close: float


@dataclass(frozen=True, slots=True)
class Bar:
    time: float  # unix seconds of the bar start
    open: float
    high: float
    low: float
    close: float
    volume: int
    wap: float
    count: int  # seconds with trades in the bar (the simulator prints at most once a second)


def spread_ticks(price: float, daily_dollar_volume: float, tick: float = MIN_TICK) -> int:
    """The typical regular-hours spread in ticks of a stock at `price` trading
    `daily_dollar_volume` a day (see the module docstring); at least 1."""
    millions = max(daily_dollar_volume, 1.0) / 1e6
    bps = 114.0 / max(millions, 1e-3) ** 0.65
    return max(1, round(price * bps / 1e4 / tick))


@dataclass(frozen=True)
class MarketConfig:
    """What day to simulate and for which symbols; validated on construction (ValueError)."""

    trading_date: date
    symbols: int = 50
    symbol_names: tuple[str, ...] | None = None
    seed: int = 7
    replay_path: str | None = None
    spread: float | None = None  # dollars, every symbol and second; None: spread_ticks
    bar_seconds: int | None = None  # the replay's bar size; None: its typical spacing

    def __post_init__(self) -> None:
        if self.spread is not None and not (
            math.isfinite(self.spread) and self.spread >= MIN_TICK - 1e-9
        ):
            raise ValueError(
                f"spread {self.spread} must be at least one tick ({MIN_TICK}); e.g. 0.01"
            )
        day = self.trading_date
        if isinstance(day, datetime) or not isinstance(day, date):
            raise ValueError(
                f"trading_date must be a datetime.date, got {day!r}; pass e.g. date(2026, 3, 16)"
            )
        if self.symbol_names is not None:
            names = tuple(self.symbol_names)
            if (
                not names
                or len(set(names)) != len(names)
                or not all(isinstance(n, str) and n.strip() for n in names)
            ):
                raise ValueError(
                    f"symbol_names must be non-empty, unique ticker strings, got {names!r}; "
                    "fix the list or pass symbols=<count> instead"
                )
        elif self.replay_path is None and self.symbols < 1:
            raise ValueError(
                f"symbols must be >= 1, got {self.symbols}; set e.g. MarketConfig(symbols=50) "
                "or pass symbol_names"
            )
        if self.bar_seconds is not None and not 1 <= self.bar_seconds <= 86400:
            raise ValueError(f"bar_seconds {self.bar_seconds} must be 1..86400, e.g. 60")
        if self.replay_path is not None:
            replay_format(self.replay_path)
        clock = MarketClock()
        try:
            session = clock.session(day)
            next_session = None if session else clock.next_session(day).trading_date
        except CalendarRangeError as exc:
            raise ValueError(f"trading_date {exc}") from None
        if session is None:
            raise ValueError(
                f"trading_date {day} is not an XNYS session (weekend or holiday); "
                f"pick a trading day such as {next_session}"
            )


def con_id_for(symbol: str) -> int:
    """A stable contract id from the ticker alone (the same symbol keeps its id across runs)."""
    return 100_000 + zlib.crc32(symbol.encode()) % 900_000_000


def _exchange_for(symbol: str) -> str:
    # Mirrors the US habit: NYSE listings have 1-3 letters, NASDAQ ones 4 or more.
    return "NYSE" if len(symbol) <= 3 else "NASDAQ"


def generate_tickers(count: int, seed: int) -> tuple[str, ...]:
    """`count` unique 3-4 letter tickers; a smaller count gives a prefix of a larger one."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x71C4E5])))
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    tickers: dict[str, None] = {}
    while len(tickers) < count:
        length = 3 if rng.random() < 0.35 else 4
        tickers["".join(rng.choice(letters, size=length))] = None
    return tuple(tickers)


_NAME_SUFFIXES = ("Holdings Inc", "Technologies Corp", "Group Inc", "Therapeutics Inc",
                  "Industries Co", "Systems Inc", "Energy Corp", "Financial Corp")  # fmt: skip


def _symbol_seed(seed: int, symbol: str, *extra: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(symbol.encode()), *extra])


@dataclass(frozen=True)
class _Day:
    """Grid geometry of the trading date, all in seconds."""

    start: float  # epoch of 04:00 New York
    seconds: int  # grid length (04:00-20:00; 57,600 except on DST change days)
    open_col: int  # first column of the regular session
    close_col: int  # first column after the regular session
    midnight: float  # epoch of 00:00 New York (daily bars start here)

    @classmethod
    def of(cls, trading_date: date) -> _Day:
        session = MarketClock().session(trading_date)
        assert session is not None  # MarketConfig validated the date
        start = datetime.combine(trading_date, DAY_START, NEW_YORK).timestamp()
        end = datetime.combine(trading_date, DAY_END, NEW_YORK).timestamp()
        midnight = datetime.combine(trading_date, time(0), NEW_YORK).timestamp()
        return cls(
            start=start,
            seconds=int(end - start),
            open_col=int(session.open.timestamp() - start) + 1,
            close_col=int(session.close.timestamp() - start) + 1,
            midnight=midnight,
        )


def _centered_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average (shorter at the edges), O(n) via a cumulative sum."""
    n = x.size
    cum = np.concatenate(([0.0], np.cumsum(x)))
    k = np.arange(n)
    lo = np.clip(k - window // 2, 0, n)
    hi = np.clip(k + window // 2 + 1, 0, n)
    return (cum[hi] - cum[lo]) / (hi - lo)


def _forward_fill(values: np.ndarray, present: np.ndarray, before: int) -> np.ndarray:
    """values[i] at present positions, carried forward; `before` until the first present one."""
    idx = np.where(present, np.arange(values.size), -1)
    np.maximum.accumulate(idx, out=idx)
    return np.where(idx >= 0, values[np.maximum(idx, 0)], before)


def _quote_ticks(
    mid: np.ndarray, spread: np.ndarray, at_ask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bid (>= 1 tick) around a mid path in ticks, and the trade price on the chosen side."""
    bid = np.maximum(np.floor(mid - spread / 2.0 + 0.5), 1).astype(np.int64)
    return bid, bid + spread * at_ask


@dataclass(frozen=True)
class _Profiles:
    """Intraday shapes shared by every synthetic symbol of a day (computed once per build)."""

    pre_frac: np.ndarray  # 0 -> 1 across the pre-market
    regular_seconds: np.ndarray  # 0 .. n_regular - 1
    volatility: np.ndarray  # per-second sigma shape, sum of squares 1 over the session
    volume: np.ndarray  # expected lots per second for 1 lot of average daily volume

    @classmethod
    def of(cls, day: _Day) -> _Profiles:
        open_s, close_s, n = day.open_col - 1, day.close_col - 1, day.seconds
        n_reg = close_s - open_s
        k = np.arange(n_reg, dtype=np.float64)
        # U-shaped intraday volatility and volume: busy open, quiet lunch, busier close.
        volatility = 0.7 + 1.8 * np.exp(-k / 1200.0) + 0.8 * np.exp(-(n_reg - k) / 1800.0)
        volatility /= math.sqrt(float(np.sum(volatility**2)))
        regular_volume = 0.6 + 3.0 * np.exp(-k / 1200.0) + 1.5 * np.exp(-(n_reg - k) / 1500.0)
        pre_frac = np.arange(open_s) / max(open_s - 1, 1)
        volume = np.empty(n)
        # 85% of a full day's volume in regular hours (less on half days), thin outside.
        volume[open_s:close_s] = regular_volume * (0.85 * n_reg / 23400 / regular_volume.sum())
        volume[:open_s] = 0.03 / 19800 * (0.5 + 1.5 * pre_frac)  # rises toward the open
        after = np.arange(n - close_s)
        volume[close_s:] = 0.03 / 14400 * (0.3 + 2.0 * np.exp(-after / 1200.0))
        return cls(pre_frac, k, volatility, volume)


class Market:
    """A simulated day of quotes and trades; see the module docstring for the layout."""

    def __init__(self, config: MarketConfig) -> None:
        self.config = config
        self._day = _Day.of(config.trading_date)
        self._tpd = round(1 / MIN_TICK)  # ticks per dollar
        if config.replay_path is not None:
            names, prev_closes = self._build_replay(config)
        else:
            names = config.symbol_names or generate_tickers(config.symbols, config.seed)
            names, prev_closes = self._build_synthetic(config, tuple(names))
        self.symbols: dict[str, SymbolSpec] = {}
        con_ids: set[int] = set()
        for name, prev_close in zip(names, prev_closes, strict=True):
            rng = np.random.Generator(np.random.PCG64(_symbol_seed(config.seed, name)))
            con_id = con_id_for(name)
            while con_id in con_ids:  # a hash collision (about 1 in 10^6 universes)
                con_id += 1
            con_ids.add(con_id)
            self.symbols[name] = SymbolSpec(
                symbol=name,
                con_id=con_id,
                primary_exchange=_exchange_for(name),
                min_tick=MIN_TICK,
                prev_close=prev_close,
                long_name=f"{name.title()} {_NAME_SUFFIXES[int(rng.integers(len(_NAME_SUFFIXES)))]}",
            )
        self._names = list(names)
        self._row = {name: i for i, name in enumerate(names)}
        self._first_regular_trade = self._first_trades()
        self._prev_close = np.array(prev_closes)
        count = len(names)
        # Regular-session open/high/low in ticks, accumulated as time advances.
        self._open = np.full(count, np.nan)
        self._high = np.full(count, np.nan)
        self._low = np.full(count, np.nan)
        self._time = self._day.midnight
        self._col = 0
        self._dirty: set[int] = set()

    # -- building ---------------------------------------------------------------------------
    def _allocate(self, count: int) -> None:
        """Compact (symbols x columns) arrays; column 0 is the state before 04:00."""
        shape = (count, self._day.seconds + 1)
        self._bid = np.empty(shape, np.int32)
        self._spread = np.empty(shape, np.int16)  # ask = bid + spread
        self._last = np.empty(shape, np.int32)  # last trade price, carried forward
        self._cumvol = np.empty(shape, np.int64)
        self._last_size = np.empty(shape, np.int32)
        self._bid_lots = np.empty(shape, np.int16)
        self._ask_lots = np.empty(shape, np.int16)

    def _fill_row(
        self,
        row: int,
        prev_close: float,
        bid: np.ndarray,
        spread: np.ndarray,
        trade_px: np.ndarray,
        volume: np.ndarray,
        bid_lots: np.ndarray,
        ask_lots: np.ndarray,
    ) -> None:
        """Write one symbol's per-second arrays (grid length) after its pre-04:00 column."""
        prev_ticks = round(prev_close * self._tpd)
        spread0 = int(spread[0]) + 1
        traded = volume > 0
        self._bid[row, 0] = max(prev_ticks - spread0 // 2, 1)
        self._bid[row, 1:] = bid
        self._spread[row, 0] = spread0
        self._spread[row, 1:] = spread
        self._last[row, 0] = prev_ticks
        self._last[row, 1:] = _forward_fill(trade_px, traded, prev_ticks)
        self._cumvol[row, 0] = 0
        np.cumsum(volume, out=self._cumvol[row, 1:])
        self._last_size[row, 0] = 0
        self._last_size[row, 1:] = _forward_fill(volume, traded, 0)
        self._bid_lots[row, 0] = self._ask_lots[row, 0] = 1
        self._bid_lots[row, 1:] = bid_lots
        self._ask_lots[row, 1:] = ask_lots

    def _first_trades(self) -> np.ndarray:
        """Per symbol, the first regular-session column with a trade (close_col if none)."""
        start, end = self._day.open_col, self._day.close_col
        traded = np.diff(self._cumvol[:, start - 1 : end], axis=1) > 0
        first = start + np.argmax(traded, axis=1)
        return np.where(traded.any(axis=1), first, end)

    def _build_synthetic(
        self, config: MarketConfig, names: tuple[str, ...]
    ) -> tuple[tuple[str, ...], list[float]]:
        day_rngs, traits = [], []
        for name in names:
            trait_rng = np.random.Generator(np.random.PCG64(_symbol_seed(config.seed, name, 1)))
            base_price = math.exp(trait_rng.uniform(math.log(5.0), math.log(300.0)))
            day_rng = np.random.Generator(
                np.random.PCG64(_symbol_seed(config.seed, name, 2, config.trading_date.toordinal()))
            )
            # Day header draws come first so the gap decision does not shift the path draws.
            prev_close = max(round(base_price * math.exp(day_rng.normal(0, 0.06)), 2), 1.0)
            day_rngs.append(day_rng)
            traits.append((trait_rng, prev_close, float(day_rng.random())))
        gap_draws = np.array([t[2] for t in traits])
        gappers = gap_draws < _PREMARKET_GAP_PROBABILITY
        if not gappers.any():  # every universe has at least one news gapper to trade
            gappers[int(np.argmin(gap_draws))] = True
        self._allocate(len(names))
        profiles = _Profiles.of(self._day)
        for row, ((trait_rng, prev_close, _), day_rng) in enumerate(
            zip(traits, day_rngs, strict=True)
        ):
            self._synthetic_day(row, trait_rng, day_rng, prev_close, bool(gappers[row]), profiles)
        return names, [t[1] for t in traits]

    def _synthetic_day(
        self,
        row: int,
        trait_rng: np.random.Generator,
        rng: np.random.Generator,
        prev_close: float,
        gapper: bool,
        profiles: _Profiles,
    ) -> None:
        day = self._day
        n = day.seconds
        open_s, close_s = day.open_col - 1, day.close_col - 1  # seconds after 04:00
        n_pre, n_reg = open_s, close_s - open_s
        # Traits stable across dates: cheap names and gappers move more.
        daily_vol = trait_rng.uniform(0.02, 0.04) * (1.4 if prev_close < 25 else 1.0)
        daily_vol *= 1.5 if gapper else 1.0
        adv_lots = math.exp(trait_rng.uniform(math.log(1e4), math.log(3e5)))
        adv_lots *= math.exp(rng.normal(0, 0.3)) * (3.0 if gapper else 1.0)

        # -- log-price path relative to prev_close, written in place segment by segment --
        gap = (
            rng.uniform(0.065, 0.16)
            if gapper
            else float(np.clip(rng.normal(0, 0.006), -0.02, 0.02))
        )
        pre_drift = rng.uniform(-0.01, 0.02) if gapper else rng.normal(0, 0.002)
        log_path = rng.standard_normal(n)
        pre = log_path[:n_pre]
        np.cumsum(pre, out=pre)
        frac = profiles.pre_frac
        # A Brownian bridge pinned at 04:00 and 09:29:59 keeps the gap into the open.
        pre -= pre[0] + frac * (pre[-1] - pre[0])
        pre *= 1.2e-4 * (1.5 if gapper else 1.0)
        pre += gap + pre_drift * frac

        regular = log_path[open_s:close_s]
        regular *= profiles.volatility
        regular *= daily_vol * math.sqrt(n_reg / 23400)
        np.cumsum(regular, out=regular)
        # Mean reversion: damp the slow part of the walk (keep the fast part) ...
        regular -= 0.65 * _centered_mean(regular, 2700)
        # ... and add trend legs that reverse every ~40 minutes, so price crosses the VWAP.
        knots = np.concatenate(
            ([0], np.sort(rng.uniform(0, n_reg, max(2, n_reg // 2400))), [n_reg])
        )
        legs = np.concatenate(([0.0], rng.normal(0, 0.5 * daily_vol, knots.size - 1)))
        regular += np.interp(profiles.regular_seconds, knots, legs)
        regular += pre[-1] - regular[0] + rng.normal(0, 0.002)

        post = log_path[close_s:]
        post *= 0.8e-4  # thin after-hours drift
        np.cumsum(post, out=post)
        post += regular[-1]
        log_path += math.log(prev_close * self._tpd)
        mid = np.exp(log_path, out=log_path)

        # -- spread, sides, volume, sizes --
        # One random byte per second: bit 0 picks the trade side, the rest widens the spread.
        noise = rng.integers(0, 256, n, dtype=np.uint8)
        at_ask = (noise & 1).astype(bool)
        fixed = self._fixed_spread()
        if fixed is not None:
            spread = np.full(n, fixed, dtype=np.int64)
        else:
            spread = (noise < 77).astype(np.int64)  # +1 tick 30% of the time
            spread += spread_ticks(prev_close, adv_lots * _SHARES_PER_LOT * prev_close)
            for outside in (slice(0, open_s), slice(close_s, n)):  # wide outside regular hours
                spread[outside] = 2 * spread[outside] + 1
            spread[open_s : open_s + 120] += 1  # the opening minutes are wider

        lam = profiles.volume * adv_lots
        if gapper:
            lam[:open_s] *= 5.0  # news draws pre-market traders
        lots = rng.poisson(lam)
        lots[open_s] += int(0.01 * adv_lots) + 1  # opening auction print
        lots[close_s - 1] += int(0.03 * adv_lots) + 1  # closing auction print
        if gapper:
            lots[0] += 5  # the news print at 04:00 shows the gap at once
        depth = 2 + int(18 * min(adv_lots / 3e5, 1.0))
        sizes = rng.integers(0, depth, (2, n), dtype=np.int16)
        sizes[:, :open_s] %= 3  # thin books outside regular hours
        sizes[:, close_s:] %= 3
        sizes += 1

        bid, trade_px = _quote_ticks(mid, spread, at_ask)
        lots *= _SHARES_PER_LOT
        self._fill_row(row, prev_close, bid, spread, trade_px, lots, sizes[0], sizes[1])

    def _build_replay(self, config: MarketConfig) -> tuple[tuple[str, ...], list[float]]:
        assert config.replay_path is not None
        day = self._day
        paths = replay_paths(
            config.replay_path,
            day.start,
            day.seconds,
            self._tpd,
            tuple(config.symbol_names) if config.symbol_names else None,
            config.bar_seconds,
            (day.start + day.open_col - 1, day.start + day.close_col - 1),
        )
        n = self._day.seconds
        self._allocate(len(paths))
        for row, path in enumerate(paths):
            rng = np.random.Generator(
                np.random.PCG64(
                    _symbol_seed(config.seed, path.symbol, 3, config.trading_date.toordinal())
                )
            )
            volume = path.volume[1:]
            prev_ticks = round(path.prev_close * self._tpd)
            # Quotes sit around the recorded path (rows without volume too, which print no
            # trade): each print hits the bid or lifts the ask.
            last = _forward_fill(path.trade_ticks[1:], path.priced[1:], prev_ticks)
            noise = rng.integers(0, 256, n, dtype=np.uint8)
            fixed = self._fixed_spread()
            if fixed is not None:
                spread = np.full(n, fixed, dtype=np.int64)
            else:
                base = spread_ticks(path.prev_close, path.daily_dollar_volume)
                spread = np.full(n, 2 * base + 1, dtype=np.int64)  # wide outside regular hours
                spread[self._day.open_col - 1 : self._day.close_col - 1] = base
            bid = np.maximum(last - spread * (noise & 1), 1)
            sizes = rng.integers(1, 6, (2, n), dtype=np.int16)
            self._fill_row(row, path.prev_close, bid, spread, last, volume, sizes[0], sizes[1])
        return tuple(p.symbol for p in paths), [p.prev_close for p in paths]

    def _fixed_spread(self) -> int | None:
        """The spread override in ticks, or None when the spread follows spread_ticks."""
        spread = self.config.spread
        return None if spread is None else max(1, round(spread * self._tpd))

    # -- time -------------------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Current market time (unix seconds, simulated)."""
        return self._time

    def _col_at(self, epoch: float) -> int:
        return min(max(math.floor(epoch - self._day.start) + 1, 0), self._day.seconds)

    def advance(self, sim_epoch: float) -> list[Quote]:
        """Move to `sim_epoch`; the latest Quote of each symbol that changed since the last call.

        Cost is O(symbols) numpy work however many seconds are crossed. An earlier time returns [].
        """
        if sim_epoch < self._time:
            return []
        old, new = self._col, self._col_at(sim_epoch)
        self._time = float(sim_epoch)
        changed = np.zeros(len(self._row), dtype=bool)
        if new != old:
            self._update_session_stats(old, new)
            for array in (self._bid, self._spread, self._cumvol, self._last, self._bid_lots,
                          self._ask_lots):  # fmt: skip
                changed |= array[:, new] != array[:, old]
            self._col = new
        for row in self._dirty:
            changed[row] = True
        self._dirty.clear()
        if not changed.any():
            return []
        return self._quotes(np.flatnonzero(changed))

    def seconds_until(
        self, symbols: list[str], sim_epoch: float
    ) -> list[tuple[float, list[Quote]]]:
        """Every whole simulated second between now and `sim_epoch` (both excluded), with the
        quotes of `symbols` that changed at that second; the market itself does not move.

        The engine matches working orders on these so that a move shorter than one step
        (a 3-s dip through a stop at 300x) is seen as it happened. A symbol returned here is
        returned by the next advance() too, even if it ends where it started, so the last
        quote streamed is the current one. Empty when no second lies between, or for no
        symbols.
        """
        old, new = self._col, self._col_at(sim_epoch)
        if new - old < 2 or not symbols:
            return []
        rows = np.array([self._row_of(s) for s in symbols])
        arrays = (self._bid, self._spread, self._cumvol, self._last, self._bid_lots,
                  self._ask_lots)  # fmt: skip
        first = self._first_regular_trade[rows]
        opens, highs, lows = self._open[rows], self._high[rows], self._low[rows]
        out = []
        for col in range(old + 1, new):
            if self._day.open_col <= col < self._day.close_col:
                traded = first <= col
                price = np.where(traded, self._last[rows, col], np.nan)
                opens = np.where(np.isnan(opens) & traded, self._last[rows, first], opens)
                highs, lows = np.fmax(highs, price), np.fmin(lows, price)
            changed = np.zeros(rows.size, dtype=bool)
            for array in arrays:
                changed |= array[rows, col] != array[rows, col - 1]
            if changed.any():
                pick = np.flatnonzero(changed)
                self._dirty.update(rows[pick].tolist())
                session = (opens[pick], highs[pick], lows[pick])
                out.append((self._day.start + col - 1, self._quotes(rows[pick], col, session)))
        return out

    def _update_session_stats(self, old: int, new: int) -> None:
        """Fold the regular-session trades of columns (old, new] into open/high/low."""
        lo = max(old + 1, self._day.open_col)
        hi = min(new, self._day.close_col - 1)
        if lo > hi:
            return
        first = self._first_regular_trade
        opening = (first >= lo) & (first <= hi)
        if opening.any():
            rows = np.flatnonzero(opening)
            self._open[rows] = self._last[rows, first[rows]]
        cols = np.arange(lo, hi + 1)
        segment = self._last[:, lo : hi + 1].astype(np.float64)
        # Before a symbol's first regular trade its `last` is still a pre-market price.
        segment[cols[None, :] < first[:, None]] = np.nan
        # fmax/fmin skip nan without the all-nan warnings of nanmax.
        self._high = np.fmax(self._high, np.fmax.reduce(segment, axis=1))
        self._low = np.fmin(self._low, np.fmin.reduce(segment, axis=1))

    # -- quotes -----------------------------------------------------------------------------
    def _quotes(
        self,
        rows: np.ndarray | list[int],
        col: int | None = None,
        session: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> list[Quote]:
        """Quotes of `rows` at column `col` (default: the current one), gathered with one
        numpy index per field. `session`: their open/high/low in ticks as of `col` (default:
        the session so far)."""
        c = self._col if col is None else col
        opens, highs, lows = session or (self._open[rows], self._high[rows], self._low[rows])
        tpd = self._tpd
        bid = self._bid[rows, c].astype(np.int64)
        ask = bid + self._spread[rows, c]
        stamp = self._day.start + c - 1
        fields = zip(
            (bid / tpd).tolist(),
            (ask / tpd).tolist(),
            (self._last[rows, c] / tpd).tolist(),
            (self._bid_lots[rows, c].astype(np.int64) * _SHARES_PER_LOT).tolist(),
            (self._ask_lots[rows, c].astype(np.int64) * _SHARES_PER_LOT).tolist(),
            self._last_size[rows, c].tolist(),
            self._cumvol[rows, c].tolist(),
            (opens / tpd).tolist(),
            (highs / tpd).tolist(),
            (lows / tpd).tolist(),
            self._prev_close[rows].tolist(),
            strict=True,
        )
        names = self._names
        return [
            Quote(names[row], stamp, *values)
            for row, values in zip(np.asarray(rows).tolist(), fields, strict=True)
        ]

    def _row_of(self, symbol: str) -> int:
        try:
            return self._row[symbol]
        except KeyError:
            raise KeyError(f"unknown symbol {symbol!r}; the market has {len(self._row)}") from None

    def quote(self, symbol: str) -> Quote:
        """The current quote of `symbol`. Raises KeyError for an unknown symbol."""
        return self._quotes([self._row_of(symbol)])[0]

    def quote_at(self, symbol: str, epoch: float) -> Quote:
        """The quote `symbol` had at `epoch` (the current one for now or later): what a
        delayed feed shows. Session open/high/low are as of that time too."""
        row = self._row_of(symbol)
        col = self._col_at(epoch)
        if col >= self._col:
            return self.quote(symbol)
        first = int(self._first_regular_trade[row])
        lo, hi = max(self._day.open_col, first), min(col, self._day.close_col - 1)
        if lo <= hi:
            traded = self._last[row, lo : hi + 1]
            stats = (self._last[row, first], traded.max(), traded.min())
        else:  # no regular-session trade yet at that time
            stats = (np.nan, np.nan, np.nan)
        opens, highs, lows = (np.array([value], dtype=np.float64) for value in stats)
        return self._quotes([row], col, (opens, highs, lows))[0]

    def last_trade_before(self, symbol: str, epoch: float) -> float:
        """The last trade price before `epoch` (the previous close before any trade today),
        never later than the current market time: what a bar without trades carries."""
        row = self._row_of(symbol)
        col = min(self._col_at(epoch - 1), self._col)
        return float(self._last[row, col]) / self._tpd

    def previous_close(self, symbol: str) -> float:
        """The previous session's close. Raises KeyError for an unknown symbol."""
        return self.symbols[self._names[self._row_of(symbol)]].prev_close

    # -- test hook --------------------------------------------------------------------------
    def set_price(self, symbol: str, price: float) -> Quote:
        """From now on `symbol` trades around `price`: the rest of the path is scaled to it.

        A print at `price` happens now (last = price). Returns the new quote, which the next
        advance() also returns. Raises KeyError (unknown symbol) or ValueError (price <= 0).
        """
        row = self._row_of(symbol)
        if not price > 0:
            raise ValueError(f"set_price({symbol!r}, {price}): price must be > 0")
        c = self._col
        target = round(price * self._tpd)
        if target < 1:
            raise ValueError(f"set_price({symbol!r}, {price}): price is below one tick")
        spread = self._spread[row, c:].astype(np.int64)
        bid = self._bid[row, c:].astype(np.int64)
        mid = bid + spread / 2.0
        # Shares traded in each column from c on (column 0, before 04:00, never trades).
        volume = np.diff(self._cumvol[row, c:], prepend=self._cumvol[row, c - 1] if c else 0)
        at_ask = self._last[row, c:] == bid + spread
        new_bid, trade_px = _quote_ticks(mid * (target / mid[0]), spread, at_ask)
        self._bid[row, c:] = new_bid
        if c > 0 and volume[0] == 0:  # the print at `price` needs volume (none before 04:00)
            self._cumvol[row, c:] += _SHARES_PER_LOT
            volume[0] = _SHARES_PER_LOT
        trade_px[0] = target
        traded = volume > 0
        self._last[row, c:] = _forward_fill(trade_px, traded, target)
        self._last_size[row, c:] = _forward_fill(volume, traded, int(self._last_size[row, c]))
        if self._day.open_col <= c < self._day.close_col:
            if self._first_regular_trade[row] > c:
                self._first_regular_trade[row] = c
                self._open[row] = target
            self._high[row] = np.fmax(self._high[row], target)
            self._low[row] = np.fmin(self._low[row], target)
        self._dirty.add(row)
        return self._quotes([row])[0]

    # -- history ----------------------------------------------------------------------------
    def bars(self, symbol: str, start: float, end: float, bar_seconds: int) -> list[Bar]:
        """Trade bars of `symbol` over [start, end), never past the current market time.

        Bars are aligned to the clock (daily bars to 00:00 New York); bars without trades are
        left out, as IB does; the last bar may be partial. Raises KeyError (unknown symbol) or
        ValueError (unsupported bar size).
        """
        row = self._row_of(symbol)
        if bar_seconds not in BAR_SECONDS:
            raise ValueError(
                f"bar_seconds {bar_seconds} is not supported; use one of {sorted(BAR_SECONDS)}"
            )
        day_start = self._day.start
        # Column c covers second day_start + c - 1; keep those in [start, end) and <= now.
        first = max(1, math.ceil(start - day_start) + 1)
        last = min(self._col, self._day.seconds, math.ceil(end - day_start))
        if first > last:
            return []
        cumvol = self._cumvol[row, first - 1 : last + 1]
        volume = np.diff(cumvol)
        traded = volume > 0
        if not traded.any():
            return []
        price = self._last[row, first : last + 1].astype(np.int64)
        seconds = day_start + np.arange(first, last + 1) - 1
        anchor = self._day.midnight if bar_seconds == 86400 else 0.0
        bucket = np.floor((seconds - anchor) / bar_seconds).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
        bar_volume = np.add.reduceat(volume, starts)
        count = np.add.reduceat(traded.astype(np.int64), starts)
        high = np.maximum.reduceat(np.where(traded, price, -1), starts)
        low = np.minimum.reduceat(np.where(traded, price, np.iinfo(np.int64).max), starts)
        notional = np.add.reduceat(price * volume, starts)
        ends = np.r_[starts[1:], price.size] - 1
        trade_index = np.flatnonzero(traded)
        open_ = price[
            trade_index[np.minimum(np.searchsorted(trade_index, starts), trade_index.size - 1)]
        ]
        close = price[ends]  # forward-filled last = the bucket's last trade when it traded
        keep = bar_volume > 0
        tpd = self._tpd
        bar_time = anchor + bucket[starts] * bar_seconds
        return [
            Bar(t, o / tpd, h / tpd, lo / tpd, cl / tpd, v, round(n / v / tpd, 6), k)
            for t, o, h, lo, cl, v, n, k in zip(
                bar_time[keep].tolist(),
                open_[keep].tolist(),
                high[keep].tolist(),
                low[keep].tolist(),
                close[keep].tolist(),
                bar_volume[keep].tolist(),
                notional[keep].tolist(),
                count[keep].tolist(),
                strict=True,
            )
        ]


__all__ = [
    "BAR_SECONDS",
    "Bar",
    "Market",
    "MarketConfig",
    "Quote",
    "SymbolSpec",
    "con_id_for",
    "generate_tickers",
]
