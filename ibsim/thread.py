"""GatewayThread: the simulated gateway on its own event loop in a background thread.

For synchronous code (tests, scripts): ib_async's sync API runs its own loop, so the gateway
must not share it. Calls through `gw.faults`, `gw.account` and `gw.call` run on the gateway's
loop and return their result (or raise its exception) in the caller's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ibsim.config import GatewayConfig
from ibsim.server import SimulatedGateway

T = TypeVar("T")
_CALL_TIMEOUT_S = 30.0


class _OnLoop:
    """Proxy whose method calls run on the gateway loop (thread-safe facade)."""

    def __init__(self, owner: GatewayThread, target: object) -> None:
        self._owner = owner
        self._target = target

    def __getattr__(self, name: str) -> Callable[..., Any]:
        attr = getattr(self._target, name)
        if not callable(attr):
            return self._owner.call(lambda: getattr(self._target, name))
        return lambda *args, **kwargs: self._owner.call(attr, *args, **kwargs)


class GatewayThread:
    """`with GatewayThread(GatewayConfig(port=0)) as gw: IB().connect(port=gw.port, ...)`."""

    def __init__(self, config: GatewayConfig | None = None, market: Any = None) -> None:
        self.config = config or GatewayConfig(port=0)
        self._market = market
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.gateway: SimulatedGateway | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> GatewayThread:
        """Start and wait until the port is listening. Raises what the gateway raised."""
        # Build on the caller's thread so configuration errors surface here.
        self.gateway = SimulatedGateway(self.config, self._market)
        self._thread = threading.Thread(target=self._main, name="ibsim-gateway", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        gateway = self.gateway
        assert gateway is not None
        try:
            loop.run_until_complete(gateway.start())
        except BaseException as exc:  # report to start(), then clean up
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(gateway.stop())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access -----------------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn(*args, **kwargs) on the gateway loop and return its result."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("gateway thread is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=_CALL_TIMEOUT_S)

    @property
    def port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port

    @property
    def control_port(self) -> int | None:
        assert self.gateway is not None
        return self.gateway.control_port

    @property
    def faults(self) -> Any:
        assert self.gateway is not None
        return _OnLoop(self, self.gateway.faults)

    @property
    def account(self) -> Any:
        assert self.gateway is not None
        return _OnLoop(self, self.gateway.account)

    def quote(self, symbol: str) -> Any:
        """The market's current Quote of `symbol` (read on the gateway loop)."""
        assert self.gateway is not None
        return self.call(self.gateway.market.quote, symbol.upper())

    def now(self) -> float:
        """Simulated time (unix seconds)."""
        assert self.gateway is not None
        return self.gateway.now()
