"""SimulatedGateway: the listening socket, the client sessions, routing, and the engine loop."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from datetime import datetime
from functools import lru_cache

from core.clock import NEW_YORK, MarketClock, SimulatedTimeSource, write_sim_clock_file
from ibsim import handlers
from ibsim import messages as msg
from ibsim import requests as rq
from ibsim.account import Account
from ibsim.config import ConfigError, GatewayConfig
from ibsim.engine import EngineOptions, OrderEngine, TradingHours
from ibsim.faults import Faults, MutedOrders
from ibsim.marketdata import Hours, MarketData
from ibsim.session import ClientSession
from ibsim.state import AccountView

log = logging.getLogger("ibsim.server")
HOST = "127.0.0.1"  # never expose a fake broker beyond this machine


@lru_cache(maxsize=4)
def _pristine_market(market_config):  # type: ignore[no-untyped-def]
    from ibsim.market import Market

    return Market(market_config)


def build_market(config: GatewayConfig):  # type: ignore[no-untyped-def]
    """A fresh Market for `config` (a copy of a cached one: building takes seconds).
    Raises ValueError (a one-line message) for a bad replay or market setting."""
    from ibsim.market import MarketConfig

    names = tuple(n.upper() for n in config.symbol_names) if config.symbol_names else None
    market_config = MarketConfig(
        trading_date=config.resolved_date(),
        symbols=config.symbols,
        symbol_names=names,
        seed=config.seed,
        replay_path=config.replay_path,
        spread=config.spread,
        bar_seconds=config.bar_seconds,
    )
    return copy.deepcopy(_pristine_market(market_config))


class SimulatedGateway:
    """An IB Gateway look-alike on 127.0.0.1. Use from one event loop: `await start()`/`stop()`."""

    def __init__(self, config: GatewayConfig, market=None) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.trading_date = config.resolved_date()
        self.market = market if market is not None else build_market(config)
        self.by_con_id = {spec.con_id: spec for spec in self.market.symbols.values()}
        self.clock = SimulatedTimeSource.starting_at(config.start_datetime(), config.speed)
        session = MarketClock().session(self.trading_date)
        if session is None:
            raise ConfigError(f"{self.trading_date} is not a trading day")
        day = datetime.combine(self.trading_date, datetime.min.time(), NEW_YORK)
        self.hours = TradingHours(
            pre_open=day.replace(hour=4).timestamp(),
            open=session.open.timestamp(),
            close=session.close.timestamp(),
            post_close=day.replace(hour=20).timestamp(),
        )
        self.ledger = Account(config.account, config.initial_cash)
        options = EngineOptions(
            account_id=config.account,
            no_shorting=config.no_shorting,
            check_buying_power=config.check_buying_power,
            commission_per_share=config.commission_per_share,
            commission_min=config.commission_min,
            slippage_ticks=config.slippage_ticks,
            partial_fills=config.partial_fills,
        )
        self.engine = OrderEngine(
            options, self.ledger, self.market, self.market.symbols, self.hours, self,
            first_order_id=config.first_order_id,
        )  # fmt: skip
        self.marketdata = MarketData(
            self.market,
            self.market.symbols,
            Hours(self.hours.open, self.hours.close),
            subscribed=config.market_data_subscribed,
            pacing=config.pacing,
            delay_s=config.delayed_data_lag_s,
        )
        self.sessions: set[ClientSession] = set()
        self.by_client: dict[int, ClientSession] = {}
        self.silent = False
        self.silent_after_order: set[int] = set()  # fault: client ids to hang after an order
        self.mute_next_order: set[int] = set()  # fault: client ids whose next order goes unheard
        self.muted_orders = MutedOrders()
        self.port = config.port
        self.control_port: int | None = None
        self.faults = Faults(self)
        self.account = AccountView(self)
        self.steps = 0
        self._server: asyncio.AbstractServer | None = None
        self._control = None
        self._loop_task: asyncio.Task[None] | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self._reopen_task: asyncio.Task[None] | None = None
        self._last_step_time = 0.0
        self._last_refresh = 0.0

    # -- time -----------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.epoch()

    def market_time(self) -> float:
        """Simulated now, frozen at 20:00 (the end of the simulated day)."""
        return min(self.clock.epoch(), self.hours.post_close)

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        await self._listen()
        if self.config.clock_file:
            write_sim_clock_file(self.config.clock_file, self.clock)
        self._last_step_time = self.market_time()
        self.step()
        self._loop_task = asyncio.create_task(self._run(), name="ibsim-engine")
        if self.config.control_port is not None:
            from ibsim.control import ControlServer

            self._control = ControlServer(self)
            self.control_port = await self._control.start(self.config.control_port)
        log.info(
            "simulated gateway on %s:%s account %s date %s speed %g",
            HOST, self.port, self.config.account, self.trading_date, self.config.speed,
        )  # fmt: skip

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientSession(self), HOST, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
        if self._reopen_task is not None and not self._reopen_task.done():
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen_task
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._control is not None:
            await self._control.stop()
            self._control = None
        await self._close_listener()
        for s in list(self.sessions):
            s.close(abort=True)
        await asyncio.sleep(0)  # let transports run connection_lost

    async def _close_listener(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    def restart(self, down_seconds: float) -> None:
        """IB's nightly reset: drop everyone, refuse connections, then come back."""
        log.warning("restart: down for %.1f s", down_seconds)
        if self._server is not None:
            self._server.close()
            self._server = None
        for s in list(self.sessions):
            s.close(abort=True)
        loop = asyncio.get_running_loop()
        self._reopen = loop.call_later(down_seconds, self._start_reopen)

    def _start_reopen(self) -> None:
        self._reopen_task = asyncio.create_task(self._reopen_listener(), name="ibsim-reopen")

    async def _reopen_listener(self) -> None:
        try:
            await self._listen()
            log.warning("restart: accepting connections again on port %s", self.port)
        except OSError:
            log.exception("restart: cannot listen on port %s again", self.port)

    # -- engine loop -------------------------------------------------------------------
    async def _run(self) -> None:
        interval = 1.0 / self.config.steps_per_second
        next_at = time.monotonic()
        while True:
            try:
                self.step()
            except Exception:
                log.exception("engine step failed")
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < -interval:  # fell behind: do not try to catch up in a burst
                next_at = time.monotonic()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    def step(self) -> None:
        """Advance the market to now, stream it, match orders, expire DAY orders, flush.

        One step crosses speed / steps_per_second simulated seconds (15 at 300x). Every
        second crossed is matched in order for the symbols with working orders or a position,
        and streamed for them, so stops and limits see the whole 1-s path whatever the speed;
        the other symbols stream their quote at the step's end.
        """
        now = self.market_time()
        for second, path in self.market.seconds_until(self._symbols_on_the_path(), now):
            self.engine.path_quotes.update((quote.symbol, quote) for quote in path)
            self.apply_quotes(path, second)
        self.engine.path_quotes.clear()
        quotes = self.market.advance(now)
        self.apply_quotes(quotes, now)
        self.marketdata.on_time(self._last_step_time, now)
        self.marketdata.on_delayed(now)
        self._last_step_time = now
        self.engine.expire(now)
        if now - self._last_refresh >= self.config.portfolio_refresh_s:
            self._last_refresh = now
            self._refresh_portfolio()
        self.steps += 1
        self.flush_all()

    def _symbols_on_the_path(self) -> list[str]:
        """Symbols whose every second matters: working orders, or shares held (exit stops)."""
        held = {s for s, row in self.ledger.positions.items() if row.quantity}
        working = {s for s, book in self.engine.working.items() if book}
        return sorted(held | working)

    def apply_quotes(self, quotes: list, now: float) -> None:
        self.marketdata.on_quotes(quotes)
        for quote in quotes:
            self.engine.on_quote(quote, now)

    def _refresh_portfolio(self) -> None:
        """IB refreshes portfolio prices and account values only every few minutes."""
        for data in self.engine.portfolio_messages():
            self.to_account_subscribers(data)
        for key, value in self.engine.account_values():
            currency = "" if key == "AccountType" else "USD"
            self.to_account_subscribers(
                msg.account_value(key, value, currency, self.config.account)
            )

    # -- sessions and routing ---------------------------------------------------------
    def handle(self, session: ClientSession, request: rq.Request) -> None:
        handler = handlers.HANDLERS.get(request.msg_id)
        if handler is None:
            raise rq.RequestError(
                -1, 321, f"Error validating request: message {request.msg_id} not served"
            )
        handler(self, session, request)

    def on_session_closed(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        if session.client_id is not None and self.by_client.get(session.client_id) is session:
            del self.by_client[session.client_id]
            log.info("client %s disconnected", session.client_id)
        self.marketdata.drop_session(session)

    def flush_all(self) -> None:
        for s in self.sessions:
            if s.out:
                s.flush()

    def to_order_owner(self, client_id: int, data: bytes) -> None:
        owner = self.by_client.get(client_id)
        muted = bool(self.muted_orders) and self.muted_orders.drops(client_id, data)
        if owner is not None and owner.receiving and not muted:
            owner.push(data)
        master = self.config.master_client_id
        if master is not None and master != client_id:
            other = self.by_client.get(master)
            if other is not None and other.receiving:
                other.push(data)

    def to_position_subscribers(self, data: bytes) -> None:
        for s in self.sessions:
            if s.positions_sub and s.receiving:
                s.push(data)

    def to_account_subscribers(self, data: bytes) -> None:
        for s in self.sessions:
            if s.account_sub and s.receiving:
                s.push(data)
