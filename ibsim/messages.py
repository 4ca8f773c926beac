"""Encoding of server messages at server version 176, mirroring ib_async/decoder.py.

Every function returns one framed message (bytes). Tick messages are hot: `TickTail` holds
the pre-encoded part after the request id so one quote change is encoded once and only the
request id differs per subscriber.
"""

from __future__ import annotations

import struct
from datetime import datetime
from typing import Protocol

from ibsim.orders import Execution, SimOrder
from ibsim.wire import UNSET_DOUBLE, encode, fields_bytes

NEW_YORK_NAME = "America/New_York"
_pack_len = struct.Struct(">I").pack


class SymbolInfo(Protocol):
    symbol: str
    con_id: int
    primary_exchange: str
    min_tick: float
    long_name: str


def ib_time(epoch: float) -> str:
    """'YYYYmmdd HH:MM:SS America/New_York', a form ib_async's parseIBDatetime reads."""
    from core.clock import NEW_YORK

    return datetime.fromtimestamp(epoch, NEW_YORK).strftime("%Y%m%d %H:%M:%S ") + NEW_YORK_NAME


def _u(value: float | None) -> float:
    return UNSET_DOUBLE if value is None else value


# -- connection ------------------------------------------------------------------


def server_hello(version: int, epoch: float) -> bytes:
    from core.clock import NEW_YORK

    stamp = datetime.fromtimestamp(epoch, NEW_YORK)
    return encode(version, stamp.strftime("%Y%m%d %H:%M:%S ") + (stamp.tzname() or "EST"))


def next_valid_id(order_id: int) -> bytes:
    return encode(9, 1, order_id)


def managed_accounts(accounts: str) -> bytes:
    return encode(15, 1, accounts)


def error(req_id: int, code: int, text: str) -> bytes:
    return encode(4, 2, req_id, code, text, "")


def current_time(epoch: float) -> bytes:
    return encode(49, 1, int(epoch))


# -- contracts --------------------------------------------------------------------

_TRADING_HOURS = "{d}:0400-{d}:2000"
_LIQUID_HOURS = "{d}:0930-{d}:1600"


def contract_details(req_id: int, spec: SymbolInfo, exchange: str, trading_day: str) -> bytes:
    return encode(
        10,
        req_id,
        spec.symbol,
        "STK",
        "",  # lastTradeDateOrContractMonth
        0.0,  # strike
        "",  # right
        exchange,
        "USD",
        spec.symbol,  # localSymbol
        "NMS",  # marketName
        "NMS",  # tradingClass
        spec.con_id,
        spec.min_tick,
        "",  # multiplier
        "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AVGCOST,BASKET,DAY,DEACT,GTC,IOC,LIT,LMT,MKT,"
        "MIT,OCA,STP,STPLMT,TRAIL,WHATIF",
        f"SMART,{spec.primary_exchange},ARCA,BATS,IEX",
        1,  # priceMagnifier
        0,  # underConId
        spec.long_name,
        spec.primary_exchange,
        "",  # contractMonth
        "",  # industry
        "",  # category
        "",  # subcategory
        "US/Eastern",
        _TRADING_HOURS.format(d=trading_day),
        _LIQUID_HOURS.format(d=trading_day),
        "",  # evRule
        "",  # evMultiplier
        0,  # secIdList count
        1,  # aggGroup
        "",  # underSymbol
        "",  # underSecType
        "26,26,26",  # marketRuleIds
        "",  # realExpirationDate
        "COMMON",  # stockType
        1,  # minSize
        1,  # sizeIncrement
        100,  # suggestedSizeIncrement
    )


def contract_details_end(req_id: int) -> bytes:
    return encode(52, 1, req_id)


# -- market data -------------------------------------------------------------------


def market_data_type(req_id: int, data_type: int) -> bytes:
    return encode(58, 1, req_id, data_type)


def tick_req_params(req_id: int, min_tick: float) -> bytes:
    return encode(81, req_id, min_tick, "9c0001", 3)


def tick_snapshot_end(req_id: int) -> bytes:
    return encode(57, 1, req_id)


TICK_PRICE_HEAD = b"1\x006\x00"
TICK_SIZE_HEAD = b"2\x006\x00"
TICK_STRING_HEAD = b"46\x006\x00"


def tick_price_tail(tick_type: int, price: float, size: float) -> bytes:
    return fields_bytes((tick_type, price, size, 0))


def tick_size_tail(tick_type: int, size: float) -> bytes:
    return fields_bytes((tick_type, size))


def tick_string_tail(tick_type: int, value: str) -> bytes:
    return fields_bytes((tick_type, value))


def with_req_id(head: bytes, req_id_field: bytes, tail: bytes) -> bytes:
    """Frame head + request id + pre-encoded tail. `req_id_field` is b"<id>\\0"."""
    return _pack_len(len(head) + len(req_id_field) + len(tail)) + head + req_id_field + tail


def req_id_field(req_id: int) -> bytes:
    return f"{req_id}\0".encode()


# -- bars ----------------------------------------------------------------------------


def historical_data(req_id: int, start: str, end: str, rows: list[tuple[object, ...]]) -> bytes:
    """rows: (date, open, high, low, close, volume, wap, count)."""
    fields: list[object] = [17, req_id, start, end, len(rows)]
    for row in rows:
        fields.extend(row)
    return encode(*fields)


def historical_data_update(req_id: int, row: tuple[object, ...]) -> bytes:
    date, open_, high, low, close, volume, wap, count = row
    return encode(90, req_id, count, date, open_, close, high, low, wap, volume)


def realtime_bar(req_id: int, row: tuple[object, ...]) -> bytes:
    epoch, open_, high, low, close, volume, wap, count = row
    return encode(50, 3, req_id, epoch, open_, high, low, close, volume, wap, count)


# -- account ------------------------------------------------------------------------


def position(account: str, spec: SymbolInfo, quantity: float, avg_cost: float) -> bytes:
    return encode(
        61, 3, account, spec.con_id, spec.symbol, "STK", "", 0.0, "", "",
        spec.primary_exchange, "USD", spec.symbol, "NMS", quantity, avg_cost,
    )  # fmt: skip


def position_end() -> bytes:
    return encode(62, 1)


def account_value(key: str, value: object, currency: str, account: str) -> bytes:
    return encode(6, 2, key, value, currency, account)


def portfolio(
    spec: SymbolInfo,
    quantity: float,
    market_price: float,
    avg_cost: float,
    realized_pnl: float,
    account: str,
) -> bytes:
    market_value = quantity * market_price
    unrealized = (market_price - avg_cost) * quantity if quantity else 0.0
    return encode(
        7, 8, spec.con_id, spec.symbol, "STK", "", 0.0, "", "", spec.primary_exchange, "USD",
        spec.symbol, "NMS", quantity, market_price, round(market_value, 4), avg_cost,
        round(unrealized, 4), round(realized_pnl, 4), account,
    )  # fmt: skip


def account_time(epoch: float) -> bytes:
    from core.clock import NEW_YORK

    return encode(8, 1, datetime.fromtimestamp(epoch, NEW_YORK).strftime("%H:%M"))


def account_download_end(account: str) -> bytes:
    return encode(54, 1, account)


def account_update_multi(req_id: int, account: str, key: str, value: object) -> bytes:
    return encode(73, 1, req_id, account, "", key, value, "USD")


def account_update_multi_end(req_id: int) -> bytes:
    return encode(74, 1, req_id)


def account_summary(req_id: int, account: str, tag: str, value: object) -> bytes:
    return encode(63, 1, req_id, account, tag, value, "USD")


def account_summary_end(req_id: int) -> bytes:
    return encode(64, 1, req_id)


# -- orders ----------------------------------------------------------------------------


def order_status(o: SimOrder) -> bytes:
    return encode(
        3,
        o.order_id,
        o.state.ib_status,
        o.filled,
        o.remaining,
        o.avg_fill_price,
        o.perm_id,
        o.parent_id,
        o.last_fill_price,
        o.client_id,
        "",  # whyHeld
        0.0,  # mktCapPrice
    )


def _contract11(o: SimOrder) -> list[object]:
    return [o.con_id, o.symbol, "STK", "", 0.0, "", "", o.exchange, "USD", o.symbol, "NMS"]


def _order_head(o: SimOrder) -> list[object]:
    return [
        o.action, o.total_qty, o.order_type, _u(o.lmt_price), _u(o.aux_price), o.tif,
        o.oca_group, o.account, "", 0, o.order_ref,
    ]  # fmt: skip


def open_order(o: SimOrder, what_if_margin: float | None = None) -> bytes:
    """Mirror of Decoder.openOrder at server version 176."""
    f: list[object] = [5, o.order_id, *_contract11(o), *_order_head(o)]
    f += [o.client_id, o.perm_id, o.outside_rth, False, 0.0, "", "", "", "", "", ""]
    # modelCode .. deltaNeutralAuxPrice
    f += ["", "", "", UNSET_DOUBLE, "", 0, "", -1, 0, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    f += [UNSET_DOUBLE, UNSET_DOUBLE, 0, False, False, False, 0, o.oca_type, False, False]
    f += [UNSET_DOUBLE, o.parent_id, 0, UNSET_DOUBLE, 0, "", UNSET_DOUBLE]
    # continuousUpdate .. comboLegsDescrip
    trail = _u(o.trail_stop_price)
    f += [0, 0, trail, _u(o.trailing_percent), UNSET_DOUBLE, "", ""]
    f += [0, 0, 0]  # combo legs, order combo legs, smart combo routing params
    f += [UNSET_INTEGER_TEXT, UNSET_INTEGER_TEXT, ""]  # scale init/subs level, increment
    f += [""]  # hedgeType
    f += [False, "", "", False, False]  # optOutSmartRouting .. deltaNeutralContract present
    f += [""]  # algoStrategy
    what_if = what_if_margin is not None
    margin: list[object] = [UNSET_DOUBLE] * 9
    commission: list[object] = [UNSET_DOUBLE] * 3
    if what_if:
        margin = [0.0, 0.0, 0.0, what_if_margin, what_if_margin, 0.0]
        margin += [what_if_margin, what_if_margin, 0.0]
        commission = [1.0, 1.0, 1.0]
    status = "PreSubmitted" if what_if else o.state.ib_status
    f += [False, what_if, status, *margin, *commission, "USD", "", False, False]
    f += [0]  # conditions
    f += ["", UNSET_DOUBLE, trail, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, 0]
    f += ["", "", "", UNSET_DOUBLE, False, False, False, False]  # softDollarTier .. usePriceMgmt
    f += [UNSET_INTEGER_TEXT, False, False]  # duration, postToAts, autoCancelParent
    f += [UNSET_INTEGER_TEXT, UNSET_INTEGER_TEXT, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    return encode(*f)


UNSET_INTEGER_TEXT = "2147483647"


def open_order_end() -> bytes:
    return encode(53, 1)


def completed_order(o: SimOrder, completed_status: str) -> bytes:
    """Mirror of Decoder.completedOrder at server version 176."""
    f: list[object] = [101, *_contract11(o), *_order_head(o)]
    f += [o.perm_id, o.outside_rth, False, 0.0, "", "", "", "", ""]
    # modelCode .. deltaNeutralAuxPrice
    f += ["", "", "", UNSET_DOUBLE, "", 0, "", -1, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    f += [UNSET_DOUBLE, UNSET_DOUBLE, 0, False, False, 0, o.oca_type, 0, UNSET_DOUBLE, 0, ""]
    f += [UNSET_DOUBLE]
    trail = _u(o.trail_stop_price)
    f += [0, 0, trail, _u(o.trailing_percent), ""]  # continuousUpdate .. comboLegsDescrip
    f += [0, 0, 0]
    f += [UNSET_INTEGER_TEXT, UNSET_INTEGER_TEXT, ""]
    f += [""]  # hedgeType
    f += ["", "", False, False]  # clearingAccount .. deltaNeutralContract present
    f += [""]  # algoStrategy
    f += [False, o.state.ib_status, False, False]
    f += [0]  # conditions
    done_at = ib_time(o.completed_time) if o.completed_time else ""
    f += [trail, UNSET_DOUBLE, UNSET_DOUBLE, False, False, "", o.filled, 0, False, "", False]
    f += [False, 0, done_at, completed_status]
    f += [UNSET_INTEGER_TEXT, UNSET_INTEGER_TEXT, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    return encode(*f)


def completed_orders_end() -> bytes:
    return encode(102)


def exec_details(req_id: int, e: Execution) -> bytes:
    return encode(
        11, req_id, e.order_id, e.con_id, e.symbol, "STK", "", 0.0, "", "", e.exchange, "USD",
        e.symbol, "NMS", e.exec_id, ib_time(e.time), e.account, e.exchange, e.side, e.shares,
        e.price, e.perm_id, e.client_id, 0, e.cum_qty, e.avg_price, e.order_ref, "", "", "",
        1,
    )  # fmt: skip


def exec_details_end(req_id: int) -> bytes:
    return encode(55, 1, req_id)


def commission_report(e: Execution) -> bytes:
    pnl = UNSET_DOUBLE if e.realized_pnl is None else round(e.realized_pnl, 4)
    return encode(59, 1, e.exec_id, e.commission, "USD", pnl, UNSET_DOUBLE, "")
