"""The fast backtest: the day trader's entry core and the exit manager's rules over recorded
bars, in one process, with the simulated gateway's fill and commission rules.

    result = run_backtest(days_from_data("bars/"), BacktestConfig(capital=50_000))
    result.days[0].report          # reports.DayReport, the report a simulated day prints
    result.journal                 # journal.JournalRow per round trip

What the live system does, step by step on the day's 30-s analysis bars:
  - the entry side is `trading.entries.EntryCore` fed every bar from 04:00 (warm-up and the
    gap reference come from the day's own history, as the day trader seeds them), with the
    quote at the bar's end; it decides at the bar's end (once the bar is known), within the
    free slots, against the book (held symbols; symbols closed today: re-entry blocked;
    working entries; the day's P&L: daily loss limit; the kill switch);
  - an enter becomes the core's plan (an EnterIntent: a marketable DAY limit BUY, ask +
    `limit_ticks`, sized on `allocation` of the equity); it reaches the market
    `order_delay_s` after the decision (0: at once) and is first looked at on the next bar's
    open at the earliest (a decision at bar t fills at t+1 or later); unfilled after
    `entry_timeout_s` it is cancelled (the symbol may be tried again; a partly filled entry
    keeps what it bought);
  - a fill gets the exit side's protective set (`trading.exits.protect_intent`: the target
    LMT and the server STP in one OCA group); `trading.exits.ExitBook` keeps the symbol's
    state and calls the bot stop (last <= stop) and the touched target
    (`target_fill_grace_s` without a fill); those exits and the EOD flatten (the exit
    side's day phase: the calendar's close - `eod_flatten_minutes`, 12:45 on half days) sell
    through the market at the moment they are called for.
Orders are matched along each fill bar's path (open -> low -> high -> close for an up bar,
linear between, as ibsim.replay replays bars; every price level an order waits for is
visited where the path crosses it) by trading.fills' rules, the simulated gateway's: a limit
fills only when traded through (at its price once resting), market-like orders take the far
side plus `slippage_ticks`. The quote around a print is the side worst for the order: a buy
sees the print as the bid (ask = print + spread), a sell as the ask (bid = print - spread).
A fill takes at most `participation` of its bar's volume; the rest waits (partial fills).
Commissions: trading.fills.commission_for per order (sim.ledger).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import numpy as np

from core.clock import NEW_YORK, MarketClock, Session
from core.settings import Settings
from ibsim.config import GatewayConfig
from ibsim.orders import SimOrder
from journal import ENTRY_PURPOSE_PREFIX, journal_rows
from reports import DayReport, round_trips_from_fills
from sim.days import ANALYSIS_SECONDS, MIN_TICK, TradingDay
from sim.ledger import Ledger
from sim.results import BacktestResult, DayResult
from trading.entries import (
    ENTRY_TIMEOUT_S,
    AccountFunds,
    BookState,
    ClosedPosition,
    EntryConfig,
    EntryCore,
    EntryDecision,
    book_from_records,
)
from trading.entries import HeldPosition as BookPosition
from trading.exits import ExitBook, ExitConfig, exit_phase, held_position, protect_intent
from trading.fills import fill_price, is_triggered
from trading.indicators import Bar
from trading.model import (
    DAY_TRADER,
    PURPOSE_BACKSTOP,
    PURPOSE_EOD,
    PURPOSE_TARGET,
    Quote,
    exit_reason_for,
)

AGENT = DAY_TRADER  # the strategy's positions in the book
# A NamedTuple's own __new__ is a Python call; with every field given, tuple.__new__ makes
# the same record at a third of the cost (twice per bar: the Bar and its Quote).
_record = tuple.__new__


def _default(home: type, name: str) -> Any:
    """A field whose default is `home`'s (core.settings for the user's numbers, the entry
    core for its limit, the simulated gateway for cash and commissions): one home each."""
    return field(default={f.name: f.default for f in dataclasses.fields(home)}[name])


@dataclass(frozen=True)
class BacktestConfig:
    """What a backtest trades with; the risk and exit numbers default to core.settings'."""

    capital: float = _default(GatewayConfig, "initial_cash")  # starting equity
    allocation: float = _default(Settings, "allocation")
    max_open_positions: int = _default(Settings, "max_open_positions")
    max_position_usd: float | None = _default(Settings, "max_position_usd")
    daily_loss_limit_pct: float = _default(Settings, "daily_loss_limit_pct")
    profit_target_pct: float = _default(Settings, "profit_target_pct")
    stop_loss_pct: float = _default(Settings, "stop_loss_pct")
    eod_flatten_minutes: float = _default(Settings, "eod_flatten_minutes")
    entry_timeout_s: float = ENTRY_TIMEOUT_S
    # Market seconds from a decision to its order at the market: live, well under a second;
    # the socket simulator at 100x about 10-15 (its bots' real latency times the speed).
    order_delay_s: float = 0.0
    limit_ticks: int = _default(EntryConfig, "limit_ticks")  # entry limit = ask + these
    slippage_ticks: int = _default(GatewayConfig, "slippage_ticks")  # beyond the far side
    participation: float = 0.25  # a fill takes at most this share of its bar's volume
    commission_per_share: float = _default(GatewayConfig, "commission_per_share")
    commission_min: float = _default(GatewayConfig, "commission_min")
    kill_switch_at: time | None = None  # entries halted from this New York time each day
    # The entry rules' thresholds (core.settings ENTRY_*); cutoff None: the EOD flatten's.
    rsi_max: float = _default(Settings, "entry_rsi_max")
    atr_pct_min: float = _default(Settings, "entry_atr_pct_min")
    gap_min_pct: float = _default(Settings, "entry_gap_min_pct")
    entry_cutoff_minutes: float | None = _default(Settings, "entry_cutoff_minutes")

    def __post_init__(self) -> None:
        if not self.capital > 0:
            raise ValueError(f"capital {self.capital} must be > 0")
        if not 0 < self.allocation <= 1:
            raise ValueError(f"allocation {self.allocation} must be in (0, 1]")
        if not 0 < self.participation <= 1:
            raise ValueError(f"participation {self.participation} must be in (0, 1]")
        if self.max_open_positions < 1 or self.entry_timeout_s <= 0 or self.order_delay_s < 0:
            raise ValueError(
                "max_open_positions must be >= 1, entry_timeout_s > 0 and order_delay_s >= 0"
            )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BacktestConfig:
        """The user's settings (core.settings), then `overrides`."""
        values: dict[str, Any] = {
            name: getattr(settings, name)
            for name in (
                "allocation",
                "max_open_positions",
                "max_position_usd",
                "daily_loss_limit_pct",
                "profit_target_pct",
                "stop_loss_pct",
                "eod_flatten_minutes",
            )
        }
        values["rsi_max"] = settings.entry_rsi_max
        values["atr_pct_min"] = settings.entry_atr_pct_min
        values["gap_min_pct"] = settings.entry_gap_min_pct
        values["entry_cutoff_minutes"] = settings.entry_cutoff_minutes
        values.update(overrides)
        return cls(**values)

    def entry_config(self) -> EntryConfig:
        cutoff = self.entry_cutoff_minutes
        return EntryConfig(
            rsi_max=self.rsi_max,
            atr_pct_min=self.atr_pct_min,
            gap_min_pct=self.gap_min_pct,
            entry_cutoff_minutes=self.eod_flatten_minutes if cutoff is None else cutoff,
            max_open_positions=self.max_open_positions,
            daily_loss_limit_pct=self.daily_loss_limit_pct,
            allocation=self.allocation,
            max_position_usd=self.max_position_usd,
            limit_ticks=self.limit_ticks,
        )

    def exit_config(self) -> ExitConfig:
        return ExitConfig(
            profit_target_pct=self.profit_target_pct,
            stop_loss_pct=self.stop_loss_pct,
            eod_flatten_minutes=self.eod_flatten_minutes,
        )


# -- one symbol's orders and position -------------------------------------------------------------
def _order(symbol: str, action: str, qty: float, order_type: str, ref: str, *, limit: float | None
           = None, stop: float | None = None, tif: str = "DAY") -> SimOrder:  # fmt: skip
    """A SimOrder (the gateway's own record: trading.fills reads it as the gateway does)."""
    return SimOrder(
        order_id=0, client_id=0, perm_id=0, account="BACKTEST", symbol=symbol, con_id=0,
        exchange="SMART", action=action, total_qty=float(qty), order_type=order_type,
        lmt_price=limit, aux_price=stop, tif=tif, oca_group="", oca_type=0, order_ref=ref,
        transmit=True, parent_id=0, outside_rth=False,
    )  # fmt: skip


@dataclass
class _Entry:
    order: SimOrder | None  # None until it reaches the market (order_delay_s)
    placed_at: float
    deadline: float
    rule: str
    decision: EntryDecision


@dataclass
class _Holding:
    """A position at the simulated broker and its working sells (the exit side's own state
    of the symbol, position prices and target touch, is its trading.exits.HeldSymbol)."""

    symbol: str
    quantity: float = 0.0
    cost: float = 0.0
    target: SimOrder | None = None
    backstop: SimOrder | None = None
    exit: SimOrder | None = None
    exit_purpose: str = ""

    @property
    def entry_price(self) -> float:
        return self.cost / self.quantity if self.quantity else 0.0


class _BuyQuote:
    """The print as the bid: what a buy can get (trading.fills.BookQuote)."""

    __slots__ = ("ask", "ask_size", "bid", "bid_size", "last")

    def __init__(self, last: float, spread: float) -> None:
        self.last, self.bid, self.ask = last, last, round(last + spread, 6)
        self.bid_size = self.ask_size = 0.0


class _SellQuote:
    """The print as the ask: what a sell can get."""

    __slots__ = ("ask", "ask_size", "bid", "bid_size", "last")

    def __init__(self, last: float, spread: float) -> None:
        self.last, self.ask, self.bid = last, last, round(max(MIN_TICK, last - spread), 6)
        self.bid_size = self.ask_size = 0.0


class _DayCalendar:
    """The day's session without a calendar look-up per bar (trading.feed.SessionCalendar)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._clock = MarketClock()

    def session(self, day: date) -> Session | None:
        return self._session if day == self._session.trading_date else self._clock.session(day)


# -- one day -----------------------------------------------------------------------------------------
class _DayRun:
    """One trading day through the strategy; `run()` returns its DayResult."""

    def __init__(self, day: TradingDay, config: BacktestConfig, equity: float) -> None:
        self.day = day
        self.config = config
        self.entry_config = config.entry_config()
        self.exit_config = config.exit_config()
        self.session: Session = day.session
        self.open_epoch = day.session.open.timestamp()
        self.close_epoch = day.session.close.timestamp()
        self.flattening = False  # in the exit side's end-of-day flatten, per step
        self.flatten_from: float | None = None
        self.kill_at = (
            datetime.combine(day.trading_date, config.kill_switch_at, NEW_YORK).timestamp()
            if config.kill_switch_at is not None
            else math.inf
        )
        self.core = EntryCore(self.entry_config, _DayCalendar(day.session))
        for symbol in day.symbols:  # the watchlist's order: ties for a slot go by it, as live
            self.core.add_symbol(symbol.symbol)
        self.symbols = [s.symbol for s in day.symbols]
        self.spread = {s.symbol: s.spread_ticks * MIN_TICK for s in day.symbols}
        self.prev_close = {s.symbol: s.prev_close for s in day.symbols}
        length = day.fill_seconds
        self.knots = (0, round((length - 1) / 3), round(2 * (length - 1) / 3), length - 1)
        self.equity_start = equity
        self.ledger = Ledger(day.trading_date, equity, config.commission_per_share,
                             config.commission_min)  # fmt: skip
        self.entries: dict[str, _Entry] = {}
        self.holdings: dict[str, _Holding] = {}
        self.exits = ExitBook(self.exit_config)
        self.closed: list[ClosedPosition] = []
        self.last_price: dict[str, float] = {}
        self.decisions: list[dict[str, Any]] = []
        self.sent = self.cancelled = 0

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> tuple[DayResult, int]:
        day = self.day
        analysis = [s.analysis for s in day.symbols]
        fill = {s.symbol: s.fill for s in day.symbols}
        self.fill_bars = fill
        self.fill_times = {sym: rows[:, 0] for sym, rows in fill.items()}
        self.fill_pos = dict.fromkeys(self.symbols, 0)
        # All analysis bars in the order they become known: (time, ..., known at).
        counts = [len(a) for a in analysis]
        stacked = (
            np.concatenate([a for a in analysis if len(a)]) if any(counts) else np.empty((0, 7))
        )
        owner = np.repeat(np.arange(len(analysis)), counts)
        order = np.lexsort((stacked[:, 0], stacked[:, 6]))
        # Plain lists, one entry per bar: the loop below is the backtest's per-bar cost.
        rows = stacked[order, :6].tolist()
        known_at = stacked[order, 6].tolist()
        owners = owner[order].tolist()
        feeds = [self.core.add_symbol(symbol) for symbol in self.symbols]
        spreads = [self.spread[symbol] for symbol in self.symbols]
        prev_closes = [self.prev_close[symbol] for symbol in self.symbols]
        last_price = self.last_price
        count = len(rows)
        i = 0
        # Pre-market bars: the gap reference (no entry before the open).
        while i < count and known_at[i] <= self.open_epoch:
            feeds[owners[i]].on_bar(_record(Bar, rows[i]))
            i += 1
        step = self.open_epoch
        while step < self.close_epoch:
            end = step + ANALYSIS_SECONDS
            self.flattening = exit_phase(
                datetime.fromtimestamp(step, NEW_YORK), self.session, self.exit_config
            ).flattening
            if self.flattening and self.flatten_from is None:
                self.flatten_from = step
            self._trade_until(end)
            now = end
            while i < count and known_at[i] <= end:
                k = owners[i]
                feed = feeds[k]
                row = rows[i]
                close = row[4]
                feed.on_bar(_record(Bar, row))
                # The quote at the bar's end: last and bid at its close, the ask a spread above.
                feed.on_quote(_record(Quote, (feed.symbol, close, close,
                                              round(close + spreads[k], 6), now, 1,
                                              prev_closes[k])))  # fmt: skip
                last_price[feed.symbol] = close
                i += 1
            self._decide(now)
            step = end
        bars = i
        self._close_out()
        return self._result(), bars

    def _trade_until(self, end: float) -> None:
        """Match every working order and watch every position along the fill bars before
        `end`, then cancel entries whose time is up."""
        for symbol in sorted({*self.entries, *self.holdings}):  # sorted: reproducible refs
            pos = self.fill_pos[symbol]
            stop = int(np.searchsorted(self.fill_times[symbol], end, side="left"))
            for row in self.fill_bars[symbol][pos:stop].tolist():
                if row[5] > 0:
                    self._walk(symbol, row)
                self.last_price[symbol] = row[4]
            self.fill_pos[symbol] = max(pos, stop)
        for symbol, entry in list(self.entries.items()):
            if entry.deadline <= end:
                self._cancel_entry(symbol)

    # -- entries -----------------------------------------------------------------------------
    def _book(self) -> BookState:
        active = [
            BookPosition(h.symbol, h.quantity, h.entry_price, AGENT)
            for h in self.holdings.values()
            if h.quantity > 0
        ]
        return book_from_records(
            active,
            self.closed,
            self.entries,
            self.last_price,
            agent=AGENT,
            net_liquidation=self.equity_start,
            kill_switch=None,
        )

    def _decide(self, now: float) -> None:
        if not any(f.new_bar for f in self.core.feeds.values()):
            return
        book = self._book()
        if now >= self.kill_at:
            book = dataclasses.replace(
                book, kill_switch=f"kill switch at {self.config.kill_switch_at}"
            )
        moment = datetime.fromtimestamp(now, NEW_YORK)
        for decision in self.core.decide(moment, self.session, book, skips=False):
            if decision.enter:
                try:
                    self._enter(decision, now)
                finally:
                    self.core.entry_finished(decision.symbol)

    def _enter(self, decision: EntryDecision, now: float) -> None:
        """The day trader sends an entry for `decision`: at once, priced from the ask the
        decision saw, or `order_delay_s` later, priced from the ask then."""
        symbol = decision.symbol
        rule = decision.rule or ""
        at = now + self.config.order_delay_s
        entry = _Entry(None, at, at + self.config.entry_timeout_s, rule, decision)
        self.entries[symbol] = entry
        # Its fill bars from now on (a symbol neither entering nor held skips them).
        self.fill_pos[symbol] = int(np.searchsorted(self.fill_times[symbol], now, side="left"))
        self.decisions.append(
            {
                "event": "entry_decision",
                "decision": "enter",
                "symbol": symbol,
                "rule": rule,
                "exchange_time": datetime.fromtimestamp(now, NEW_YORK).isoformat(),
                **{
                    k: decision.values.get(k)
                    for k in ("bar_time", "vwap", "rsi", "atr_pct", "gap_pct")
                },
            }
        )
        if self.config.order_delay_s == 0:
            self._send(decision, entry, decision.values["ask"])

    def _send(self, decision: EntryDecision, entry: _Entry, ask: float) -> bool:
        """The entry core's plan for `decision` on the ask at sending (a marketable DAY limit
        BUY sized by allocation), placed at the simulated broker; False when not even one
        share fits (the entry is dropped)."""
        committed = sum(
            e.order.remaining * (e.order.lmt_price or 0)
            for e in self.entries.values()
            if e.order is not None
        )
        equity = self.equity_start + sum(c.pnl or 0.0 for c in self.closed)
        fresh = decision._replace(values={**decision.values, "ask": ask})
        intent = self.core.plan(
            fresh, AccountFunds(equity, self.ledger.cash, self.ledger.cash), committed
        ).intent
        if intent is None:
            del self.entries[decision.symbol]
            return False
        ref = self.ledger.ref(intent.symbol)
        entry.order = _order(intent.symbol, "BUY", intent.quantity, "LMT", ref,
                             limit=intent.limit_price, tif=intent.tif)  # fmt: skip
        self.ledger.purposes_by_ref[ref] = ENTRY_PURPOSE_PREFIX + intent.rule
        self.sent += 1
        return True

    def _cancel_entry(self, symbol: str) -> None:
        entry = self.entries.pop(symbol)
        if entry.order is not None and entry.order.remaining > 1e-9:
            self.cancelled += 1

    # -- the path of one fill bar ----------------------------------------------------------------
    def _walk(self, symbol: str, row: list[float]) -> None:
        """Visit the bar's path: its four knots and every level an order or the exit rules
        wait for where the path crosses it."""
        start, opened, high, low, close, volume = row
        up = close >= opened
        prices = (opened, low, high, close) if up else (opened, high, low, close)
        times = [start + k for k in self.knots]
        capacity = [max(1.0, math.floor(volume * self.config.participation))]
        self._at(symbol, times[0], prices[0], capacity)
        for k in range(3):
            t0, p0, t1, p1 = times[k], prices[k], times[k + 1], prices[k + 1]
            if p1 != p0:
                between = [lv for lv in self._levels(symbol) if min(p0, p1) < lv < max(p0, p1)]
                for level in sorted(between, reverse=p1 < p0):
                    at = t0 + (t1 - t0) * (level - p0) / (p1 - p0)
                    self._timed(symbol, t0, p0, at, level, capacity)
                    self._at(symbol, at, level, capacity)
                    t0, p0 = at, level
            self._timed(symbol, t0, p0, t1, p1, capacity)
            self._at(symbol, t1, p1, capacity)

    def _levels(self, symbol: str) -> list[float]:
        levels = []
        entry = self.entries.get(symbol)
        if entry is not None and entry.order is not None and entry.order.lmt_price is not None:
            levels.append(round(entry.order.lmt_price - MIN_TICK, 6))  # first price through
        holding = self.holdings.get(symbol)
        pos = self.exits[symbol].position
        if holding is not None and pos is not None and holding.exit is None:
            levels += [pos.target_price, round(pos.target_price + MIN_TICK, 6)]
            levels += [pos.stop_price, pos.backstop_price]
        return levels

    def _timed(
        self, symbol: str, t0: float, p0: float, t1: float, p1: float, capacity: list[float]
    ) -> None:
        """Moments inside the piece (t0, p0) -> (t1, p1) that something waits for: a delayed
        entry reaching the market, and a touched target still at or above it
        `target_fill_grace_s` later (the bot sells if the LMT has not)."""
        entry = self.entries.get(symbol)
        if entry is not None and entry.order is None and t0 < entry.placed_at < t1:
            at = entry.placed_at
            self._at(symbol, at, round(p0 + (p1 - p0) * (at - t0) / (t1 - t0), 2), capacity)
        holding = self.holdings.get(symbol)
        state = self.exits[symbol]
        if holding is None or state.target_touched_at is None or holding.exit is not None:
            return
        assert state.position is not None
        due = state.target_touched_at + self.exit_config.target_fill_grace_s
        if t0 < due < t1:
            price = p0 + (p1 - p0) * (due - t0) / (t1 - t0)
            if price >= state.position.target_price:
                self._at(symbol, due, round(price, 6), capacity)

    def _at(self, symbol: str, t: float, last: float, capacity: list[float]) -> None:
        """Everything that happens at one point of the path, in the gateway's order:
        working orders match, then the exit manager looks at the quote."""
        spread = self.spread[symbol]
        entry = self.entries.get(symbol)
        if entry is not None and t >= entry.placed_at:
            buy_quote = _BuyQuote(last, spread)
            if t >= entry.deadline:
                self._cancel_entry(symbol)
            elif entry.order is not None or self._send(entry.decision, entry, buy_quote.ask):
                self._match_entry(symbol, entry, t, buy_quote, capacity)
        holding = self.holdings.get(symbol)
        if holding is not None and holding.quantity > 1e-9:
            self._watch(holding, t, last, _SellQuote(last, spread), capacity)

    def _match_entry(
        self, symbol: str, entry: _Entry, t: float, quote: _BuyQuote, capacity: list[float]
    ) -> None:
        order = entry.order
        assert order is not None
        price = fill_price(order, quote, MIN_TICK, self.config.slippage_ticks)
        order.resting = True
        if price is None or capacity[0] < 1:
            return
        qty = min(order.remaining, capacity[0])
        capacity[0] -= qty
        self.ledger.fill(order, qty, price, t)
        holding = self.holdings.setdefault(symbol, _Holding(symbol))
        holding.quantity += qty
        holding.cost += qty * price
        self._protect(holding)
        if order.remaining <= 1e-9:
            del self.entries[symbol]

    def _protect(self, holding: _Holding) -> None:
        """The exit side's protective set for what is held now (trading.exits'
        protect_intent: target LMT and server STP for the whole position), placed at the
        simulated broker; a grown position gets it anew at its average price."""
        symbol = holding.symbol
        pos = held_position(symbol, holding.quantity, holding.entry_price, self.exit_config,
                            tick=MIN_TICK, db_row={"entry_price": holding.entry_price,
                                                   "agent": AGENT})  # fmt: skip
        self.exits[symbol].position = pos
        oca = self.ledger.ref(symbol)
        intent = protect_intent(pos, round(holding.quantity), oca, self.exit_config, None)
        holding.target = _order(symbol, "SELL", intent.quantity, "LMT", f"{oca}-target",
                                limit=intent.target_price, tif=intent.tif)  # fmt: skip
        holding.backstop = _order(symbol, "SELL", intent.quantity, "STP", f"{oca}-stop",
                                  stop=intent.stop_price, tif=intent.tif)  # fmt: skip
        self.ledger.reasons_by_ref[holding.target.order_ref] = exit_reason_for(PURPOSE_TARGET)
        self.ledger.reasons_by_ref[holding.backstop.order_ref] = exit_reason_for(PURPOSE_BACKSTOP)

    def _watch(
        self, holding: _Holding, t: float, last: float, quote: _SellQuote, capacity: list[float]
    ) -> None:
        if holding.exit is None and self.flattening:
            self._start_exit(holding, PURPOSE_EOD)
        if holding.exit is None:
            for order in (holding.target, holding.backstop):
                if order is None:
                    continue
                if order.order_type == "STP" and not order.triggered:
                    order.triggered = is_triggered(order, last)
                price = fill_price(order, quote, MIN_TICK, self.config.slippage_ticks)
                order.resting = True
                if price is not None and capacity[0] >= 1:
                    self._sell(holding, order, price, t, capacity)
                    # OCA (ocaType 1): a fill of one cancels the other.
                    holding.target = order if order is holding.target else None
                    holding.backstop = order if order is holding.backstop else None
                    if holding.quantity <= 1e-9:
                        return
            self.exits.on_quote(Quote(holding.symbol, last, quote.bid, quote.ask, t, 1), t)
            action = self.exits.exit_due(holding.symbol, t, market_open=True)
            if action is None:
                return
            self._start_exit(holding, action.purpose)
        assert holding.exit is not None
        price = fill_price(holding.exit, quote, MIN_TICK, self.config.slippage_ticks)
        if price is not None and capacity[0] >= 1:
            self._sell(holding, holding.exit, price, t, capacity)

    def _start_exit(self, holding: _Holding, purpose: str) -> None:
        """Exit through the market (the exit manager moves its STP through it): the rest of
        the protective set is cancelled."""
        holding.target = holding.backstop = None
        if holding.symbol in self.entries:  # what is still to buy is not bought any more
            self._cancel_entry(holding.symbol)
        holding.exit = _order(holding.symbol, "SELL", holding.quantity, "MKT",
                              self.ledger.ref(holding.symbol))  # fmt: skip
        holding.exit_purpose = purpose
        self.exits[holding.symbol].busy = True  # an exit works on it: no second one
        self.ledger.reasons_by_ref[holding.exit.order_ref] = exit_reason_for(purpose)

    def _sell(
        self, holding: _Holding, order: SimOrder, price: float, t: float, capacity: list[float]
    ) -> None:
        qty = min(order.remaining, holding.quantity, capacity[0])
        if qty <= 1e-9:
            return
        capacity[0] -= qty
        entry_price = holding.entry_price
        self.ledger.fill(order, qty, price, t)
        holding.cost -= qty * entry_price
        holding.quantity -= qty
        if holding.quantity <= 1e-9:
            self._closed(holding)

    def _closed(self, holding: _Holding) -> None:
        del self.holdings[holding.symbol]
        self.exits.closed(holding.symbol)
        self.exits[holding.symbol].busy = False
        pnl = self.ledger.symbol_net(holding.symbol)
        pnl -= sum(c.pnl or 0.0 for c in self.closed if c.symbol == holding.symbol)
        self.closed.append(ClosedPosition(holding.symbol, pnl, AGENT))

    def _close_out(self) -> None:
        """The day ends flat: what the fill bars could not sell (no trades left in the
        data) is sold at the last price's bid when the flatten began, reason EOD."""
        when = self.flatten_from if self.flatten_from is not None else self.close_epoch - 1
        for holding in list(self.holdings.values()):
            if holding.exit is None:
                self._start_exit(holding, PURPOSE_EOD)
            assert holding.exit is not None
            last = self.last_price.get(holding.symbol, holding.entry_price)
            quote = _SellQuote(last, self.spread[holding.symbol])
            price = fill_price(holding.exit, quote, MIN_TICK, self.config.slippage_ticks)
            self._sell(holding, holding.exit, price or quote.bid, when, [math.inf])
        self.entries.clear()  # DAY orders expire at the close

    def _result(self) -> DayResult:
        ledger = self.ledger
        trips, still_open = round_trips_from_fills(ledger.fills, ledger.reasons_by_ref)
        date_text = self.day.trading_date.isoformat()
        report = DayReport(date_text, trips, still_open, len(ledger.fills))
        rows = journal_rows(date_text, trips, ledger.purposes_by_ref, self.decisions)
        return DayResult(
            trading_date=date_text,
            report=report,
            journal=tuple(rows),
            fills=tuple(ledger.fills),
            equity_start=self.equity_start,
            equity_end=self.equity_start + ledger.net(),
            entries_sent=self.sent,
            entries_cancelled=self.cancelled,
            entry_decisions=tuple(self.decisions),
        )


def run_backtest(
    days: Iterable[TradingDay],
    config: BacktestConfig | None = None,
    *,
    on_day: Callable[[DayResult], None] | None = None,
) -> BacktestResult:
    """Run the strategy over `days` (sim.days: days_from_data / synthetic_days), in order,
    the equity carried from day to day. `on_day` is called after each day (progress,
    streaming output). Returns the BacktestResult; raises ValueError on a bad config."""
    import time as wall

    config = config or BacktestConfig()
    spent = 0.0  # the strategy's time only: building a synthetic day is not the backtest's
    equity = config.capital
    results = []
    bars = 0
    for day in days:
        started = wall.perf_counter()
        result, day_bars = _DayRun(day, config, equity).run()
        spent += wall.perf_counter() - started
        equity = result.equity_end
        bars += day_bars
        results.append(result)
        if on_day is not None:
            on_day(result)
    return BacktestResult(config, tuple(results), bars, spent)


__all__ = [
    "BacktestConfig",
    "BacktestResult",
    "DayResult",
    "run_backtest",
]
