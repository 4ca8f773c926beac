"""Faults on demand: what real IB does to clients on a bad day, triggered by tests or `ctl`.

Every method runs on the gateway's event loop (GatewayThread and the control server marshal
calls there) and returns something JSON-serialisable.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ibsim import messages as msg

if TYPE_CHECKING:
    from ibsim.server import SimulatedGateway
    from ibsim.session import ClientSession

log = logging.getLogger("ibsim.faults")

LOST = "Connectivity between IB and Trader Workstation has been lost."
RESTORED_DATA_LOST = "Connectivity between IB and Trader Workstation has been restored - data lost."
RESTORED_DATA_KEPT = (
    "Connectivity between IB and Trader Workstation has been restored - data maintained."
)
BROKEN_2110 = "Connectivity between Trader Workstation and server is broken. It will be restored automatically."


class Faults:
    # Names the control interface may call.
    COMMANDS = frozenset(
        {
            "drop_client", "drop_all", "connectivity_lost", "connectivity_restored",
            "farm_broken", "pacing_violation_next", "reject_next_order", "stop_ticks",
            "resume_ticks", "go_silent", "resume", "restart", "set_price", "notice",
            "go_silent_after_next_order", "drop_acks_of_next_order", "hold_cancels",
            "release_cancels", "refuse_next_modification",
        }
    )  # fmt: skip

    def __init__(self, gateway: SimulatedGateway) -> None:
        self._gw = gateway

    def _targets(self, client_id: int | None) -> list[ClientSession]:
        if client_id is None:
            return [s for s in self._gw.sessions if s.client_id is not None]
        session = self._gw.by_client.get(client_id)
        if session is None:
            raise KeyError(f"client {client_id} is not connected")
        return [session]

    def drop_client(self, client_id: int) -> int:
        """Close one client's socket abruptly (its ib_async sees disconnectedEvent)."""
        for s in self._targets(client_id):
            s.close(abort=True)
        return 1

    def drop_all(self) -> int:
        sessions = list(self._gw.sessions)
        for s in sessions:
            s.close(abort=True)
        return len(sessions)

    def connectivity_lost(self, client_id: int | None = None) -> int:
        """Error 1100; the client gets nothing (ticks, fills) until connectivity_restored."""
        targets = self._targets(client_id)
        for s in targets:
            s.push(msg.error(-1, 1100, LOST))
            s.flush()
            s.lost = True
        return len(targets)

    def connectivity_restored(self, client_id: int | None = None, data_lost: bool = False) -> int:
        """1101 (subscriptions gone: the client must resubscribe) or 1102 (data kept)."""
        targets = self._targets(client_id)
        for s in targets:
            s.lost = False
            if data_lost:
                self._gw.marketdata.drop_session(s)
                s.push(msg.error(-1, 1101, RESTORED_DATA_LOST))
            else:
                s.push(msg.error(-1, 1102, RESTORED_DATA_KEPT))
                self._gw.marketdata.refresh(s)
            s.flush()
        return len(targets)

    def farm_broken(self, client_id: int | None = None) -> int:
        targets = self._targets(client_id)
        for s in targets:
            s.push(msg.error(-1, 2110, BROKEN_2110))
            s.flush()
        return len(targets)

    def notice(self, code: int, text: str = "", client_id: int | None = None) -> int:
        """Send IB system message `code` (e.g. 2103/2104 farm down/up, 10197 competing session)."""
        if not 1 <= int(code) <= 99_999:
            raise ValueError(f"notice code {code} is not an IB message code (1-99999)")
        targets = self._targets(client_id)
        for s in targets:
            s.push(msg.error(-1, int(code), text or f"simulated notice {code}"))
            s.flush()
        return len(targets)

    def pacing_violation_next(self, client_id: int | None = None) -> None:
        """The next historical data request (of that client) gets error 162."""
        self._gw.marketdata.force_pacing_violation.add(client_id)

    def reject_next_order(
        self, reason: str = "simulated rejection", client_id: int | None = None
    ) -> None:
        """The next new order (of that client) is rejected with error 201 and `reason`."""
        self._gw.engine.reject_next.append((client_id, reason))

    def refuse_next_modification(
        self, reason: str = "simulated refusal", client_id: int | None = None
    ) -> None:
        """The next modification (of that client) is refused with error 201 and `reason`, as
        IB refuses one it cannot accept: the order keeps working with its old fields."""
        self._gw.engine.refuse_next_modification.append((client_id, reason))

    def hold_cancels(self, client_id: int | None = None) -> None:
        """From now on, cancels (of that client) are only acknowledged: the order reports
        PendingCancel and keeps working, so it can still fill, until release_cancels()."""
        self._gw.engine.hold_cancels_of.add(client_id)

    def release_cancels(self) -> dict[str, float]:
        """End the hold and apply the held cancels (Cancelled + 202); an order that filled
        meanwhile gets 10148 instead. Returns `cancelled` and the simulated `time`."""
        now = self._gw.now()
        cancelled = self._gw.engine.release_cancels(now)
        self._gw.flush_all()
        return {"cancelled": cancelled, "time": now}

    def stop_ticks(self, symbol: str) -> None:
        """No more ticks or bars for `symbol` (orders still match) until resume_ticks."""
        self._gw.marketdata.stopped.add(self._symbol(symbol))

    def resume_ticks(self, symbol: str) -> None:
        self._gw.marketdata.resume(self._symbol(symbol))
        self._gw.flush_all()

    def go_silent(self, client_id: int | None = None) -> None:
        """Sockets stay open but nothing is read or written (a hung gateway)."""
        if client_id is None:
            self._gw.silent = True
        else:
            for s in self._targets(client_id):
                s.out.clear()
                s.silent = True

    def go_silent_after_next_order(self, client_id: int) -> None:
        """The next new order of `client_id` reaches the order engine, then the gateway
        hangs for that client before any answer (go_silent): the order is live at IB
        while the client never hears of it, as when a program dies right after sending."""
        self._gw.silent_after_order.add(client_id)

    def drop_acks_of_next_order(self, client_id: int) -> None:
        """The next new order of `client_id` is taken and worked, but no live message about it
        (openOrder, orderStatus, execDetails, commissionReport, its errors) reaches that
        client. The connection stays alive: every other message flows, and requests (open and
        completed orders, executions) list the order as usual, as when IB's answers to one
        order are lost."""
        self._gw.mute_next_order.add(client_id)

    def resume(self, client_id: int | None = None) -> None:
        """End go_silent (requests sent meanwhile were dropped, as by a hung gateway)."""
        if client_id is None:
            self._gw.silent = False
            for s in self._gw.sessions:
                s.silent = False
        else:
            for s in self._targets(client_id):
                s.silent = False

    def restart(self, down_seconds: float = 5.0) -> None:
        """Nightly reset: drop all, refuse connections for `down_seconds`, come back unchanged."""
        self._gw.restart(down_seconds)

    def set_price(self, symbol: str, price: float) -> dict[str, float]:
        """Move `symbol` to `price` now: ticks go out and orders match immediately.

        Returns the new quote and `sent_monotonic`, the time.monotonic() at which the ticks
        were written to the sockets (latency benchmarks compare it with arrival times).
        """
        quote = self._gw.market.set_price(self._symbol(symbol), float(price))
        self._gw.apply_quotes([quote], self._gw.market_time())
        self._gw.flush_all()
        sent = time.monotonic()
        return {"bid": quote.bid, "ask": quote.ask, "last": quote.last, "sent_monotonic": sent}

    def _symbol(self, symbol: str) -> str:
        name = symbol.upper()
        if name not in self._gw.market.symbols:
            raise KeyError(f"unknown symbol {symbol!r}")
        return name


# Where a server message names its order: message id -> field index of the order id.
_ORDER_ID_FIELD = {3: 1, 5: 1, 4: 2, 11: 2}
_EXEC_ID_FIELD = 14  # in execDetails (11)


class MutedOrders:
    """Orders whose live messages are not delivered to their owner (drop_acks_of_next_order).

    The engine routes framed messages by client only, so the order a message is about is
    read from its fields: the order id of openOrder (5), orderStatus (3), execDetails (11)
    and error (4); a commissionReport (59) names only its execution, remembered from the
    execDetails dropped before it.
    """

    def __init__(self) -> None:
        self.orders: set[tuple[int, int]] = set()  # (client id, order id)
        self._exec_ids: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.orders)

    def drops(self, client_id: int, data: bytes) -> bool:
        """True when `data`, on its way to `client_id`, is about a muted order."""
        fields = data[4:].split(b"\0")
        try:
            message_id = int(fields[0])
        except ValueError:
            return False
        if message_id == 59:
            return fields[2].decode() in self._exec_ids
        index = _ORDER_ID_FIELD.get(message_id)
        if index is None or (client_id, int(fields[index])) not in self.orders:
            return False
        if message_id == 11:
            self._exec_ids.add(fields[_EXEC_ID_FIELD].decode())
        return True
