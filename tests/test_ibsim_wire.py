"""Wire layouts checked against ib_async itself: its Client encodes, its Decoder decodes."""

from __future__ import annotations

import logging
import struct
from datetime import UTC

import pytest
from ib_async import Contract, LimitOrder, Order, Stock
from ib_async.client import Client
from ib_async.decoder import Decoder

from ibsim import messages as msg
from ibsim import requests as rq
from ibsim.orders import Execution, OrderState, SimOrder
from ibsim.wire import MAGIC, FrameReader, ProtocolError, encode
from tests.sim_support import no_decode_errors_or_leaks  # noqa: F401


class _Recorder:
    """Stands in for ib_async's Wrapper: records every callback."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.defaultTimezone = UTC  # read by Decoder.execDetails

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))


def decode(data: bytes) -> list[tuple[str, tuple]]:
    """Feed framed server bytes to ib_async's Decoder (server version 176)."""
    recorder = _Recorder()
    decoder = Decoder(recorder, 176)  # type: ignore[arg-type]
    reader = FrameReader()
    reader.feed(data)
    for fields in reader.read_messages():
        decoder.interpret(fields)
    return recorder.calls


@pytest.fixture
def decoder_errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="ib_async.Decoder")
    return caplog


def client_bytes(call) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Messages ib_async's Client sends for `call(client)`, as field lists."""
    sent: list[bytes] = []
    client = Client(wrapper=None)  # type: ignore[arg-type]
    client._serverVersion = 176
    client.connState = Client.CONNECTED
    client.conn.sendMsg = sent.append  # type: ignore[method-assign]
    call(client)
    reader = FrameReader()
    for data in sent:
        reader.feed(data)
    return reader.read_messages()


def sample_order(**overrides: object) -> SimOrder:
    base: dict[str, object] = dict(
        order_id=7, client_id=2, perm_id=123456, account="DU1", symbol="AAA", con_id=99,
        exchange="SMART", action="SELL", total_qty=100.0, order_type="STP", lmt_price=None,
        aux_price=9.5, tif="DAY", oca_group="OCA1", oca_type=1, order_ref="exit-42",
        transmit=True, parent_id=5, outside_rth=False, state=OrderState.SUBMITTED,
    )  # fmt: skip
    base.update(overrides)
    return SimOrder(**base)  # type: ignore[arg-type]


def test_frame_reader_buffers_partial_reads_and_splits_messages() -> None:
    data = MAGIC + struct.pack(">I", 9) + b"v157..178" + encode(71, 2, 10, "") + encode(49, 1)
    reader = FrameReader()
    reader.feed(data[:3])
    assert reader.read_handshake() is None
    reader.feed(data[3:20])
    assert reader.read_handshake() == "v157..178"
    assert reader.read_messages() == []  # startApi still incomplete
    reader.feed(data[20:])
    assert reader.read_messages() == [["71", "2", "10", ""], ["49", "1"]]


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n", b"API\0\xff\xff\xff\xff"])
def test_frame_reader_rejects_wrong_magic_and_absurd_length(garbage: bytes) -> None:
    reader = FrameReader()
    reader.feed(garbage)
    with pytest.raises(ProtocolError):
        reader.read_handshake()


def test_place_order_parse_mirrors_ib_async_client() -> None:
    contract = Stock("AAA", "SMART", "USD")
    order = LimitOrder("BUY", 150, 10.25, orderRef="entry-1", tif="GTC", outsideRth=True)
    order.ocaGroup, order.ocaType, order.parentId, order.transmit = "G1", 1, 3, False
    (fields,) = client_bytes(lambda c: c.placeOrder(11, contract, order))
    req = rq.parse_request(fields)
    assert isinstance(req, rq.OrderRequest)
    assert (req.order_id, req.contract.symbol, req.action, req.total_qty) == (11, "AAA", "BUY", 150)
    assert (req.order_type, req.lmt_price, req.aux_price, req.tif) == ("LMT", 10.25, None, "GTC")
    assert (req.oca_group, req.oca_type, req.parent_id, req.transmit) == ("G1", 1, 3, False)
    assert (req.order_ref, req.outside_rth, req.what_if) == ("entry-1", True, False)


def test_trail_and_what_if_fields_parse() -> None:
    order = Order(action="SELL", totalQuantity=10, orderType="TRAIL", auxPrice=0.5)
    order.trailStopPrice, order.whatIf = 9.0, True
    (fields,) = client_bytes(lambda c: c.placeOrder(12, Stock("AAA", "SMART", "USD"), order))
    req = rq.parse_request(fields)
    assert isinstance(req, rq.OrderRequest)
    assert (req.aux_price, req.trail_stop_price, req.what_if) == (0.5, 9.0, True)


def test_requests_of_the_startup_sync_parse() -> None:
    from ib_async.objects import ExecutionFilter

    def calls(c: Client) -> None:
        c.reqPositions()
        c.reqOpenOrders()
        c.reqAccountUpdates(True, "DU1")
        c.reqAccountUpdatesMulti(5, "DU1", "", False)
        c.reqExecutions(6, ExecutionFilter(clientId=2, symbol="AAA"))
        c.reqContractDetails(7, Stock("AAA", "SMART", "USD"))
        c.reqMktData(8, Stock("AAA", "SMART", "USD"), "", True, False, [])
        c.reqHistoricalData(
            9, Stock("AAA", "SMART", "USD"), "", "1 D", "1 min", "TRADES", 1, 1, True, []
        )
        c.reqRealTimeBars(10, Stock("AAA", "SMART", "USD"), 5, "TRADES", False, [])
        c.cancelOrder(11, "")

    parsed = [rq.parse_request(f) for f in client_bytes(calls)]
    assert [p.msg_id for p in parsed] == [61, 5, 6, 76, 7, 9, 1, 20, 50, 4]
    executions, details, mkt, hist, rtb, cancel = parsed[4:]
    assert isinstance(executions, rq.ExecutionsRequest) and executions.client_id == 2
    assert isinstance(details, rq.ContractDetailsRequest) and details.contract.symbol == "AAA"
    assert isinstance(mkt, rq.MktDataRequest) and mkt.snapshot and mkt.req_id == 8
    assert isinstance(hist, rq.HistoricalDataRequest) and hist.keep_up_to_date
    assert (hist.bar_size, hist.duration, hist.use_rth) == ("1 min", "1 D", True)
    assert isinstance(rtb, rq.RealTimeBarsRequest) and rtb.bar_size == 5
    assert isinstance(cancel, rq.WithReqId) and cancel.req_id == 11


def test_unknown_message_id_and_truncated_request() -> None:
    with pytest.raises(rq.UnknownMessage):
        rq.parse_request(["7777"])
    with pytest.raises(rq.RequestError) as err:
        rq.parse_request(["3", "5", "0", "AAA"])
    assert err.value.code == 320


def test_open_order_decodes_in_ib_async(decoder_errors: pytest.LogCaptureFixture) -> None:
    order = sample_order()
    ((name, (order_id, contract, decoded, state)),) = decode(msg.open_order(order))
    assert name == "openOrder" and not decoder_errors.records
    assert (order_id, contract.symbol, contract.conId) == (7, "AAA", 99)
    assert (decoded.orderRef, decoded.permId, decoded.parentId, decoded.clientId) == (
        "exit-42",
        123456,
        5,
        2,
    )
    assert (decoded.orderType, decoded.auxPrice, decoded.ocaGroup, decoded.ocaType) == (
        "STP",
        9.5,
        "OCA1",
        1,
    )
    assert state.status == "Submitted"


def test_what_if_open_order_carries_margin(decoder_errors: pytest.LogCaptureFixture) -> None:
    ((_, (_, _, decoded, state)),) = decode(msg.open_order(sample_order(), what_if_margin=950.0))
    assert decoded.whatIf and float(state.initMarginChange) == 950.0
    assert not decoder_errors.records


def test_completed_order_decodes_in_ib_async(decoder_errors: pytest.LogCaptureFixture) -> None:
    order = sample_order(state=OrderState.FILLED, filled=100.0, completed_time=1795532400.0)
    ((name, (contract, decoded, state)),) = decode(msg.completed_order(order, "Filled"))
    assert name == "completedOrder" and not decoder_errors.records
    assert (contract.symbol, decoded.orderRef, decoded.permId) == ("AAA", "exit-42", 123456)
    assert (state.status, state.completedStatus) == ("Filled", "Filled")
    assert decoded.filledQuantity == 100.0


def test_execution_and_commission_decode(decoder_errors: pytest.LogCaptureFixture) -> None:
    e = Execution("0001.0002.01.01", 1795532400.0, 7, 2, 123456, "DU1", "AAA", 99, "SLD",
                  100.0, 9.49, 100.0, 9.49, "exit-42", 1.0, -51.0)  # fmt: skip
    calls = decode(msg.exec_details(-1, e) + msg.commission_report(e))
    assert [c[0] for c in calls] == ["execDetails", "commissionReport"]
    _, (req_id, contract, execution) = calls[0]
    assert (req_id, contract.symbol, execution.orderRef, execution.side) == (
        -1,
        "AAA",
        "exit-42",
        "SLD",
    )
    assert (execution.shares, execution.price, execution.permId) == (100.0, 9.49, 123456)
    assert execution.time.timestamp() == 1795532400.0
    report = calls[1][1][0]
    assert (report.commission, report.realizedPNL) == (1.0, -51.0)
    assert not decoder_errors.records


def test_account_messages_decode(decoder_errors: pytest.LogCaptureFixture) -> None:
    from ibsim.market import SymbolSpec

    spec = SymbolSpec("AAA", 99, "NASDAQ", 0.01, 10.0, "Aaa Inc")
    data = (
        msg.position("DU1", spec, 100.0, 10.01)
        + msg.portfolio(spec, 100.0, 10.5, 10.01, 0.0, "DU1")
        + msg.account_value("NetLiquidation", "1000.00", "USD", "DU1")
        + msg.contract_details(3, spec, "SMART", "20261124")
        + msg.contract_details_end(3)
    )
    calls = decode(data)
    assert [c[0] for c in calls] == [
        "position", "updatePortfolio", "updateAccountValue", "contractDetails", "contractDetailsEnd",
    ]  # fmt: skip
    assert calls[0][1][2:] == (100.0, 10.01)
    details = calls[3][1][1]
    assert (details.contract.conId, details.minTick, details.contract.primaryExchange) == (
        99,
        0.01,
        "NASDAQ",
    )
    assert details.longName == "Aaa Inc"
    assert not decoder_errors.records


def test_ticks_and_bars_decode(decoder_errors: pytest.LogCaptureFixture) -> None:
    rid = msg.req_id_field(4)
    data = (
        msg.with_req_id(msg.TICK_PRICE_HEAD, rid, msg.tick_price_tail(66, 10.5, 300))
        + msg.with_req_id(msg.TICK_SIZE_HEAD, rid, msg.tick_size_tail(74, 12345))
        + msg.historical_data(
            4, "a", "b", [("20261124 10:00:00 America/New_York", 1, 2, 0.5, 1.5, 100, 1.2, 3)]
        )
        + msg.historical_data_update(
            4, ("20261124 10:01:00 America/New_York", 1, 2, 0.5, 1.5, 100, 1.2, 3)
        )
        + msg.realtime_bar(4, (1795532400, 1, 2, 0.5, 1.5, 100, 1.2, 3))
        + msg.error(4, 10167, "delayed")
    )
    calls = decode(data)
    names = [c[0] for c in calls]
    assert names == ["priceSizeTick", "tickSize", "historicalData", "historicalDataEnd",
                     "historicalDataUpdate", "realtimeBar", "error"]  # fmt: skip
    assert calls[0][1] == (4, 66, 10.5, 300.0)
    bar = calls[4][1][1]
    assert (bar.close, bar.high, bar.volume) == (1.5, 2.0, 100.0)  # close comes before high
    assert calls[6][1][:2] == (4, 10167)
    assert not decoder_errors.records


def test_contract_query_fields_round_trip() -> None:
    contract = Contract(conId=5, symbol="AAA", secType="STK", exchange="SMART", currency="USD")
    (fields,) = client_bytes(lambda c: c.reqContractDetails(1, contract))
    req = rq.parse_request(fields)
    assert isinstance(req, rq.ContractDetailsRequest)
    assert (req.contract.con_id, req.contract.exchange, req.contract.currency) == (
        5,
        "SMART",
        "USD",
    )
