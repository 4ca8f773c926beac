"""The day trader's watchlist: which symbols it watches, from the command line or the
scanner's file, checked against the gateway (and again at 08:15, once a day)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bots.day_feeds import DayFeeds, Spawn
from core.clock import MarketClock
from core.logs import get_logger
from core.settings import Settings
from ib.market_data import StockContract, qualified_stocks
from ib.session import IBConnection
from trading.model import DAY_TRADER

AGENT = DAY_TRADER
log = get_logger(AGENT)

TICKER_VALIDATION = (8, 15)


class DayWatchlist:
    """Keeps the watched symbols in line with the watchlist (at most `max_symbols`: IB's
    market-data lines are limited; the best-ranked are kept)."""

    def __init__(
        self,
        settings: Settings,
        ib: IBConnection,
        clock: MarketClock,
        feeds: DayFeeds,
        spawn: Spawn,
        stop_event: asyncio.Event,
        *,
        symbols: Sequence[str] | None,
        max_symbols: int,
        refresh_s: float,
    ) -> None:
        self.settings = settings
        self.ib = ib
        self.clock = clock
        self.feeds = feeds
        self.spawn = spawn
        self.stop_event = stop_event
        self.cli_symbols = list(symbols) if symbols else None
        self.max_symbols = max_symbols
        self.refresh_s = refresh_s  # market seconds between reads of the watchlist
        self.rejected_symbols: set[str] = set()
        self._store: Any = None
        self._source = "none"
        self._basis = "none"  # what the scanner scored on (previous_day on free plans)
        self._validated_day: str | None = None

    async def refresh(self) -> None:
        """Read the watchlist; watch its new symbols, drop the ones that left it."""
        symbols, source = self._symbols()
        if symbols is None:
            if self._source != "none":
                return  # keep what we have
            self._source = "missing"
            log.error(
                "no_watchlist",
                path=str(self.settings.watchlist_path),
                action="pass --symbols A,B,C, set MASSIVE_API_KEY, or write the watchlist file",
            )
            return
        symbols = [s for s in symbols if s not in self.rejected_symbols][: self.max_symbols]
        if source != self._source or set(symbols) != set(self.feeds.symbols()):
            log.info("watchlist", source=source, basis=self._basis, symbols=symbols)
        self._source = source
        for symbol in [s for s in self.feeds.symbols() if s not in symbols]:
            self.feeds.drop(symbol, "left the watchlist")
        new = [s for s in symbols if s not in self.feeds]
        if new:
            self.feeds.add(await self.qualify(new))

    def _symbols(self) -> tuple[list[str] | None, str]:
        if self.cli_symbols:
            return list(self.cli_symbols), "cli"
        from scanner_polygon import WatchlistStore

        if self._store is None:
            self._store = WatchlistStore(self.settings.watchlist_path)
            if self.settings.massive_api_key:
                self.spawn(self._run_scanner())
        watchlist = self._store.load()
        if watchlist is None:
            return None, "none"
        self._basis = watchlist.basis
        return watchlist.symbols, watchlist.source

    async def _run_scanner(self) -> None:
        from scanner_polygon import MassiveScanner, run_forever

        scanner = MassiveScanner.from_settings(self.settings, clock=self.clock)
        await run_forever(
            scanner,
            self.settings.watchlist_path,
            interval_s=self.refresh_s,
            clock=self.clock,
            stop=self.stop_event,
        )

    async def qualify(self, symbols: Sequence[str]) -> list[StockContract]:
        """Contracts the gateway knows; unknown symbols are dropped with a log line."""
        known: list[StockContract] = []
        for symbol, contract in await qualified_stocks(self.ib, symbols, 30.0):
            if contract is None:
                self.rejected_symbols.add(symbol)
                log.warning("ticker_unknown", symbol=symbol, action="dropped from the watchlist")
            else:
                known.append(contract)
        return known

    async def validate_tickers_if_due(self, now: datetime) -> None:
        """At 08:15 re-check every watchlist ticker against the gateway (once a day)."""
        today = now.date().isoformat()
        if self._validated_day == today or (now.hour, now.minute) < TICKER_VALIDATION:
            return
        self._validated_day = today
        known = {c.symbol for c in await self.qualify(self.feeds.symbols())}
        for symbol in [s for s in self.feeds.symbols() if s not in known]:
            self.feeds.drop(symbol, "unknown to the gateway")
        log.info("tickers_validated", symbols=len(known))
