"""The simulated account of a backtest day: its fills (the rows reports and the journal read),
cash, commissions and order references."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from core.clock import NEW_YORK
from ibsim.orders import SimOrder
from trading.fills import commission_for


def fills_net(fills: list[dict[str, Any]]) -> float:
    """Dollars the fills made: sells less buys, less every commission."""
    return sum(
        (f["quantity"] if f["side"] == "SELL" else -f["quantity"]) * f["price"] - f["commission"]
        for f in fills
    )


class Ledger:
    """Every fill of the day as the database's trades rows (id, symbol, side, quantity, price,
    trade_time, commission, order_ref, exec_id), the cash, and what each order was for."""

    def __init__(
        self, trading_date: date, cash: float, commission_per_share: float, commission_min: float
    ) -> None:
        self.trading_date = trading_date
        self.cash = cash
        self.per_share = commission_per_share
        self.minimum = commission_min
        self.fills: list[dict[str, Any]] = []
        self.reasons_by_ref: dict[str, str] = {}  # a sell's exit reason, by its order ref
        self.purposes_by_ref: dict[str, str] = {}  # an entry's purpose ("entry:<rule>")
        self._refs = 0

    def ref(self, symbol: str) -> str:
        """A new order reference, unique in the run's day."""
        self._refs += 1
        return f"bt-{self.trading_date:%Y%m%d}-{symbol}-{self._refs}"

    def fill(self, order: SimOrder, qty: float, price: float, t: float) -> None:
        """`qty` of `order` filled at `price` at market time `t`: the order's commission so
        far is IB's fixed rate on all its fills (trading.fills.commission_for), this fill
        pays the difference, as the simulated gateway charges it."""
        order.apply_fill(qty, price)
        total = commission_for(order.filled, order.filled * order.avg_fill_price,
                               self.per_share, self.minimum)  # fmt: skip
        commission = round(total - order.commission_paid, 4)
        order.commission_paid = total
        value = qty * price
        self.cash += (-value if order.is_buy else value) - commission
        number = len(self.fills) + 1
        self.fills.append(
            {
                "id": number,
                "symbol": order.symbol,
                "side": order.action,
                "quantity": qty,
                "price": price,
                "trade_time": datetime.fromtimestamp(round(t), NEW_YORK).isoformat(),
                "commission": commission,
                "order_ref": order.order_ref,
                "exec_id": f"{order.order_ref}.{number}",
            }
        )

    def symbol_net(self, symbol: str) -> float:
        """What `symbol`'s fills made today, net of commissions."""
        return fills_net([f for f in self.fills if f["symbol"] == symbol])

    def net(self) -> float:
        return fills_net(self.fills)
