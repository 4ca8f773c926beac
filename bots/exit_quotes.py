"""The exit manager's quotes: one streamed subscription per held symbol, each tick fed to the
exit rules (bot stop, touched target), and quote faults (stale, delayed, missing) logged
when they begin and end."""

from __future__ import annotations

from bots.exit_parts import ExitParts, log
from core.clock import calendar_loaded
from ib.quotes import QuoteStream
from trading.model import Quote


class QuoteWatch:
    """Streams held symbols' quotes into the exit book and acts on its exit decisions."""

    def __init__(self, parts: ExitParts) -> None:
        self.parts = parts
        self.stream = QuoteStream(parts.ib, self.on_quote, parts.clock.epoch)

    def subscribe(self, symbol: str) -> None:
        parts = self.parts
        contract = parts.broker.contracts.get(symbol)
        if not parts.stream_quotes or symbol in self.stream or contract is None:
            return
        self.stream.subscribe(symbol, contract)

    def forget(self, symbol: str) -> None:
        """No longer held: its subscription and quote memory go."""
        self.parts.book[symbol].forget_position()
        self.stream.cancel(symbol)

    async def resubscribe(self) -> None:
        """1101 / feed back: IB dropped the market data subscriptions; request them again."""
        for symbol in sorted(self.stream.symbols()):
            self.stream.cancel(symbol)
            self.subscribe(symbol)
        log.info("market_data_resubscribed", symbols=sorted(self.stream.symbols()))

    def dropped(self) -> None:
        """Disconnected: ib_async dropped every subscription with the connection."""
        self.stream.clear()

    def on_quote(self, quote: Quote, now: float) -> None:
        parts = self.parts
        if parts.book[quote.symbol].position is None:
            return
        parts.book.on_quote(quote, now)
        self._consider_exit(quote.symbol, quote.time, now)

    def _consider_exit(self, symbol: str, quote_time: float, now: float) -> None:
        parts = self.parts
        state = parts.book[symbol]
        if state.busy or state.cooldown_until > now:
            return
        if not calendar_loaded():
            return  # a second after start: its server stop is in charge until it loads
        market_open = parts.watch.phase().regular_hours
        action = parts.book.exit_due(symbol, now, market_open=market_open)
        if action is None or not parts.reconciled or not parts.can_trade():
            return
        log.warning("exit_triggered", symbol=symbol, reason=action.reason, last=action.last,
                    trigger=action.trigger_price, quote_time=quote_time)  # fmt: skip
        state.busy = True  # before the task starts: the next tick must not start another
        parts.tasks.spawn(parts.selling.exit_position(symbol, action.purpose))

    def check_faults(self) -> None:
        """Log each held symbol's quote fault once when it begins and when it ends."""
        parts = self.parts
        if not parts.reconciled or not parts.watch.phase().regular_hours:
            return
        for symbol, fault, age in parts.book.quote_fault_changes(
            parts.clock.epoch(), self.stream.symbols()
        ):
            if fault:
                log.error("quote_fault", symbol=symbol, fault=fault, age_s=age,
                          action="server-side stop in charge; bot does not act")  # fmt: skip
            else:
                log.info("quote_ok", symbol=symbol)
