"""The day trader's entries: from an enter decision to a marketable limit BUY, watched until done.

Size from NetLiquidation x allocation / max positions (trading.entries.plan_entry), an order
intent with a unique orderRef written first (guard_entry: no symbol twice, even across
processes; written off the event loop, which goes on reading IB), then a marketable DAY limit
BUY, sent only if the connection is still ready, the decision fresh and the exit manager
alive; an entry not filled within `entry_timeout` market seconds is cancelled (confirmed) and
not chased; after a timeout or reconnect an order is looked up by orderRef, never re-sent
(failure modes 1, 11, 13).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ib_async import OrderStatus, Trade

from bots.day_book import DayBook
from bots.day_feeds import DayFeeds
from core.clock import MarketClock
from core.logs import get_logger
from core.settings import Settings
from ib.convert import entry_order
from ib.fills import fills_of
from ib.intents import IntentOrders, LookupStatus, cancel_came_too_late
from ib.session import BrokerSession
from observability import CANCELLED, IntentTransitionError, ReentryBlocked, TradingDatabase
from trading.entries import ENTRY_TIMEOUT_S, EntryCore, EntryDecision
from trading.model import (
    DAY_TRADER,
    DECISION_STALE,
    EXIT_MANAGER_NOT_READY,
    NOT_CONNECTED,
    FillRecord,
)

AGENT = DAY_TRADER
# A decision older than this (market seconds, a third of a bar) when its intent is on disk is
# not sent: the price it was made on is gone.
STALE_DECISION_S = 10.0
log = get_logger(AGENT)


@dataclass(frozen=True)
class EntryOptions:
    """How entries are placed and watched; times are market seconds unless they say real."""

    entry_timeout_s: float = ENTRY_TIMEOUT_S  # market seconds
    ack_timeout_real_s: float = 10.0  # no answer from IB for this long: look the order up
    llm_budget_real_s: float = 8.0


@dataclass
class WorkingEntry:
    """An entry BUY this process sent and is watching until it is done."""

    order_ref: str
    symbol: str
    quantity: int
    limit: float
    placed_at: float  # market epoch
    placed_real: float  # monotonic, for the ack timeout
    trade: Trade | None
    cancel_sent_real: float | None = None
    lookups: int = 0


async def llm_approves(reviewer: Any, decision: EntryDecision, budget_real_s: float) -> bool:
    """The LLM's second opinion on an enter decision, logged either way (the trade journal
    shows each entry's verdict); True when it approves or cannot be asked in time."""
    from llm_review import Candidate

    v = decision.values
    candidate = Candidate(
        symbol=decision.symbol,
        price=float(v["last"]),
        vwap=float(v["vwap"]) if math.isfinite(v["vwap"]) else float(v["last"]),
        rsi=float(v["rsi"]),
        atr_pct=float(v["atr_pct"]) if math.isfinite(v["atr_pct"]) else 0.0,
        gap_pct=float(v["gap_pct"]) if math.isfinite(v["gap_pct"]) else 0.0,
        volume_ratio=None,  # not known here: neither thin nor strong
        rule=decision.rule or "standard",  # type: ignore[arg-type]
    )
    try:
        opinion = await asyncio.wait_for(reviewer.review(candidate), budget_real_s + 1.0)
    except Exception as exc:  # never let the second opinion stop trading
        log.warning("llm_unavailable", symbol=decision.symbol, error=repr(exc))
        return True
    log.info(
        "entry_vetoed" if not opinion.approve else "entry_approved",
        symbol=decision.symbol,
        source=opinion.source,
        reason=opinion.reason,
    )
    return bool(opinion.approve)


class EntryOrders:
    """Enters on the core's decisions and watches each working entry until it is done."""

    def __init__(
        self,
        settings: Settings,
        options: EntryOptions,
        session: BrokerSession,
        db: TradingDatabase,
        clock: MarketClock,
        core: EntryCore,
        book: DayBook,
        feeds: DayFeeds,
        apply_fill: Callable[[FillRecord], bool],
        reviewer: Any = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.session = session
        self.ib = session.ib
        self.db = db
        self.clock = clock
        self.core = core
        self.book = book
        self.feeds = feeds
        self.apply_fill = apply_fill  # fills found by a lookup are recorded like live ones
        self.reviewer = reviewer
        self.orders = IntentOrders(self.ib, db, AGENT)
        self.working: dict[str, WorkingEntry] = {}  # orderRef -> entry
        self._placing = asyncio.Lock()  # entries are placed one at a time

    def working_symbols(self) -> frozenset[str]:
        """Symbols with an entry BUY of this process working at IB."""
        return frozenset(e.symbol for e in self.working.values())

    # -- entering -------------------------------------------------------------------------
    async def enter(self, decision: EntryDecision) -> None:
        """Enter on an enter decision (the core counts it as entering until this ends)."""
        try:
            await self._enter_once(decision)
        finally:
            self.core.entry_finished(decision.symbol)

    async def _enter_once(self, decision: EntryDecision) -> None:
        symbol = decision.symbol
        watched = self.feeds.get(symbol)
        if watched is None or not self.session.ready.is_set():
            return
        if self.reviewer is not None and not await llm_approves(
            self.reviewer, decision, self.options.llm_budget_real_s
        ):
            return
        # One entry at a time, in the order decided: each re-decides on a book that has the
        # one before it (its slot, its dollars), as the backtest takes a bar's entries in turn.
        async with self._placing:
            await self._place(decision, watched)

    async def _place(self, decision: EntryDecision, watched: Any) -> None:
        symbol = decision.symbol
        # Re-decide on the newest data: the review (or the queue) may have taken a while.
        now = self.clock.now()
        session = self.clock.session(now.date())
        book = await self.book.read_book(self.working_symbols())
        fresh = self.core.recheck(symbol, now, session, book)
        if not fresh.enter:
            log.info("entry_dropped", symbol=symbol, reason=fresh.reason)
            return
        committed = sum(e.quantity * e.limit for e in self.working.values())
        intent, limit, sizing = self.core.plan(fresh, self.book.account_funds(), committed)
        if intent is None:
            log.info("entry_too_small", symbol=symbol, limit=limit, **sizing)
            return
        quantity = intent.quantity
        order = entry_order(intent, self.session.account)
        purpose = f"entry:{fresh.rule}"
        # Decided: what follows is the guarded intent write (which may still refuse), then the send.
        log.info("entry_placing", symbol=symbol, rule=fresh.rule, quantity=quantity, limit=limit)
        decided_at = self.clock.epoch()
        try:
            await self._record(watched.line.contract, order, purpose)
            # The write ran off the loop (a locked database can hold it for seconds) while IB's
            # messages kept arriving: a 1100, a drop or a dead exit manager stops the send here.
            problem = await self._send_problem(decided_at)
            if problem is not None:
                self.orders.abandon(order.orderRef, problem)
                log.warning(
                    "entry_not_sent", symbol=symbol, order_ref=order.orderRef, reason=problem
                )
                return
            trade = self.orders.send(watched.line.contract, order, purpose=purpose)
        except ReentryBlocked as exc:  # entries halted, or another process took the slot first
            skip = fresh._replace(enter=False, rule=None, reason=exc.reason)
            log.info("entry_decision", **skip.log_fields(), refused_by="database", detail=str(exc))
            return
        self.working[order.orderRef] = WorkingEntry(
            order.orderRef, symbol, quantity, limit, self.clock.epoch(), time.monotonic(), trade
        )
        log.info(
            "entry_sent",
            symbol=symbol,
            rule=fresh.rule,
            order_ref=order.orderRef,
            quantity=quantity,
            limit=limit,
            **sizing,
        )

    async def _record(self, contract: Any, order: Any, purpose: str) -> None:
        """The entry's guarded intent write, in the worker pool: the loop keeps reading IB."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self.book.pool,
            functools.partial(
                self.orders.record,
                contract,
                order,
                purpose=purpose,
                guard_entry=True,
                max_open_positions=self.settings.max_open_positions,
            ),
        )

    async def _send_problem(self, decided_at: float) -> str | None:
        """Why a recorded entry must not be sent now, or None: the connection is not ready
        (1100, a drop), the decision is older than STALE_DECISION_S market seconds, or the
        exit manager could no longer protect the fill (read again: it may have died since)."""
        if not self.session.ready.is_set():
            return NOT_CONNECTED
        if self.clock.epoch() - decided_at > STALE_DECISION_S:
            return DECISION_STALE
        loop = asyncio.get_running_loop()
        problem = await loop.run_in_executor(self.book.pool, self.book.exit_manager_problem)
        if problem is not None:
            return EXIT_MANAGER_NOT_READY
        if not self.session.ready.is_set():  # while the exit manager was read
            return NOT_CONNECTED
        return None

    # -- after a (re)connect ----------------------------------------------------------------
    async def reconcile(self, results: dict[str, LookupStatus]) -> None:
        """After `orders.recover()`: forget entries no longer open, watch our open ones."""
        still_open = {ref for ref, status in results.items() if status is LookupStatus.OPEN}
        for ref in list(self.working):
            if ref not in still_open:
                self.working.pop(ref, None)
        for intent in self.db.get_open_intents(agent=AGENT):
            if intent["side"] != "BUY":
                continue
            found = await self.orders.lookup(intent["order_ref"])
            if found.status is LookupStatus.OPEN and found.trade is not None:
                self._track(intent, found.trade)

    def _track(self, intent: dict[str, Any], trade: Trade) -> None:
        ref = intent["order_ref"]
        entry = self.working.get(ref)
        if entry is None:
            created = datetime.fromisoformat(intent["created_at"]).timestamp()
            entry = WorkingEntry(
                ref,
                intent["symbol"],
                int(intent["quantity"]),
                float(intent["limit_price"] or 0.0),
                created,
                time.monotonic(),
                trade,
            )
            self.working[ref] = entry
        entry.trade = trade

    # -- watching ---------------------------------------------------------------------------
    async def watch(self, shutting_down: bool = False) -> None:
        """Timed check of working entries: done, stuck without an answer, or too old."""
        now = self.clock.epoch()
        real = time.monotonic()
        for entry in list(self.working.values()):
            trade = entry.trade
            # A cancel IB refused as too late says the order is done, not how: it may have
            # filled unheard (lost acks). Such an entry is looked up like an unanswered one.
            too_late = trade is not None and cancel_came_too_late(trade)
            if trade is not None and trade.isDone() and not too_late:
                self._finish(entry, trade)
                continue
            unanswered = (
                too_late
                or trade is None
                or trade.orderStatus.status in {OrderStatus.PendingSubmit, ""}
            )
            waited = real - (entry.cancel_sent_real or entry.placed_real)
            if (unanswered or entry.cancel_sent_real) and waited > self.options.ack_timeout_real_s:
                await self._look_up(entry)
                continue
            if entry.cancel_sent_real is None and (
                shutting_down or now - entry.placed_at >= self.options.entry_timeout_s
            ):
                self.send_cancel(entry, "shutdown" if shutting_down else "entry timeout, no chase")

    def send_cancel(self, entry: WorkingEntry, why: str) -> None:
        if entry.cancel_sent_real is not None or entry.trade is None:
            return
        entry.cancel_sent_real = time.monotonic()
        self.ib.cancelOrder(entry.trade.order)
        log.info("entry_cancel_sent", symbol=entry.symbol, order_ref=entry.order_ref, reason=why)

    async def cancel_all(self, wait_real_s: float) -> None:
        """Shutdown: cancel every working entry BUY and wait (up to `wait_real_s`) for IB to
        confirm; the ones unconfirmed are logged for the operator."""
        if self.ib.isConnected() and self.working:
            for entry in list(self.working.values()):
                self.send_cancel(entry, "shutdown")
            deadline = time.monotonic() + wait_real_s
            while self.working and time.monotonic() < deadline and self.ib.isConnected():
                await asyncio.sleep(0.1)
                await self.watch(shutting_down=True)
        for entry in self.working.values():
            log.error(
                "entry_cancel_unconfirmed",
                symbol=entry.symbol,
                order_ref=entry.order_ref,
                action="check the order at IB; the next start looks it up by orderRef",
            )

    async def _look_up(self, entry: WorkingEntry) -> None:
        """No answer in time: find the order by orderRef; never send it again."""
        entry.lookups += 1
        found = await self.orders.lookup(entry.order_ref)
        log.warning(
            "entry_looked_up",
            symbol=entry.symbol,
            order_ref=entry.order_ref,
            status=found.status.value,
        )
        for fill in fills_of(self.ib, found.fills, self.clock.now()):
            self.apply_fill(fill)
        if found.status is LookupStatus.UNKNOWN:  # ask again after another timeout
            if entry.cancel_sent_real is not None:
                entry.cancel_sent_real = time.monotonic()
            else:
                entry.placed_real = time.monotonic()
            return
        if found.status is LookupStatus.NOT_FOUND:
            self._mark(entry.order_ref, CANCELLED, "not at IB after timeout; not re-sent")
            self.working.pop(entry.order_ref, None)
            return
        if found.trade is not None:
            entry.trade = found.trade
            self.orders.sync_intent(found.trade)
            if found.status is LookupStatus.DONE:
                self._finish(entry, found.trade)
                return
        entry.placed_real = time.monotonic()
        if entry.cancel_sent_real is not None:  # the cancel was lost: ask again
            entry.cancel_sent_real = None
            self.send_cancel(entry, "cancel not confirmed, sent again")

    def _finish(self, entry: WorkingEntry, trade: Trade) -> None:
        self.working.pop(entry.order_ref, None)
        status = trade.orderStatus.status
        if status in {OrderStatus.Cancelled, OrderStatus.ApiCancelled}:
            why = "entry timeout: cancelled, not chased" if entry.cancel_sent_real else status
            self._mark(entry.order_ref, CANCELLED, why)
        log.info(
            "entry_done",
            symbol=entry.symbol,
            order_ref=entry.order_ref,
            status=status,
            filled=trade.orderStatus.filled,
        )

    def _mark(self, order_ref: str, state: str, note: str) -> None:
        try:
            self.db.update_order_intent(order_ref, state, note=note)
        except (IntentTransitionError, KeyError) as exc:
            log.warning("intent_mark_refused", order_ref=order_ref, error=str(exc))
