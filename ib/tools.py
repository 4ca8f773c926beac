"""The operator tools' work at IB: connect with a tool's client id, probe the link, list every
client's orders, read positions and stream prices. Each answer is a plain record.

The tools only look (except liquidate_all, see ib.liquidation): nothing here places or
cancels an order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import NamedTuple

from ib_async import IB, Contract, Stock, Ticker, Trade

from core.cli import ProgramError
from ib.convert import broker_position
from ib.session import connect_failure, quiet_ib_async_logs
from trading.model import BrokerPosition

MARKET_DATA_TYPES = {1: "1 live", 2: "2 frozen", 3: "3 delayed", 4: "4 delayed-frozen"}


def connect(host: str, port: int, client_id: int, timeout: float = 10.0) -> IB:
    """A connected IB. Raises ProgramError naming host, port and client id when it fails."""
    quiet_ib_async_logs(logging.CRITICAL)  # a tool prints its own one-line answers
    ib = IB()
    ib.RequestTimeout = max(timeout, 5.0)
    try:
        ib.connect(host, port, clientId=client_id, timeout=timeout)
    except TimeoutError as exc:
        failure = connect_failure(host, port, timeout, exc)
        raise ProgramError(f"{failure} (or is client id {client_id} in use?)") from None
    except OSError as exc:
        raise ProgramError(connect_failure(host, port, timeout, exc)) from None
    return ib


# -- the link ------------------------------------------------------------------------------
def server_version(ib: IB) -> int:
    return ib.client.serverVersion()


def round_trip(ib: IB) -> tuple[float, str]:
    """Milliseconds for one reqCurrentTime, and the server's time (ISO, seconds)."""
    started = time.perf_counter()
    server_time = ib.reqCurrentTime()
    return (time.perf_counter() - started) * 1000, server_time.isoformat(timespec="seconds")


def market_data_type_in_effect(ib: IB, symbol: str, wait_s: float) -> str:
    """The type IB actually delivers for `symbol` (it may fall back to delayed), or why unknown."""
    contracts = ib.qualifyContracts(Stock(symbol, "SMART", "USD"))
    if not contracts or contracts[0] is None or not contracts[0].conId:
        return f"unknown ({symbol} not found at IB; pick another with --symbol)"
    ticker = ib.reqMktData(contracts[0], "", False, False)
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            ib.sleep(0.1)
            if ticker.marketDataType in MARKET_DATA_TYPES and ticker.time is not None:
                return MARKET_DATA_TYPES[ticker.marketDataType]
        return f"unknown (no tick for {symbol} within {wait_s:g} s; market closed or no data)"
    finally:
        ib.cancelMktData(ticker.contract)


# -- positions -----------------------------------------------------------------------------
def positions_of(ib: IB, account: str, *, fresh: bool = True) -> list[BrokerPosition]:
    """`account`'s non-zero positions: asked now (reqPositions) when `fresh`, else the ones
    ib_async keeps from the stream."""
    reported = ib.reqPositions() if fresh else ib.positions()
    return [broker_position(p) for p in reported if p.account == account and p.position != 0]


# -- orders --------------------------------------------------------------------------------
class OrderAtIB(NamedTuple):
    """One order as IB lists it, any client's."""

    symbol: str
    action: str
    quantity: float
    order_type: str
    status: str
    filled: float
    remaining: float
    client_id: int | None  # None when IB does not say (completed orders carry no client id)
    order_ref: str


def order_at_ib(trade: Trade, *, completed: bool = False) -> OrderAtIB:
    order, status = trade.order, trade.orderStatus
    return OrderAtIB(
        symbol=trade.contract.symbol,
        action=order.action,
        quantity=float(order.totalQuantity),
        order_type=order.orderType,
        status=status.status,
        filled=float(status.filled),
        remaining=float(status.remaining),
        # IB's completed-order messages carry no client id (ib_async reports 0).
        client_id=order.clientId if not completed or order.clientId else None,
        order_ref=order.orderRef or "",
    )


def every_clients_orders(
    ib: IB, *, completed: bool = True
) -> tuple[list[OrderAtIB], list[OrderAtIB]]:
    """Open orders of every client (reqAllOpenOrders) and, with `completed`, today's
    completed ones (reqCompletedOrders)."""
    open_orders = [order_at_ib(t) for t in ib.reqAllOpenOrders()]
    done = ib.reqCompletedOrders(apiOnly=False) if completed else []
    return open_orders, [order_at_ib(t, completed=True) for t in done]


# -- prices --------------------------------------------------------------------------------
def price_of(ticker: Ticker | None) -> float | None:
    """The ticker's last trade, else its midpoint, else the close; None when it has none."""
    if ticker is None:
        return None
    for value in (ticker.last, ticker.midpoint(), ticker.close):
        if value is not None and not math.isnan(value) and value > 0:
            return float(value)
    return None


class PriceFeed:
    """reqMktData streams for the followed symbols, opened and closed as they change."""

    def __init__(self, ib: IB) -> None:
        self.ib = ib
        self.tickers: dict[str, Ticker] = {}

    def follow(self, symbols: Iterable[str]) -> None:
        wanted: dict[str, Contract] = {}
        for symbol in dict.fromkeys(symbols):
            if symbol in self.tickers:
                wanted[symbol] = self.tickers[symbol].contract
                continue
            qualified = self.ib.qualifyContracts(Stock(symbol, "SMART", "USD"))
            if qualified and qualified[0] is not None:
                wanted[symbol] = qualified[0]
        for symbol in list(self.tickers):
            if symbol not in wanted:
                self.ib.cancelMktData(self.tickers.pop(symbol).contract)
        for symbol, contract in wanted.items():
            if symbol not in self.tickers:
                contract.exchange = contract.exchange or "SMART"
                self.tickers[symbol] = self.ib.reqMktData(contract, "", False, False)

    def prices(self) -> dict[str, float | None]:
        return {symbol: price_of(ticker) for symbol, ticker in self.tickers.items()}
