"""What the gateway answers to each client request (one function per message id)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ibsim import messages as msg
from ibsim import requests as rq

if TYPE_CHECKING:
    from ibsim.server import SimulatedGateway
    from ibsim.session import ClientSession

log = logging.getLogger("ibsim.handlers")
Handler = Callable[["SimulatedGateway", "ClientSession", rq.Request], None]
_NO_DEFINITION = "No security definition has been found for the request"
_ALIASES = {"NASDAQ": {"NASDAQ", "ISLAND"}, "NYSE": {"NYSE"}}


def resolve(gw: SimulatedGateway, c: rq.ContractQuery, req_id: int) -> str:
    """The universe symbol a contract names. Raises RequestError 200 when there is none."""
    if c.sec_type.upper() not in ("", "STK") or c.currency.upper() not in ("", "USD"):
        raise rq.RequestError(req_id, 200, _NO_DEFINITION)
    spec = None
    if c.con_id:
        spec = gw.by_con_id.get(c.con_id)
    elif c.symbol:
        spec = gw.market.symbols.get(c.symbol.upper())
    if spec is None:
        raise rq.RequestError(req_id, 200, _NO_DEFINITION)
    venues = {"", "SMART", "ARCA", "BATS", "IEX", *_ALIASES.get(spec.primary_exchange, ())}
    venues.add(spec.primary_exchange)
    if c.exchange.upper() not in venues or c.primary_exchange.upper() not in venues:
        raise rq.RequestError(req_id, 200, _NO_DEFINITION)
    return spec.symbol


def start_api(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.StartApi)
    if s.client_id is not None:
        return
    other = gw.by_client.get(r.client_id)
    if other is not None and not other.closed:
        log.warning(
            "client id %s already in use (%s); refusing %s", r.client_id, other.peer, s.peer
        )
        s.push(
            msg.error(
                -1,
                326,
                "Unable to connect as the client id is already in use. Retry with a unique client id.",
            )
        )
        s.close()
        return
    if len(gw.by_client) >= gw.config.max_clients:
        s.push(
            msg.error(-1, 502, "Couldn't connect to TWS: maximum number of API clients reached.")
        )
        s.close()
        return
    s.client_id = r.client_id
    gw.by_client[r.client_id] = s
    log.info("client %s connected from %s", r.client_id, s.peer)
    s.push(msg.managed_accounts(gw.config.account))
    s.push(msg.next_valid_id(gw.engine.next_valid_id()))
    for code, text in _NOTICES:
        s.push(msg.error(-1, code, text))


_NOTICES = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefil"),
)


def req_ids(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    s.push(msg.next_valid_id(gw.engine.next_valid_id()))


def managed_accounts(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    s.push(msg.managed_accounts(gw.config.account))


def current_time(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    s.push(msg.current_time(gw.now()))


def positions(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    s.positions_sub = True
    for row in gw.ledger.positions.values():
        if row.quantity:
            spec = gw.market.symbols[row.symbol]
            s.push(msg.position(gw.config.account, spec, row.quantity, row.avg_cost))
    s.push(msg.position_end())


def cancel_positions(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    s.positions_sub = False


def _send_open_orders(gw: SimulatedGateway, s: ClientSession, client_id: int | None) -> None:
    for order in gw.engine.open_orders(client_id):
        s.push(msg.open_order(order))
        s.push(msg.order_status(order))
    s.push(msg.open_order_end())


def open_orders(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    _send_open_orders(gw, s, None if s.client_id == gw.config.master_client_id else s.client_id)


def all_open_orders(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    _send_open_orders(gw, s, None)


def auto_open_orders(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    if s.client_id != 0:
        s.push(
            msg.error(
                -1,
                321,
                "Error validating request.-'a4' : cause - reqAutoOpenOrders only for client id 0",
            )
        )


def completed_orders(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    for order in gw.engine.completed_orders():
        status = {"FILLED": "Filled", "CANCELLED": "Cancelled by Trader", "REJECTED": "Rejected"}
        s.push(msg.completed_order(order, status[order.state.name]))
    s.push(msg.completed_orders_end())


def account_updates(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.AccountUpdates)
    s.account_sub = r.subscribe
    if not r.subscribe:
        return
    acct = gw.config.account
    for key, value in gw.engine.account_values():
        s.push(msg.account_value(key, value, "" if key == "AccountType" else "USD", acct))
    for data in gw.engine.portfolio_messages():
        s.push(data)
    s.push(msg.account_time(gw.now()))
    s.push(msg.account_download_end(acct))


def account_updates_multi(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.AccountUpdatesMulti)
    for key, value in gw.engine.account_values():
        s.push(msg.account_update_multi(r.req_id, gw.config.account, key, value))
    s.push(msg.account_update_multi_end(r.req_id))


def account_summary(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.AccountSummary)
    wanted = {t.strip() for t in r.tags.split(",") if t.strip()}
    for key, value in gw.engine.account_values():
        if "All" in wanted or key in wanted or not wanted:
            s.push(msg.account_summary(r.req_id, gw.config.account, key, value))
    s.push(msg.account_summary_end(r.req_id))


def ignore(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    """Cancels of one-shot requests: nothing is streaming."""


def executions(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.ExecutionsRequest)
    master = s.client_id == gw.config.master_client_id
    for execution in gw.engine.executions(r, None if master else s.client_id):
        s.push(msg.exec_details(r.req_id, execution))
        s.push(msg.commission_report(execution))
    s.push(msg.exec_details_end(r.req_id))


def contract_details(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.ContractDetailsRequest)
    symbol = resolve(gw, r.contract, r.req_id)
    exchange = r.contract.exchange.upper() or "SMART"
    day = gw.trading_date.strftime("%Y%m%d")
    s.push(msg.contract_details(r.req_id, gw.market.symbols[symbol], exchange, day))
    s.push(msg.contract_details_end(r.req_id))


def market_data_type(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.FlagRequest)
    if r.value not in (1, 2, 3, 4):
        raise rq.RequestError(-1, 321, f"Error validating request: market data type {r.value}")
    s.data_type = r.value


def mkt_data(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.MktDataRequest)
    symbol = resolve(gw, r.contract, r.req_id)
    for data in gw.marketdata.request_ticks(s, r, symbol, s.data_type):
        s.push(data)


def cancel_mkt_data(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.WithReqId)
    gw.marketdata.cancel_ticks(s, r.req_id)


def historical_data(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.HistoricalDataRequest) and s.client_id is not None
    symbol = resolve(gw, r.contract, r.req_id)
    for data in gw.marketdata.historical(s, s.client_id, r, symbol, gw.market_time()):
        s.push(data)


def cancel_bars(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.WithReqId)
    gw.marketdata.cancel_bars(s, r.req_id)


def real_time_bars(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.RealTimeBarsRequest)
    symbol = resolve(gw, r.contract, r.req_id)
    gw.marketdata.realtime(s, r, symbol)


def place_order(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.OrderRequest) and s.client_id is not None
    if r.what_if:
        from ibsim.orders import SimOrder

        margin = gw.engine.what_if_margin(r)
        preview = SimOrder(
            r.order_id, s.client_id, 0, gw.config.account, r.contract.symbol, r.contract.con_id,
            r.contract.exchange, r.action, r.total_qty, r.order_type, r.lmt_price, r.aux_price,
            r.tif, r.oca_group, r.oca_type, r.order_ref, r.transmit, r.parent_id, r.outside_rth,
        )  # fmt: skip
        s.push(msg.open_order(preview, what_if_margin=margin))
        return
    if s.client_id in gw.mute_next_order:  # fault: every live answer about it is dropped
        gw.mute_next_order.discard(s.client_id)
        gw.muted_orders.orders.add((s.client_id, r.order_id))
    gw.engine.place(s.client_id, r, gw.now())
    if s.client_id in gw.silent_after_order:  # fault: hang before any answer goes out
        gw.silent_after_order.discard(s.client_id)
        gw.faults.go_silent(s.client_id)


def cancel_order(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    assert isinstance(r, rq.WithReqId) and s.client_id is not None
    gw.engine.cancel(s.client_id, r.req_id, gw.now())


def global_cancel(gw: SimulatedGateway, s: ClientSession, r: rq.Request) -> None:
    count = gw.engine.global_cancel(gw.now())
    log.info("client %s: global cancel of %d orders", s.client_id, count)


HANDLERS: dict[int, Handler] = {
    71: start_api,
    8: req_ids,
    17: managed_accounts,
    49: current_time,
    61: positions,
    64: cancel_positions,
    5: open_orders,
    16: all_open_orders,
    15: auto_open_orders,
    99: completed_orders,
    6: account_updates,
    76: account_updates_multi,
    77: ignore,
    62: account_summary,
    63: ignore,
    7: executions,
    9: contract_details,
    59: market_data_type,
    1: mkt_data,
    2: cancel_mkt_data,
    20: historical_data,
    25: cancel_bars,
    50: real_time_bars,
    51: cancel_bars,
    3: place_order,
    4: cancel_order,
    58: global_cancel,
}
