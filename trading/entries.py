"""The entry strategy: pure rules of one symbol's data, the book and the time, and the core
that runs them over a watchlist (`EntryCore`), with the book and the sizing rule.

No I/O and no clock reads: the caller passes `now`, the session and every number, so the same
code decides live, on the simulated gateway and in a replay. Every decision carries the rule
values it was taken on (`EntryDecision.values`) so a day can be analysed from the logs.

Rules (issue 6):
  standard    bar close > VWAP, RSI < 60, ATR% >= 0.3
  gap_and_go  pre-market gap >= 5% vs the previous close, RSI < 60 (VWAP not needed)
Both also need: no kill switch, an exit manager alive and reconciled, under max open positions,
daily loss limit not hit, regular hours before close - 15 min, the symbol not active / closed
today / with a working entry, live (not delayed) and fresh data, and the indicators they use
past their warm-up. An enter becomes an EnterIntent (`plan_entry`): a marketable DAY limit,
sized from net liquidation x allocation over max open positions (`size_entry`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from core.clock import NEW_YORK, Session
from core.money import entry_shares, marketable_limit_price
from trading.feed import SessionCalendar, SymbolFeed, SymbolSnapshot
from trading.indicators import BAR_SECONDS, Bar
from trading.model import (
    AFTER_ENTRY_CUTOFF,
    CLOSED_TODAY,
    DAILY_LOSS_LIMIT,
    DELAYED_DATA,
    DELAYED_DATA_TYPES,
    ENTER,
    ENTRY_WORKING,
    EXIT_MANAGER_NOT_READY,
    GAP_AND_GO,
    KILL_SWITCH,
    LIVE_DATA_TYPES,
    MARKET_CLOSED,
    MAX_OPEN_POSITIONS,
    NO_QUOTE,
    NO_SIGNAL,
    POSITION_ACTIVE,
    STALE_BARS,
    STALE_QUOTE,
    STANDARD,
    WARMING_UP,
    EnterIntent,
    Quote,
)
from trading.phases import day_phase

# Market seconds an unfilled entry may work before it is cancelled (live bots and backtest).
ENTRY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EntryConfig:
    """Thresholds of the rules; `from_settings` takes the risk limits from core.settings."""

    rsi_max: float = 60.0
    atr_pct_min: float = 0.3
    gap_min_pct: float = 5.0
    entry_cutoff_minutes: float = 15.0  # no new entries from close - this
    stale_seconds: float = 30.0  # market seconds a quote may be old
    allow_delayed_data: bool = False
    max_open_positions: int = 4
    daily_loss_limit_pct: float = 2.0  # of net liquidation
    allocation: float = 0.25  # fraction of net liquidation the entries may deploy
    max_position_usd: float | None = 25_000.0  # no entry above this many dollars
    limit_ticks: int = 2  # marketable limit = ask + this many ticks

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> EntryConfig:
        values: dict[str, Any] = {
            "rsi_max": settings.entry_rsi_max,
            "atr_pct_min": settings.entry_atr_pct_min,
            "gap_min_pct": settings.entry_gap_min_pct,
            "entry_cutoff_minutes": settings.entry_cutoff,
            "stale_seconds": settings.stale_tick_seconds,
            "allow_delayed_data": settings.allow_delayed_data,
            "max_open_positions": settings.max_open_positions,
            "daily_loss_limit_pct": settings.daily_loss_limit_pct,
            "allocation": settings.allocation,
            "max_position_usd": settings.max_position_usd,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class BookState:
    """The book as the database and the account show it, read once per analysis cycle.

    `open_positions` counts active positions plus working entry orders (each takes a slot).
    `day_pnl` is today's realised plus unrealised P&L in dollars (nan = unknown);
    `kill_switch` the reason entries are halted, or None; `exit_manager_problem` why the
    exit manager would not protect a fill now (core.heartbeats), or None.
    """

    active_symbols: frozenset[str] = frozenset()
    closed_today: frozenset[str] = frozenset()
    working_entries: frozenset[str] = frozenset()
    open_positions: int = 0
    day_pnl: float = 0.0
    net_liquidation: float = math.nan
    kill_switch: str | None = None
    exit_manager_problem: str | None = None


class EntryDecision(NamedTuple):
    """One decision: `enter` with the `rule` that fired, or not with the first failing reason."""

    symbol: str
    enter: bool
    rule: str | None
    reason: str
    values: Mapping[str, Any]

    def log_fields(self) -> dict[str, Any]:
        """The decision as flat JSON-ready fields for `log.info("entry_decision", ...)`."""
        return {
            "symbol": self.symbol,
            "decision": ENTER if self.enter else "skip",
            "rule": self.rule,
            "reason": self.reason,
            **{k: _rounded(v) for k, v in self.values.items()},
        }


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    return value


# -- time --------------------------------------------------------------------------------------


def entry_window_problem(
    now: datetime, session: Session | None, cutoff_minutes: float
) -> str | None:
    """Returns why entries are not allowed at `now` (market closed / after cutoff), or None.

    Half days work through the calendar: a 13:00 close stops entries at 12:45.
    """
    phase = day_phase(now, session, entry_cutoff_minutes=cutoff_minutes)
    if not phase.regular_hours:
        return MARKET_CLOSED
    return None if phase.entries_allowed else AFTER_ENTRY_CUTOFF


# -- risk and book -----------------------------------------------------------------------------


def risk_problem(book: BookState, config: EntryConfig) -> str | None:
    """Returns why no new entry may be opened at all (kill switch, limits), or None.

    These halt entries only; exits are the exit manager's and never pass through here.
    """
    if book.kill_switch:
        return KILL_SWITCH
    if book.exit_manager_problem:
        return EXIT_MANAGER_NOT_READY
    limit = daily_loss_limit_usd(book.net_liquidation, config.daily_loss_limit_pct)
    # Unknown P&L or net liquidation: we cannot show the limit is not hit, so no entry.
    if not math.isfinite(limit) or not math.isfinite(book.day_pnl) or book.day_pnl <= -limit:
        return DAILY_LOSS_LIMIT
    if book.open_positions >= config.max_open_positions:
        return MAX_OPEN_POSITIONS
    return None


def daily_loss_limit_usd(net_liquidation: float, limit_pct: float) -> float:
    """Returns the dollar loss that halts entries for the day (nan when net liq is unknown)."""
    if not math.isfinite(net_liquidation) or net_liquidation <= 0:
        return math.nan
    return net_liquidation * limit_pct / 100.0


def symbol_problem(symbol: str, book: BookState) -> str | None:
    """Returns why this symbol may not be entered (active, closed today, entry working)."""
    if symbol in book.active_symbols:
        return POSITION_ACTIVE
    if symbol in book.closed_today:
        return CLOSED_TODAY
    if symbol in book.working_entries:
        return ENTRY_WORKING
    return None


# -- data --------------------------------------------------------------------------------------


def quote_is_stale(quote_time: float, now_epoch: float, config: EntryConfig) -> bool:
    """True when the last tick is older than `stale_seconds` (or there was none: nan)."""
    return not now_epoch - quote_time <= config.stale_seconds


def data_problem(snap: SymbolSnapshot, now_epoch: float, config: EntryConfig) -> str | None:
    """Returns why the symbol's data may not be traded on (missing, delayed, stale), or None.

    Delayed data (types 3/4) is refused unless the user opted in; an unknown type is refused
    too. Quotes older than `stale_seconds` and bars more than one bar late are stale.
    """
    if not (snap.last > 0 and snap.ask > 0):
        return NO_QUOTE
    allowed = LIVE_DATA_TYPES | (DELAYED_DATA_TYPES if config.allow_delayed_data else frozenset())
    if snap.market_data_type not in allowed:
        return DELAYED_DATA
    if quote_is_stale(snap.quote_time, now_epoch, config):
        return STALE_QUOTE
    bar_end = snap.bar_time + BAR_SECONDS
    if not now_epoch - bar_end <= BAR_SECONDS + config.stale_seconds:
        return STALE_BARS
    return None


# -- signals -----------------------------------------------------------------------------------


def rsi_allows_entry(rsi: float, config: EntryConfig) -> bool:
    """True when RSI is below `rsi_max`; both rules need it, so a symbol whose RSI does not
    (nan while warming up) cannot enter, whatever else its data says."""
    return rsi < config.rsi_max


def standard_signal(snap: SymbolSnapshot, config: EntryConfig) -> str | None:
    """Returns why the standard rule does not fire (warming_up / no_signal), or None if it does."""
    if snap.rsi_bars > 0 or snap.atr_bars > 0 or not snap.vwap_has_volume:
        return WARMING_UP
    if (
        snap.close > snap.vwap
        and rsi_allows_entry(snap.rsi, config)
        and snap.atr_pct >= config.atr_pct_min
    ):
        return None
    return NO_SIGNAL


def gap_and_go_signal(snap: SymbolSnapshot, config: EntryConfig) -> str | None:
    """Returns why gap-and-go does not fire, or None if it does. Needs only RSI warm."""
    if not snap.gap_pct >= config.gap_min_pct:
        return NO_SIGNAL
    if snap.rsi_bars > 0:
        return WARMING_UP
    return None if rsi_allows_entry(snap.rsi, config) else NO_SIGNAL


def rule_values(snap: SymbolSnapshot) -> dict[str, Any]:
    """The numbers a decision was taken on, for the decision log."""
    return {
        "bar_time": _bar_time_text(snap.bar_time),
        "last": snap.last,
        "close": snap.close,
        "ask": snap.ask,
        "vwap": snap.vwap,
        "rsi": snap.rsi,
        "atr_pct": snap.atr_pct,
        "gap_pct": snap.gap_pct,
        "data_type": snap.market_data_type,
        "above_vwap": bool(snap.close > snap.vwap),
    }


def _bar_time_text(bar_time: float) -> str | None:
    """The start of the bar a decision read, in exchange time (None before the first bar)."""
    if not math.isfinite(bar_time):
        return None
    return datetime.fromtimestamp(bar_time, NEW_YORK).isoformat(timespec="seconds")


def evaluate_entry(
    snap: SymbolSnapshot,
    book: BookState,
    now: datetime,
    session: Session | None,
    config: EntryConfig,
) -> EntryDecision:
    """Returns the entry decision for one symbol; the reason is the first check that failed.

    Order: risk (kill switch, loss limit, slots), time window, symbol state in the book,
    data quality, then the rules (gap-and-go first: it is the more specific setup).
    """
    return _evaluate(snap, book, now.timestamp(), config, pass_problem(book, now, session, config))


def pass_problem(
    book: BookState, now: datetime, session: Session | None, config: EntryConfig
) -> str | None:
    """Returns why no symbol may be entered at `now` against `book` (risk, then the time
    window), or None: the same for every symbol of one pass."""
    return risk_problem(book, config) or entry_window_problem(
        now, session, config.entry_cutoff_minutes
    )


def _evaluate(
    snap: SymbolSnapshot,
    book: BookState,
    now_epoch: float,
    config: EntryConfig,
    shared_problem: str | None,
) -> EntryDecision:
    """evaluate_entry with the pass's risk and time-window problem already known."""
    values = rule_values(snap)
    for problem in (
        shared_problem,
        symbol_problem(snap.symbol, book),
        data_problem(snap, now_epoch, config),
    ):
        if problem is not None:
            return EntryDecision(snap.symbol, False, None, problem, values)
    gap = gap_and_go_signal(snap, config)
    if gap is None:
        return EntryDecision(snap.symbol, True, GAP_AND_GO, ENTER, values)
    standard = standard_signal(snap, config)
    if standard is None:
        return EntryDecision(snap.symbol, True, STANDARD, ENTER, values)
    reason = WARMING_UP if WARMING_UP in (gap, standard) else NO_SIGNAL
    return EntryDecision(snap.symbol, False, None, reason, values)


def allot_free_slots(
    decisions: Sequence[EntryDecision], book: BookState, config: EntryConfig
) -> list[EntryDecision]:
    """Returns `decisions` with no more enters than free position slots in `book`.

    Decisions of one pass are all taken against the same book, so without this every
    symbol that qualifies at once would be entered into one free slot. Gap-and-go setups
    get the slots first, then the given order; the enters left over become skips with
    reason max_open_positions.
    """
    free = max(config.max_open_positions - book.open_positions, 0)
    ranked = sorted(
        (i for i, d in enumerate(decisions) if d.enter),
        key=lambda i: decisions[i].rule != GAP_AND_GO,
    )
    allotted = set(ranked[:free])
    return [
        d
        if not d.enter or i in allotted
        else EntryDecision(d.symbol, False, None, MAX_OPEN_POSITIONS, d.values)
        for i, d in enumerate(decisions)
    ]


def evaluate_all(
    snaps: Sequence[SymbolSnapshot],
    book: BookState,
    now: datetime,
    session: Session | None,
    config: EntryConfig,
) -> list[EntryDecision]:
    """Returns `evaluate_entry` of each snapshot against the same book, in order (the
    risk and time-window checks, the same for all, are made once)."""
    shared_problem = pass_problem(book, now, session, config)
    now_epoch = now.timestamp()
    return [_evaluate(s, book, now_epoch, config, shared_problem) for s in snaps]


# -- the book from plain records ---------------------------------------------------------------


class HeldPosition(NamedTuple):
    """An active position as the book keeps it (who opened it, how many, at what price)."""

    symbol: str
    quantity: float
    entry_price: float
    agent: str | None = None


class ClosedPosition(NamedTuple):
    """A position closed today and its realised P&L in dollars (None = unknown, counts 0)."""

    symbol: str
    pnl: float | None = None
    agent: str | None = None


def book_from_records(
    active: Sequence[HeldPosition],
    closed_today: Sequence[ClosedPosition],
    working_entries: Iterable[str],
    prices: Mapping[str, float],
    *,
    agent: str,
    net_liquidation: float,
    kill_switch: str | None = None,
    exit_manager_problem: str | None = None,
) -> BookState:
    """Returns the BookState of these records: `working_entries` are the symbols with an
    entry order working (or being decided: each takes a slot); the day P&L counts only
    `agent`'s positions (adopted or other programs' rows are not this strategy's), realised
    plus unrealised at `prices`. A held symbol without a price makes the P&L unknown (nan).
    """
    entries = frozenset(working_entries)
    active_symbols = frozenset(p.symbol for p in active)
    realised = sum(float(c.pnl or 0.0) for c in closed_today if c.agent == agent)
    unrealised = 0.0
    for p in active:
        if p.agent == agent:
            price = prices.get(p.symbol, math.nan)
            unrealised += (price - float(p.entry_price)) * int(p.quantity)
    return BookState(
        active_symbols=active_symbols,
        closed_today=frozenset(c.symbol for c in closed_today),
        working_entries=entries,
        open_positions=len(active_symbols | entries),
        day_pnl=realised + unrealised,
        net_liquidation=net_liquidation,
        kill_switch=kill_switch,
        exit_manager_problem=exit_manager_problem,
    )


# -- sizing -------------------------------------------------------------------------------------


class AccountFunds(NamedTuple):
    """The account values sizing reads, None while unknown (unknown is not zero)."""

    net_liquidation: float | None
    available_funds: float | None = None
    buying_power: float | None = None


def size_entry(
    limit: float,
    funds: AccountFunds,
    *,
    committed_usd: float,
    allocation: float,
    max_open_positions: int,
    max_position_usd: float | None,
) -> tuple[int, dict[str, Any]]:
    """Returns the shares for one entry at `limit` and the numbers behind them (for the log).

    Capital = net liquidation x `allocation` split over `max_open_positions`
    (core.money.entry_shares), never above `max_position_usd` nor what the account can still
    pay: the lower of available funds and buying power less `committed_usd` (the entries
    already working). Unknown account values give 0 shares with the `why`.
    """
    known = [v for v in (funds.available_funds, funds.buying_power) if v is not None]
    buying_power = min(known) - committed_usd if known else None
    sizing: dict[str, Any] = {
        "net_liquidation": funds.net_liquidation,
        "buying_power": buying_power,
        "allocation": allocation,
        "max_open_positions": max_open_positions,
        "max_position_usd": max_position_usd,
    }
    if funds.net_liquidation is None or buying_power is None:
        return 0, {**sizing, "why": "account values unknown"}
    shares = entry_shares(
        limit,
        funds.net_liquidation,
        allocation,
        max_open_positions,
        buying_power=buying_power,
        max_position_usd=max_position_usd,
    )
    return shares, sizing


class EntryPlan(NamedTuple):
    """What an enter decision becomes: the order (None when not one share fits), its limit,
    and the sizing numbers behind it (for the log)."""

    intent: EnterIntent | None
    limit: float
    sizing: dict[str, Any]


def plan_entry(
    decision: EntryDecision, funds: AccountFunds, committed_usd: float, config: EntryConfig
) -> EntryPlan:
    """Returns the plan of an enter decision: a marketable DAY limit BUY `limit_ticks` above
    the decision's ask, sized by `size_entry` against `funds` less `committed_usd`."""
    limit = marketable_limit_price(decision.values["ask"], config.limit_ticks)
    shares, sizing = size_entry(
        limit,
        funds,
        committed_usd=committed_usd,
        allocation=config.allocation,
        max_open_positions=config.max_open_positions,
        max_position_usd=config.max_position_usd,
    )
    if shares < 1:
        return EntryPlan(None, limit, sizing)
    rule = decision.rule or STANDARD
    return EntryPlan(EnterIntent(decision.symbol, shares, limit, rule, ENTER), limit, sizing)


# -- the core ----------------------------------------------------------------------------------


@dataclass
class EntryCore:
    """The entry strategy over a watchlist: one SymbolFeed per symbol, the rules, and the
    memory of entries being decided or placed (`entering`: each takes a slot until the
    driver calls `entry_finished`). No I/O and no clock: every call gets its `now`.

    Driven bar by bar from a plain loop::

        core = EntryCore(config, calendar)
        for symbol, bar in bars:                 # completed 30-s bars, in time order
            core.on_bar(symbol, bar)
            core.on_quote(quote)                 # the latest quote (time: when it came)
            for decision in core.decide(now, session, book):
                if decision.enter:
                    plan = core.plan(decision, funds, committed_usd)  # plan.intent: EnterIntent
                    ...                          # send it; then core.entry_finished(symbol)
    """

    config: EntryConfig
    calendar: SessionCalendar
    feeds: dict[str, SymbolFeed] = field(default_factory=dict)
    entering: set[str] = field(default_factory=set)

    def add_symbol(self, symbol: str) -> SymbolFeed:
        """Returns the symbol's feed, a new one when it had none."""
        feed = self.feeds.get(symbol)
        if feed is None:
            feed = self.feeds[symbol] = SymbolFeed(symbol, self.calendar)
        return feed

    def drop_symbol(self, symbol: str) -> SymbolFeed | None:
        """Forgets the symbol's data (left the watchlist); returns its feed, if it had one."""
        return self.feeds.pop(symbol, None)

    def on_bar(self, symbol: str, bar: Bar) -> bool:
        """One completed 30-s bar of `symbol`; False when not newer than its last one."""
        return self.add_symbol(symbol).on_bar(bar)

    def on_quote(self, quote: Quote) -> None:
        """The latest quote of `quote.symbol`; `quote.time` is the market time it arrived."""
        self.add_symbol(quote.symbol).on_quote(quote)

    def take_due(self) -> list[SymbolFeed]:
        """Returns the feeds of the symbols with a new bar since the last call (a symbol is
        decided once per bar); their snapshots are what `evaluate_all` decides on."""
        due = [f for f in self.feeds.values() if f.new_bar]
        for feed in due:
            feed.new_bar = False
        return due

    def allot(self, decisions: Sequence[EntryDecision], book: BookState) -> list[EntryDecision]:
        """Returns `decisions` within the free slots (allot_free_slots); each enter of a
        symbol not already entering joins `entering`. The caller enters exactly those enters."""
        allotted = allot_free_slots(decisions, book, self.config)
        return [
            d._replace(enter=False, rule=None, reason=ENTRY_WORKING)
            if d.enter and d.symbol in self.entering
            else self._start(d)
            for d in allotted
        ]

    def _start(self, decision: EntryDecision) -> EntryDecision:
        if decision.enter:
            self.entering.add(decision.symbol)
        return decision

    def decide(
        self, now: datetime, session: Session | None, book: BookState, *, skips: bool = True
    ) -> list[EntryDecision]:
        """Returns the decisions for every symbol with a new bar, against `book` (symbols
        being entered count as working), within the free slots.

        `skips=False` returns the enters only (exactly the enters of `skips=True`), for a
        driver that acts on enters and logs nothing else (the backtest): a symbol that
        cannot enter gets no snapshot (no pass at all while risk or the time window forbid
        entries; not its own while it is held, closed today or entering, or while its RSI
        does not allow an entry).
        """
        book = self.with_entering(book)
        due = self.take_due()
        if not skips:
            if pass_problem(book, now, session, self.config) is not None:
                return []
            due = [f for f in due if self._may_enter(f, book)]
        decisions = evaluate_all([f.snapshot() for f in due], book, now, session, self.config)
        if skips:
            return self.allot(decisions, book)
        # The slots go to the same enters: allot ranks the enters only, in the same order.
        return [d for d in self.allot([d for d in decisions if d.enter], book) if d.enter]

    def _may_enter(self, feed: SymbolFeed, book: BookState) -> bool:
        """False when `feed`'s symbol cannot enter against `book`, whatever its quote:
        symbol_problem, or an RSI that no rule allows (evaluate_entry would skip it)."""
        last = feed.indicators.last
        return (
            last is not None
            and rsi_allows_entry(last.rsi, self.config)
            and symbol_problem(feed.symbol, book) is None
        )

    def recheck(
        self, symbol: str, now: datetime, session: Session | None, book: BookState
    ) -> EntryDecision:
        """The last look before sending `symbol`'s entry, on its newest data, against `book`
        with the other symbols being entered counted as working."""
        book = self.with_entering(book, but=symbol)
        # A symbol dropped meanwhile has no data: refused for it, and no feed made for it.
        feed = self.feeds.get(symbol) or SymbolFeed(symbol, self.calendar)
        return evaluate_entry(feed.snapshot(), book, now, session, self.config)

    def plan(self, decision: EntryDecision, funds: AccountFunds, committed_usd: float) -> EntryPlan:
        """The order an enter decision becomes (plan_entry with this core's config)."""
        return plan_entry(decision, funds, committed_usd, self.config)

    def entry_finished(self, symbol: str) -> None:
        """The entry of `symbol` was sent (now a working order in the book) or dropped."""
        self.entering.discard(symbol)

    def with_entering(self, book: BookState, but: str | None = None) -> BookState:
        """Returns `book` with the symbols being entered (except `but`) as working entries."""
        pending = frozenset(self.entering - {but}) - book.working_entries
        if not pending:
            return book
        working = book.working_entries | pending
        return BookState(
            active_symbols=book.active_symbols,
            closed_today=book.closed_today,
            working_entries=working,
            open_positions=len(book.active_symbols | working),
            day_pnl=book.day_pnl,
            net_liquidation=book.net_liquidation,
            kill_switch=book.kill_switch,
            exit_manager_problem=book.exit_manager_problem,
        )
