"""core.shutdown: Ctrl+C stops the programs cleanly on their loop, POSIX and Windows alike."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from core.shutdown import install_stop_handlers


def test_without_loop_signal_handlers_ctrl_c_still_stops_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Windows: loop.add_signal_handler raises NotImplementedError; Ctrl+C must still stop
    the program on its loop, not raise KeyboardInterrupt in the middle of an order."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()

        def no_signal_handlers(*_: object) -> None:
            raise NotImplementedError

        monkeypatch.setattr(loop, "add_signal_handler", no_signal_handlers)
        previous = signal.getsignal(signal.SIGINT)
        try:
            handled = install_stop_handlers(loop, stopped.set)
            assert signal.SIGINT in handled
            assert getattr(signal, "SIGBREAK", signal.SIGINT) in handled
            signal.raise_signal(signal.SIGINT)
            await asyncio.wait_for(stopped.wait(), 5)
        finally:
            signal.signal(signal.SIGINT, previous)

    asyncio.run(scenario())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX event loop signal handlers")
def test_posix_stop_handlers_go_through_the_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        handled = install_stop_handlers(loop, lambda: None)
        assert handled == [signal.SIGINT, signal.SIGTERM]
        assert loop.remove_signal_handler(signal.SIGINT)
        assert loop.remove_signal_handler(signal.SIGTERM)
    finally:
        loop.close()
