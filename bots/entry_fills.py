"""The day trader's fills: execDetails is the truth, keyed by execId.

Each new execution of our entry BUYs becomes a trade row and an active position with its
target and stop (trading.exits.target_and_stop); the exit manager (another process) protects it. Commissions
are attached to their fill whichever arrives first.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from bots.day_feeds import Spawn
from core.clock import NEW_YORK, MarketClock
from core.logs import get_logger
from core.money import average_price
from core.settings import Settings
from ib.fills import follow_fills
from ib.positions import fresh_positions
from ib.session import BrokerSession
from observability import FILLED, IntentTransitionError, TradingDatabase
from trading.exits import target_and_stop
from trading.model import DAY_TRADER, FillRecord

AGENT = DAY_TRADER
log = get_logger(AGENT)


class EntryFills:
    """Records our entries' executions and commissions and opens or grows their positions."""

    def __init__(
        self,
        settings: Settings,
        session: BrokerSession,
        db: TradingDatabase,
        clock: MarketClock,
        spawn: Spawn,
    ) -> None:
        self.settings = settings
        self.session = session
        self.ib = session.ib
        self.db = db
        self.clock = clock
        self.spawn = spawn
        self._positions_lock = asyncio.Lock()
        follow_fills(self.ib, self.clock.now, self.apply_fill, self._on_commission_report)

    def apply_fill(self, done: FillRecord) -> bool:
        """Apply one execution of our entry BUYs (keyed by execId: twice is harmless).

        Returns True when it was new: a trade row, and the position opened at this first
        fill (the exit manager adopts unknown broker positions after a short grace) or grown,
        with target and stop from the average fill price. A symbol the exit manager already
        closed today gets a row again only for shares the broker still holds.
        """
        ref = done.order_ref
        if not ref:
            return False
        intent = self.db.get_order_intent(ref)
        if intent is None or intent["agent"] != AGENT or intent["side"] != "BUY":
            return False
        when = done.time  # the exchange's execution time (fill_of)
        new = self.db.record_fill(done, AGENT)
        if not new:
            return False
        symbol = intent["symbol"]
        quantity, average = self._filled_so_far(ref, when)
        if self.db.get_active_position(symbol) is None and self.db.was_closed_today(symbol):
            self.spawn(self._open_after_close(symbol, ref, when))
        else:
            self._open_or_grow(symbol, ref, quantity, average, when)
        if quantity >= float(intent["quantity"]):
            # Already final (e.g. FILLED from orderStatus first) is fine.
            with contextlib.suppress(IntentTransitionError):
                self.db.update_order_intent(
                    ref, FILLED, filled_quantity=quantity, avg_fill_price=average
                )
        log.info(
            "entry_filled",
            symbol=symbol,
            order_ref=ref,
            exec_id=done.exec_id,
            shares=done.shares,
            price=done.price,
            position=quantity,
            avg_price=round(average, 4),
        )
        return True

    def _on_commission_report(self, done: FillRecord) -> None:
        if done.order_ref.startswith(f"{AGENT}-") and done.commission is not None:
            self.db.record_commission(done.exec_id, done.commission)  # first: the store keeps it

    def _filled_so_far(self, ref: str, when: datetime) -> tuple[float, float]:
        """Shares filled for one entry and their average price, from the recorded fills."""
        day = when.astimezone(NEW_YORK).date().isoformat()
        own = [t for t in self.db.get_trades_by_date(day) if t["order_ref"] == ref]
        quantity = sum(float(t["quantity"]) for t in own)
        average = average_price((t["quantity"], t["price"]) for t in own)
        assert average is not None  # called after recording a fill of this entry
        return quantity, average

    def _open_or_grow(
        self, symbol: str, ref: str, quantity: float, average: float, when: datetime
    ) -> None:
        """Write the active position (first fill) or update it (later fills), with target and
        stop from the average price."""
        target, stop = target_and_stop(
            average, self.settings.profit_target_pct, self.settings.stop_loss_pct
        )
        if not self.db.add_active_position(
            symbol,
            int(quantity),
            average,
            target,
            stop,
            agent=AGENT,
            order_ref=ref,
            entry_time=when.astimezone(NEW_YORK).isoformat(timespec="seconds"),
        ):
            self.db.update_active_position(
                symbol,
                quantity=int(quantity),
                entry_price=average,
                profit_target_price=target,
                stop_loss_price=stop,
            )
        log.info(
            "position_written",
            symbol=symbol,
            order_ref=ref,
            quantity=int(quantity),
            avg_price=round(average, 4),
            target=target,
            stop=stop,
        )

    async def _open_after_close(self, symbol: str, ref: str, when: datetime) -> None:
        """A fill for a symbol the exit manager closed today: a row only for shares the broker
        still holds. Asked fresh (reqPositions): the position stream lags the fill."""
        try:
            async with self._positions_lock:  # ib_async keeps one positions request at a time
                positions = await fresh_positions(self.ib, self.session.account, 15.0)
        except (TimeoutError, ConnectionError, OSError) as exc:
            # Unknown is not flat; without a row the exit manager adopts what is still held.
            log.warning(
                "fill_after_close_unchecked",
                symbol=symbol,
                order_ref=ref,
                error=repr(exc),
                action="no row written; the exit manager adopts shares the broker holds",
            )
            return
        held = sum(p.quantity for p in positions if p.symbol == symbol)
        quantity, average = self._filled_so_far(ref, when)
        log.warning(
            "fill_after_close",
            symbol=symbol,
            order_ref=ref,
            filled=quantity,
            broker_position=held,
            action="active row for the shares still held" if held > 0 else "no row: flat",
        )
        if held > 0 and self.db.get_active_position(symbol) is None:
            self._open_or_grow(symbol, ref, min(quantity, held), average, when)
