"""The shared paper account: cash, positions at average cost, realized P&L, executions.

A cash-style account: buys spend cash, sells return it; the engine asks `can_sell` and
`can_buy` before accepting orders. Average cost includes commissions, as IB reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ibsim.orders import Execution


@dataclass
class PositionRow:
    symbol: str
    con_id: int
    quantity: float = 0.0
    avg_cost: float = 0.0  # per share, commissions included
    realized_pnl: float = 0.0


@dataclass
class Account:
    account_id: str
    cash: float
    positions: dict[str, PositionRow] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    realized_pnl: float = 0.0
    commissions: float = 0.0

    def position(self, symbol: str) -> float:
        row = self.positions.get(symbol)
        return row.quantity if row else 0.0

    def apply_fill(
        self, symbol: str, con_id: int, is_buy: bool, shares: float, price: float, commission: float
    ) -> float | None:
        """Book one fill. Returns the realized P&L of its closing part (None if it only opens)."""
        row = self.positions.setdefault(symbol, PositionRow(symbol, con_id))
        signed = shares if is_buy else -shares
        value = shares * price
        self.cash += -value - commission if is_buy else value - commission
        self.commissions += commission
        realized: float | None = None
        opening = row.quantity == 0 or (row.quantity > 0) == (signed > 0)
        if opening:
            total_cost = row.avg_cost * abs(row.quantity) + value + commission
            row.quantity += signed
            row.avg_cost = total_cost / abs(row.quantity)
        else:
            closing = min(abs(signed), abs(row.quantity))
            direction = 1.0 if row.quantity > 0 else -1.0
            realized = round((price - row.avg_cost) * closing * direction - commission, 6)
            row.quantity += signed
            if abs(row.quantity) < 1e-9:
                row.quantity = 0.0
                row.avg_cost = 0.0
            elif (row.quantity > 0) != (direction > 0):  # flipped through zero
                row.avg_cost = price
            row.realized_pnl += realized
            self.realized_pnl += realized
        return realized

    # -- queries (JSON-ready) --------------------------------------------------
    def positions_json(self) -> list[dict[str, object]]:
        return [
            {
                "symbol": r.symbol,
                "con_id": r.con_id,
                "quantity": r.quantity,
                "avg_cost": round(r.avg_cost, 6),
                "realized_pnl": round(r.realized_pnl, 4),
            }
            for r in self.positions.values()
            if r.quantity != 0
        ]

    def executions_json(self) -> list[dict[str, object]]:
        return [
            {
                "exec_id": e.exec_id,
                "time": e.time,
                "order_id": e.order_id,
                "client_id": e.client_id,
                "perm_id": e.perm_id,
                "symbol": e.symbol,
                "side": e.side,
                "shares": e.shares,
                "price": e.price,
                "order_ref": e.order_ref,
                "commission": e.commission,
                "realized_pnl": e.realized_pnl,
            }
            for e in self.executions
        ]
