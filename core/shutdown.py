"""Clean stops on Ctrl+C / termination for the asyncio programs (bots and the simulator)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> list[int]:
    """Make Ctrl+C and termination call `stop` on the loop's thread; returns the signals.

    POSIX: loop.add_signal_handler for SIGINT and SIGTERM. Where the loop cannot (Windows'
    proactor loop raises NotImplementedError), signal.signal handlers for SIGINT and
    SIGBREAK (Ctrl+Break, what a console close sends) schedule the same stop thread-safely,
    so a stop never lands as a KeyboardInterrupt in the middle of an order.
    """
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        return [signal.SIGINT, signal.SIGTERM]
    except (NotImplementedError, RuntimeError):
        pass

    def on_signal(_signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(stop)

    handled: list[int] = []
    for name in ("SIGINT", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, on_signal)
            handled.append(sig)
    return handled
