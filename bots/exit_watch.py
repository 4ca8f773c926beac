"""The exit manager's periodic work: the stale-quote guard, the server stops' price, the
end-of-day flatten and sweep, a person's flatten requests, and the protection audit."""

from __future__ import annotations

import asyncio
import contextlib

from bots.exit_parts import ExitParts, log
from core.clock import calendar_loaded
from observability import DatabaseError
from trading.exits import exit_phase
from trading.model import PURPOSE_EOD, PURPOSE_MANUAL
from trading.phases import DayPhase

AUDIT_SECONDS = 2.0  # real seconds between protection audits (cached state, no requests)
EXIT_REQUEST_POLL_S = 0.5  # real seconds between looks for a person's flatten requests


class ExitWatch:
    """The exit manager's loop: quote faults, server stops, EOD, requests, audit."""

    def __init__(self, parts: ExitParts) -> None:
        self.parts = parts

    def phase(self) -> DayPhase:
        clock = self.parts.clock
        return exit_phase(clock.now(), clock.session(), self.parts.config)

    async def run(self) -> None:
        """Stale-quote guard, the server stops' price and the end-of-day schedule (4 checks
        per real second), and the protection audit."""
        parts = self.parts
        loop = asyncio.get_running_loop()
        next_audit = loop.time() + AUDIT_SECONDS
        next_requests = loop.time()
        while not parts.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(parts.stopping.wait(), 0.25)
            if parts.stopping.is_set():
                return
            if not calendar_loaded():
                continue  # its first load would stall this loop: positions are protected
            parts.quotes.check_faults()
            parts.protection.check_server_stops()
            await self.check_eod()
            if loop.time() >= next_requests:
                next_requests = loop.time() + EXIT_REQUEST_POLL_S
                self.take_exit_requests()
            if loop.time() >= next_audit:
                next_audit = loop.time() + AUDIT_SECONDS
                self.audit_protection()

    def take_exit_requests(self) -> None:
        """Sell the positions a person asked to flatten (the dashboard's request flags)."""
        parts = self.parts
        if not (parts.reconciled and parts.can_trade()):
            return  # the flags wait in the database until we can act on them
        try:
            requests = parts.db.take_exit_requests()
        except DatabaseError as exc:
            log.error("exit_requests_unread", error=str(exc))
            return
        for symbol, who in requests.items():
            held = parts.book[symbol].position is not None
            log.warning("exit_requested", symbol=symbol, who=who, held=held)
            if held:
                parts.tasks.spawn(parts.selling.exit_position(symbol, PURPOSE_MANUAL))

    def audit_protection(self) -> None:
        """Defence in depth for "every position protected": a long position IB reports
        (cached stream, no request) with none of our sells working and no exit or check in
        progress is checked again. Found twice in a row, it is also logged: an event was
        missed somewhere. The check itself is the normal idempotent per-symbol sync."""
        parts = self.parts
        if not (parts.reconciled and parts.can_trade()):
            parts.book.audit(set())
            return
        now = parts.clock.epoch()
        working_sells = {  # ours, or another client's we can see (it protects or exits)
            t.contract.symbol
            for t in parts.ib.openTrades()
            if t.order.action == "SELL" and not t.isDone()
        }
        found = {
            p.contract.symbol
            for p in parts.ib.positions()
            if parts.broker.is_ours(p)
            and p.position > 0
            and not parts.book[p.contract.symbol].busy
            and p.contract.symbol not in parts.tasks.dirty
            and parts.book[p.contract.symbol].cooldown_until <= now
            and not parts.fills.is_blocked(p.contract.symbol)  # a human's call now; alerted
        } - working_sells
        repeated = set(parts.book.audit(found))
        for symbol in sorted(found):
            if symbol in repeated:
                log.warning("protection_audit_found_gap", symbol=symbol,
                            action="checking it again now")  # fmt: skip
            parts.tasks.schedule(symbol)

    async def check_eod(self) -> None:
        parts = self.parts
        if not parts.reconciled:
            return
        phase = self.phase()
        if parts.book.eod_due(phase, parts.clock.today_str()):
            await self.flatten_all(phase)

    async def flatten_all(self, phase: DayPhase) -> bool:
        """EOD: cancel our exits (confirmed), sell every broker position, verify flat."""
        parts = self.parts
        positions = await parts.broker.positions()
        if positions is None:
            parts.book.eod_done = None  # try again on the next check
            return False
        longs = [s for s, p in positions.items() if p.quantity > 0]
        session = parts.clock.session()
        log.warning("eod_flatten", phase=phase.value, symbols=longs,
                    close=str(session.close if session else None))  # fmt: skip
        await asyncio.gather(*(parts.selling.exit_position(s, PURPOSE_EOD) for s in longs))
        after = await parts.broker.positions()
        left = {s: p.quantity for s, p in (after or {}).items() if p.quantity}
        parts.book.eod_verified[phase] = after is not None and not left
        if parts.book.eod_verified[phase]:
            log.info("eod_flat_verified", phase=phase.value)
            return True
        log.critical("eod_not_flat", phase=phase.value, positions=left or "unknown")
        return False
