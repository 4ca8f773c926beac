"""Read-only views of the simulated account for tests and the control interface (JSON-ready)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ibsim.server import SimulatedGateway


class AccountView:
    """`gw.account`: positions, cash, orders and executions as plain dicts and lists."""

    def __init__(self, gateway: SimulatedGateway) -> None:
        self._gw = gateway

    def positions(self) -> dict[str, float]:
        """Symbol -> shares for every non-zero position."""
        return {r.symbol: r.quantity for r in self._gw.ledger.positions.values() if r.quantity}

    def position_rows(self) -> list[dict[str, object]]:
        return self._gw.ledger.positions_json()

    def cash(self) -> float:
        return self._gw.ledger.cash

    def open_orders(self) -> list[dict[str, object]]:
        return self.state()["open_orders"]  # type: ignore[return-value]

    def completed_orders(self) -> list[dict[str, object]]:
        return self.state()["completed_orders"]  # type: ignore[return-value]

    def executions(self) -> list[dict[str, object]]:
        return self._gw.ledger.executions_json()

    def state(self) -> dict[str, object]:
        """Everything at once, plus the simulated time and connected client ids."""
        data = self._gw.engine.state_json()
        data["time"] = self._gw.now()
        data["clients"] = sorted(self._gw.by_client)
        return data
