"""What the exit manager's pieces share: the IB session, the database, the rules and their
per-symbol state (trading.exits.ExitBook), and each other.

`exit_manager.ExitManager` builds one ExitParts, then the pieces (broker queries, tasks,
fills, protection, selling, reconciliation, quotes, the watch loop) that each take it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.clock import MarketClock
from core.logs import get_logger
from ib.intents import IntentOrders
from ib.session import BrokerSession, IBConnection
from observability import TradingDatabase
from trading.exits import ExitBook, ExitConfig
from trading.model import EXIT_MANAGER

if TYPE_CHECKING:
    from bots.exit_broker import ExitBroker
    from bots.exit_fills import ExitFills
    from bots.exit_protection import Protection
    from bots.exit_quotes import QuoteWatch
    from bots.exit_reconcile import Reconciler
    from bots.exit_selling import Selling
    from bots.exit_tasks import SymbolTasks
    from bots.exit_watch import ExitWatch

AGENT = EXIT_MANAGER
BROKER_TIMEOUT_S = 5.0  # real seconds for one IB round trip (cancel confirm, positions)
log = get_logger(AGENT)


class ReconcileError(RuntimeError):
    """Reconciliation could not complete; no orders until it does. The message says why."""


def blocked_flag(symbol: str) -> str:
    """The database flag of a symbol given up after repeated rejects (cleared by hand)."""
    return f"exit_blocked:{symbol}"


@dataclass
class ExitParts:
    """The shared parts; `stopping` set means no new orders, `beat` writes the heartbeat."""

    session: BrokerSession
    db: TradingDatabase
    config: ExitConfig
    clock: MarketClock
    orders: IntentOrders
    book: ExitBook
    stream_quotes: bool = True
    reconciled: bool = False
    reconciling: bool = False
    state: str = "CONNECTING"  # the heartbeat state while not reconciled
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Writes the heartbeat now (a state change others must see at once); set by the manager.
    beat: Callable[..., None] = lambda *_: None
    # The pieces, set once by ExitManager.__init__.
    broker: ExitBroker = field(init=False)
    tasks: SymbolTasks = field(init=False)
    fills: ExitFills = field(init=False)
    protection: Protection = field(init=False)
    selling: Selling = field(init=False)
    reconciler: Reconciler = field(init=False)
    quotes: QuoteWatch = field(init=False)
    watch: ExitWatch = field(init=False)

    @property
    def ib(self) -> IBConnection:
        return self.session.ib

    @property
    def client_id(self) -> int:
        return self.session.client_id

    def can_trade(self) -> bool:
        """Orders only after reconciliation, while connected and not in a 1100 outage."""
        return (
            (self.reconciled or self.reconciling)
            and self.ib.isConnected()
            and not self.session.health.data_lost
            and not self.stopping.is_set()
        )
