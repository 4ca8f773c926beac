"""Streamed quotes at IB: one reqMktData subscription per symbol, its ticks handed on as the
core's Quote records (stamped by `ib.convert.quote`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from ib_async import IB, Contract, Ticker

from ib import convert
from trading.model import Quote


class QuoteStream:
    """The subscriptions of one program; each tick of a subscribed symbol goes to
    `on_quote(quote, now)` with `now` from `clock` (the market clock's epoch seconds)."""

    def __init__(
        self, ib: IB, on_quote: Callable[[Quote, float], None], clock: Callable[[], float]
    ) -> None:
        self._ib = ib
        self._on_quote = on_quote
        self._clock = clock
        self._tickers: dict[str, Ticker] = {}
        ib.pendingTickersEvent += self._on_tickers

    def symbols(self) -> set[str]:
        """The symbols subscribed now."""
        return set(self._tickers)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._tickers

    def subscribe(self, symbol: str, contract: Contract) -> None:
        """Stream `contract`'s quotes (once: a subscribed symbol is left as it is)."""
        if symbol not in self._tickers:
            self._tickers[symbol] = self._ib.reqMktData(contract, "", False, False)

    def cancel(self, symbol: str) -> None:
        """Stop streaming `symbol`; on a dead socket there is nothing to cancel at IB."""
        ticker = self._tickers.pop(symbol, None)
        if ticker is not None and ticker.contract is not None and self._ib.isConnected():
            with contextlib.suppress(ConnectionError, OSError):
                self._ib.cancelMktData(ticker.contract)

    def clear(self) -> None:
        """Disconnected: ib_async dropped every subscription with the connection."""
        self._tickers.clear()

    def _on_tickers(self, tickers: Iterable[Ticker]) -> None:
        now = self._clock()
        for ticker in tickers:
            if ticker.contract is None:
                continue
            if self._tickers.get(ticker.contract.symbol) is not ticker:
                continue  # a subscription cancelled since, or another program's
            self._on_quote(convert.quote(ticker, now), now)
