"""Decoding of client requests into typed records, mirroring ib_async/client.py field by field.

Only the server-version-176 layouts are handled (the simulator pins that version).
`parse_request` raises `RequestError` for a request IB would reject with an error code, and
`UnknownMessage` for a message id IB does not define (the session then drops the client).
"""

from __future__ import annotations

from dataclasses import dataclass

from ibsim.wire import UNSET_DOUBLE

SERVER_VERSION = 176


class RequestError(Exception):
    """A request IB would answer with error `code` for `req_id` (-1 when not tied to one)."""

    def __init__(self, req_id: int, code: int, text: str) -> None:
        super().__init__(f"[{req_id}] {code}: {text}")
        self.req_id = req_id
        self.code = code
        self.text = text


class UnknownMessage(Exception):
    """A message id the TWS API does not define."""


@dataclass(frozen=True)
class ContractQuery:
    """The 12 contract fields ib_async sends (Client.send's Contract format)."""

    con_id: int = 0
    symbol: str = ""
    sec_type: str = ""
    last_trade: str = ""
    strike: str = ""
    right: str = ""
    multiplier: str = ""
    exchange: str = ""
    primary_exchange: str = ""
    currency: str = ""
    local_symbol: str = ""
    trading_class: str = ""


class FieldCursor:
    """Reads typed fields in order; bad values raise RequestError for `req_id`."""

    def __init__(self, fields: list[str], start: int = 1) -> None:
        self.fields = fields
        self.pos = start
        self.req_id = -1

    def str(self) -> str:
        if self.pos >= len(self.fields):
            raise RequestError(self.req_id, 320, "Error reading request: message is truncated")
        value = self.fields[self.pos]
        self.pos += 1
        return value

    def int(self, default: int = 0) -> int:
        text = self.str()
        if text == "":
            return default
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = float("nan")
            if as_float.is_integer():
                return int(as_float)
            raise RequestError(
                self.req_id, 320, f"Error reading request: bad integer {text!r}"
            ) from None

    def float(self) -> float | None:
        """None for an empty field or IB's unset double."""
        text = self.str()
        if text == "":
            return None
        try:
            value = float(text)
        except ValueError:
            raise RequestError(
                self.req_id, 320, f"Error reading request: bad number {text!r}"
            ) from None
        if value != value or value >= UNSET_DOUBLE:
            return None
        return value

    def bool(self) -> bool:
        return self.int() != 0

    def skip(self, count: int = 1) -> None:
        for _ in range(count):
            self.str()

    def contract(self) -> ContractQuery:
        return ContractQuery(
            con_id=self.int(),
            symbol=self.str(),
            sec_type=self.str(),
            last_trade=self.str(),
            strike=self.str(),
            right=self.str(),
            multiplier=self.str(),
            exchange=self.str(),
            primary_exchange=self.str(),
            currency=self.str(),
            local_symbol=self.str(),
            trading_class=self.str(),
        )


# -- request records ----------------------------------------------------------


@dataclass(frozen=True)
class Request:
    msg_id: int


@dataclass(frozen=True)
class StartApi(Request):
    client_id: int
    opt_capab: str


@dataclass(frozen=True)
class WithReqId(Request):
    """Requests carrying one id: reqIds (count), cancels (req id), cancelOrder (order id)."""

    req_id: int


@dataclass(frozen=True)
class FlagRequest(Request):
    """reqMarketDataType (type), reqCompletedOrders (apiOnly), reqAutoOpenOrders (bind)."""

    value: int


@dataclass(frozen=True)
class AccountUpdates(Request):
    subscribe: bool
    account: str


@dataclass(frozen=True)
class AccountUpdatesMulti(Request):
    req_id: int
    account: str
    model_code: str


@dataclass(frozen=True)
class AccountSummary(Request):
    req_id: int
    group: str
    tags: str


@dataclass(frozen=True)
class ExecutionsRequest(Request):
    req_id: int
    client_id: int
    account: str
    time: str
    symbol: str
    sec_type: str
    exchange: str
    side: str


@dataclass(frozen=True)
class ContractDetailsRequest(Request):
    req_id: int
    contract: ContractQuery


@dataclass(frozen=True)
class MktDataRequest(Request):
    req_id: int
    contract: ContractQuery
    generic_ticks: str
    snapshot: bool
    regulatory_snapshot: bool


@dataclass(frozen=True)
class HistoricalDataRequest(Request):
    req_id: int
    contract: ContractQuery
    end: str
    bar_size: str
    duration: str
    use_rth: bool
    what_to_show: str
    format_date: int
    keep_up_to_date: bool


@dataclass(frozen=True)
class RealTimeBarsRequest(Request):
    req_id: int
    contract: ContractQuery
    bar_size: int
    what_to_show: str
    use_rth: bool


@dataclass(frozen=True)
class OrderRequest(Request):
    order_id: int
    contract: ContractQuery
    action: str
    total_qty: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    oca_group: str
    account: str
    order_ref: str
    transmit: bool
    parent_id: int
    outside_rth: bool
    good_till_date: str
    oca_type: int
    trail_stop_price: float | None
    trailing_percent: float | None
    what_if: bool


# Message ids the TWS API defines that the simulator does not serve; answered with a 321
# warning instead of dropping the client. Values from ib_async/client.py.
KNOWN_UNSERVED = frozenset(
    {10, 11, 12, 13, 14, 18, 19, 21, 22, 23, 24, 52, 53, 54, 55, 56, 57, 60, 65, 66, 67, 68}
    | {69, 70, 72, 73, 74, 75, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92}
    | set(range(93, 106))
)
# Requests with no payload the session handles by id alone.
NO_ARGS = frozenset({5, 16, 17, 49, 58, 61, 64})


def parse_request(fields: list[str]) -> Request:
    """Decode one client message. Raises RequestError or UnknownMessage."""
    if not fields:
        raise UnknownMessage("empty message")
    try:
        msg_id = int(fields[0])
    except ValueError:
        raise UnknownMessage(f"message id {fields[0]!r} is not a number") from None
    parser = _PARSERS.get(msg_id)
    if parser is not None:
        cur = FieldCursor(fields)
        return parser(msg_id, cur)
    if msg_id in NO_ARGS:
        return Request(msg_id)
    if msg_id in KNOWN_UNSERVED:
        raise RequestError(-1, 321, f"Error validating request: message {msg_id} not served")
    raise UnknownMessage(f"unknown message id {msg_id}")


def _start_api(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()  # version
    client_id = cur.int()
    opt = cur.str() if cur.pos < len(cur.fields) else ""
    return StartApi(msg_id, client_id, opt)


def _versioned_id(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()  # version
    return WithReqId(msg_id, cur.int())


def _versioned_flag(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    return FlagRequest(msg_id, cur.int())


def _completed_orders(msg_id: int, cur: FieldCursor) -> Request:
    return FlagRequest(msg_id, cur.int())


def _account_updates(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    return AccountUpdates(msg_id, cur.bool(), cur.str())


def _account_updates_multi(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    return AccountUpdatesMulti(msg_id, cur.int(), cur.str(), cur.str())


def _account_summary(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    return AccountSummary(msg_id, cur.int(), cur.str(), cur.str())


def _executions(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    req_id = cur.int()
    cur.req_id = req_id
    return ExecutionsRequest(
        msg_id, req_id, cur.int(), cur.str(), cur.str(), cur.str(), cur.str(), cur.str(), cur.str()
    )


def _contract_details(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    req_id = cur.int()
    cur.req_id = req_id
    contract = cur.contract()
    cur.skip(3)  # includeExpired, secIdType, secId
    cur.skip()  # issuerId (server version >= 176)
    return ContractDetailsRequest(msg_id, req_id, contract)


def _mkt_data(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    req_id = cur.int()
    cur.req_id = req_id
    contract = cur.contract()
    if contract.sec_type == "BAG":
        raise RequestError(req_id, 321, "Error validating request: combos not supported")
    if cur.bool():  # delta-neutral contract present
        cur.skip(3)
    generic = cur.str()
    snapshot = cur.bool()
    regulatory = cur.bool()
    return MktDataRequest(msg_id, req_id, contract, generic, snapshot, regulatory)


def _historical(msg_id: int, cur: FieldCursor) -> Request:
    req_id = cur.int()
    cur.req_id = req_id
    contract = cur.contract()
    if contract.sec_type == "BAG":
        raise RequestError(req_id, 321, "Error validating request: combos not supported")
    cur.skip()  # includeExpired
    end = cur.str()
    bar_size = cur.str()
    duration = cur.str()
    use_rth = cur.bool()
    what = cur.str()
    format_date = cur.int(1)
    keep = cur.bool()
    return HistoricalDataRequest(
        msg_id, req_id, contract, end, bar_size, duration, use_rth, what, format_date, keep
    )


def _real_time_bars(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    req_id = cur.int()
    cur.req_id = req_id
    contract = cur.contract()
    return RealTimeBarsRequest(msg_id, req_id, contract, cur.int(), cur.str(), cur.bool())


def _place_order(msg_id: int, cur: FieldCursor) -> Request:
    """Mirror of Client.placeOrder at server version 176 (reads what the engine needs)."""
    order_id = cur.int()
    cur.req_id = order_id
    contract = cur.contract()
    if contract.sec_type == "BAG":
        raise RequestError(order_id, 321, "Error validating request: combo orders not supported")
    cur.skip(2)  # secIdType, secId
    action = cur.str()
    total_qty = cur.float()
    order_type = cur.str()
    lmt_price = cur.float()
    aux_price = cur.float()
    tif = cur.str()
    oca_group = cur.str()
    account = cur.str()
    cur.skip(2)  # openClose, origin
    order_ref = cur.str()
    transmit = cur.bool()
    parent_id = cur.int()
    cur.skip(4)  # blockOrder, sweepToFill, displaySize, triggerMethod
    outside_rth = cur.bool()
    cur.skip(1)  # hidden
    cur.skip(3)  # shares allocation, discretionaryAmt, goodAfterTime
    good_till_date = cur.str()
    cur.skip(4)  # faGroup, faMethod, faPercentage, faProfile (< 177)
    cur.skip(4)  # modelCode, shortSaleSlot, designatedLocation, exemptCode
    oca_type = cur.int()
    # rule80A .. volatilityType: 17 fields, then deltaNeutralOrderType, deltaNeutralAuxPrice.
    cur.skip(17)
    delta_neutral_type = cur.str()
    cur.skip(1)
    if delta_neutral_type:
        cur.skip(8)
    cur.skip(2)  # continuousUpdate, referencePriceType
    trail_stop_price = cur.float()
    trailing_percent = cur.float()
    cur.skip(2)  # scaleInitLevelSize, scaleSubsLevelSize
    increment = cur.float()
    if increment is not None and increment > 0:
        cur.skip(7)
    cur.skip(3)  # scaleTable, activeStartTime, activeStopTime
    if cur.str():  # hedgeType
        cur.skip(1)
    cur.skip(4)  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
    if cur.bool():  # delta-neutral contract
        cur.skip(3)
    if cur.str():  # algoStrategy
        cur.skip(2 * cur.int())
    cur.skip(1)  # algoId
    what_if = cur.bool()
    cur.skip(4)  # orderMiscOptions, solicited, randomizeSize, randomizePrice
    if order_type in {"PEG BENCH", "PEGBENCH"}:
        cur.skip(5)
    if cur.int() > 0:
        raise RequestError(order_id, 321, "Error validating request: conditions not supported")
    if total_qty is None:
        raise RequestError(order_id, 320, "Error reading request: missing order quantity")
    return OrderRequest(
        msg_id,
        order_id,
        contract,
        action.upper(),
        total_qty,
        order_type.upper(),
        lmt_price,
        aux_price,
        tif.upper() or "DAY",
        oca_group,
        account,
        order_ref,
        transmit,
        parent_id,
        outside_rth,
        good_till_date,
        oca_type,
        trail_stop_price,
        trailing_percent,
        what_if,
    )


def _cancel_order(msg_id: int, cur: FieldCursor) -> Request:
    cur.skip()
    return WithReqId(msg_id, cur.int())  # manualCancelOrderTime follows; unused


_PARSERS = {
    71: _start_api,
    8: _versioned_id,  # reqIds: count
    2: _versioned_id,  # cancelMktData
    25: _versioned_id,  # cancelHistoricalData
    51: _versioned_id,  # cancelRealTimeBars
    63: _versioned_id,  # cancelAccountSummary
    77: _versioned_id,  # cancelAccountUpdatesMulti
    4: _cancel_order,
    59: _versioned_flag,  # reqMarketDataType
    15: _versioned_flag,  # reqAutoOpenOrders
    99: _completed_orders,
    6: _account_updates,
    76: _account_updates_multi,
    62: _account_summary,
    7: _executions,
    9: _contract_details,
    1: _mkt_data,
    20: _historical,
    50: _real_time_bars,
    3: _place_order,
}
