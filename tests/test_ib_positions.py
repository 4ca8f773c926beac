"""ib.positions: which of IB's positions the bots hold, as records."""

from __future__ import annotations

from ib_async import IB, Contract, Option, Position, Stock

from ib.positions import follow_positions, is_our_stock_position
from trading.model import BrokerPosition


def position(contract: Contract, account: str = "DU1", quantity: float = 100.0) -> Position:
    contract.conId = 42
    return Position(account, contract, quantity, 10.0)


def test_only_stock_positions_of_our_account_are_ours_any_account_before_it_is_known() -> None:
    stock = position(Stock("AAPL", "SMART", "USD"))
    assert is_our_stock_position(stock, "DU1")
    assert is_our_stock_position(stock, "")  # before connect: no account chosen yet
    assert not is_our_stock_position(position(Stock("AAPL", "SMART", "USD"), "DU2"), "DU1")
    assert not is_our_stock_position(position(Option("AAPL", "20261218", 200, "C")), "DU1")


def test_followed_positions_reach_the_bot_as_records_with_their_con_id() -> None:
    ib = IB()
    seen: list[tuple[BrokerPosition, int]] = []
    follow_positions(ib, lambda: "DU1", lambda p, con_id: seen.append((p, con_id)))
    ib.positionEvent.emit(position(Stock("AAPL", "SMART", "USD"), quantity=50.0))
    ib.positionEvent.emit(position(Stock("MSFT", "SMART", "USD"), "DU2"))
    assert seen == [(BrokerPosition("AAPL", 50.0, 10.0), 42)]
