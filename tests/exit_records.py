"""Plain exit-side records for the pure tests: database rows, working sells, quotes."""

from __future__ import annotations

from trading.model import Quote, WorkingOrder

US = 10  # our client id


def db_row(symbol: str, qty: int = 100, entry: float = 100.0, **extra: object) -> dict:
    row = {
        "symbol": symbol,
        "quantity": qty,
        "entry_price": entry,
        "profit_target_price": None,
        "stop_loss_price": None,
        "agent": "day_trader",
    }
    row.update(extra)
    return row


def our_sell(
    symbol: str, kind: str, qty: float, price: float, oca: str = "g1", client: int = US
) -> WorkingOrder:
    return WorkingOrder(
        symbol=symbol,
        order_id=hash((symbol, kind, oca)) % 1000,
        client_id=client,
        perm_id=0,
        action="SELL",
        order_type=kind,
        quantity=qty,
        limit_price=price if kind == "LMT" else None,
        stop_price=price if kind == "STP" else None,
        oca_group=oca,
        order_ref=f"exit_manager-{symbol}-{kind}-{oca}",
    )


def quote_at(
    last: float, at: float = 1000.0, bid: float | None = None, data_type: int = 1
) -> Quote:
    return Quote("AAPL", last, bid if bid is not None else last - 0.01, last + 0.01, at, data_type)
