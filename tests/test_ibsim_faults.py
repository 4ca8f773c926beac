"""Faults as ib_async sees them on real IB, reconnects, bad input, and the control interface."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from ib_async import IB, LimitOrder, MarketOrder, StopOrder

from ibsim import ctl
from ibsim.wire import MAGIC, FrameReader, encode, frame
from tests.sim_support import (  # noqa: F401
    client,
    collect_errors,
    ibsim_gateway,
    no_decode_errors_or_leaks,
    us_stock,
    wait_for,
)


def streaming(ib: IB, symbol: str):  # type: ignore[no-untyped-def]
    contract = us_stock(symbol)
    ib.qualifyContracts(contract)
    ticker = ib.reqMktData(contract)
    wait_for(lambda: ticker.last > 0, what=f"{symbol} ticks", ib=ib)
    return ticker


def updates_within(ib: IB, ticker, seconds: float) -> int:  # type: ignore[no-untyped-def]
    count = 0

    def on_update(t) -> None:  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1

    ticker.updateEvent += on_update
    ib.sleep(seconds)
    ticker.updateEvent -= on_update
    return count


def test_drop_one_client_others_keep_working() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as trader, client(gw, 10) as exits:
        dropped: list[bool] = []
        exits.disconnectedEvent += lambda: dropped.append(True)
        gw.faults.drop_client(10)
        wait_for(
            lambda: dropped,
            what="disconnectedEvent on client 10",
            disconnect_expected=True,
            ib=exits,
        )
        assert not exits.isConnected()
        assert trader.isConnected() and trader.reqCurrentTime() is not None
        assert gw.account.state()["clients"] == [2]


def test_drop_all_disconnects_everyone() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as a, client(gw, 10) as b:
        assert gw.faults.drop_all() == 2
        wait_for(
            lambda: not a.isConnected() and not b.isConnected(),
            what="both dropped",
            disconnect_expected=True,
            ib=a,
        )


def test_1100_stops_the_stream_fills_recovered_by_req_executions_after_1102() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        ticker = streaming(ib, "AAA")
        contract = ticker.contract
        last = gw.quote("AAA").last
        trade = ib.placeOrder(contract, LimitOrder("BUY", 10, round(last - 5, 2), orderRef="dip"))
        wait_for(lambda: trade.orderStatus.status == "Submitted", ib=ib)
        gw.faults.connectivity_lost(2)
        wait_for(lambda: any(c == 1100 for _, c, _ in errors), what="1100", ib=ib)
        gw.faults.set_price("AAA", round(last - 6, 2))  # fills during the outage
        assert updates_within(ib, ticker, 0.3) == 0
        assert trade.orderStatus.status == "Submitted"  # the fill was lost to the stream
        gw.faults.connectivity_restored(2, data_lost=False)
        wait_for(lambda: any(c == 1102 for _, c, _ in errors), what="1102", ib=ib)
        wait_for(lambda: updates_within(ib, ticker, 0.1) > 0, what="ticks resume after 1102", ib=ib)
        fills = ib.reqExecutions()
        assert [f.execution.orderRef for f in fills] == ["dip"]


def test_1101_data_lost_ends_subscriptions_until_resubscribed() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        ticker = streaming(ib, "BBB")
        gw.faults.connectivity_lost(2)
        gw.faults.connectivity_restored(2, data_lost=True)
        wait_for(lambda: any(c == 1101 for _, c, _ in errors), what="1101", ib=ib)
        assert updates_within(ib, ticker, 0.3) == 0
        ib.cancelMktData(ticker.contract)
        again = ib.reqMktData(ticker.contract)
        wait_for(lambda: updates_within(ib, again, 0.1) > 0, what="resubscribed ticks", ib=ib)


def test_2110_notice_arrives_as_warning() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        gw.faults.farm_broken()
        wait_for(lambda: any(c == 2110 for _, c, _ in errors), ib=ib)
        assert ib.isConnected()


def test_pacing_violation_on_next_history_request_only() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        gw.faults.pacing_violation_next(2)
        refused = ib.reqHistoricalData(contract, "", "600 S", "1 min", "TRADES", True, timeout=5)
        assert len(refused) == 0 and any(c == 162 for _, c, _ in errors)
        assert (
            len(ib.reqHistoricalData(contract, "", "600 S", "1 min", "TRADES", True, timeout=5)) > 0
        )


def test_reject_next_order_with_reason() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        gw.faults.reject_next_order("margin check failed", client_id=2)
        rejected = ib.placeOrder(contract, MarketOrder("BUY", 10))
        wait_for(lambda: rejected.orderStatus.status == "Cancelled", ib=ib)
        assert any(c == 201 and "margin check failed" in t for _, c, t in errors)
        accepted = ib.placeOrder(contract, MarketOrder("BUY", 10))
        wait_for(lambda: accepted.orderStatus.status == "Filled", ib=ib)


def test_refused_modification_keeps_the_order_working_and_open_orders_say_so() -> None:
    """IB refuses a modification with an order error (201) and the order keeps its old fields;
    ib_async marks it Cancelled locally all the same. Asking IB for our open orders restores
    it (status and fields), which is how the exit manager learns the truth."""
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        ib.placeOrder(contract, MarketOrder("BUY", 10))
        wait_for(lambda: any(p.position == 10 for p in ib.positions()), what="bought", ib=ib)
        stop_price = round(gw.quote("AAA").last * 0.5, 2)
        stop = ib.placeOrder(contract, StopOrder("SELL", 10, stop_price))
        wait_for(lambda: stop.orderStatus.status == "PreSubmitted", what="stop working", ib=ib)
        gw.faults.refuse_next_modification("price too far", client_id=2)
        stop.order.auxPrice = round(stop_price * 3, 2)
        ib.placeOrder(contract, stop.order)
        wait_for(lambda: stop.orderStatus.status == "Cancelled", what="local Cancelled", ib=ib)
        assert any(c == 201 and "price too far" in t for _, c, t in errors)
        [book] = [o for o in gw.account.open_orders() if o["order_id"] == stop.order.orderId]
        assert book["aux_price"] == stop_price and book["status"] == "PreSubmitted"
        ib.reqOpenOrders()
        assert stop.orderStatus.status == "PreSubmitted" and not stop.isDone()
        assert stop.order.auxPrice == stop_price


def test_held_cancel_stays_pending_cancel_until_released_then_cancels_with_202() -> None:
    """The simulator confirmed every cancel at once, so nothing could show a client that
    sells before its cancels are confirmed."""
    with ibsim_gateway(control_port=0) as gw, client(gw, 2) as ib, client(gw, 3) as other:
        errors = collect_errors(ib)
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        far_below = round(gw.quote("AAA").last * 0.5, 2)
        held = ib.placeOrder(contract, LimitOrder("BUY", 10, far_below))
        free = other.placeOrder(contract, LimitOrder("BUY", 10, far_below))
        wait_for(lambda: held.orderStatus.status == "Submitted", what="order working", ib=ib)
        wait_for(lambda: free.orderStatus.status == "Submitted", what="order working", ib=other)
        assert ctl.call(gw.control_port, "hold_cancels", {"client_id": 2})["ok"]

        ib.cancelOrder(held.order)
        other.cancelOrder(free.order)
        wait_for(lambda: free.orderStatus.status == "Cancelled", what="other client's", ib=other)
        [book] = [o for o in gw.account.open_orders() if o["order_id"] == held.order.orderId]
        assert book["status"] == "PendingCancel" and book["client_id"] == 2
        ib.sleep(0.3)  # room for a wrong confirmation to arrive
        assert held.orderStatus.status == "PendingCancel" and not held.isDone()
        assert not [e for e in errors if e[1] == 202]

        released = ctl.call(gw.control_port, "release_cancels", {})["result"]
        assert released["cancelled"] == 1
        wait_for(lambda: held.orderStatus.status == "Cancelled", what="cancel confirmed", ib=ib)
        wait_for(lambda: (held.order.orderId, 202) in [e[:2] for e in errors], what="202", ib=ib)
        assert not gw.account.open_orders()


def test_held_cancel_of_a_stop_that_fills_meanwhile_is_refused_with_10148() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        contract = us_stock("BBB")
        ib.qualifyContracts(contract)
        entry = ib.placeOrder(contract, MarketOrder("BUY", 10))
        wait_for(lambda: entry.orderStatus.status == "Filled", what="entry", ib=ib)
        stop_at = round(entry.orderStatus.avgFillPrice * 0.95, 2)
        stop = ib.placeOrder(contract, StopOrder("SELL", 10, stop_at))
        wait_for(lambda: stop.orderStatus.status == "PreSubmitted", what="stop working", ib=ib)
        gw.faults.hold_cancels()

        ib.cancelOrder(stop.order)
        wait_for(lambda: gw.account.open_orders()[0]["status"] == "PendingCancel", ib=ib)
        gw.faults.set_price("BBB", round(stop_at - 0.05, 2))  # the stop fires while it waits
        wait_for(lambda: stop.orderStatus.status == "Filled", what="held stop filled", ib=ib)
        assert gw.account.positions() == {}

        assert gw.faults.release_cancels()["cancelled"] == 0
        wait_for(
            lambda: (stop.order.orderId, 10148) in [e[:2] for e in errors], what="10148", ib=ib
        )
        assert stop.orderStatus.status == "Filled"
        assert [(e["side"], e["shares"]) for e in gw.account.executions()] == [
            ("BOT", 10), ("SLD", 10)
        ]  # fmt: skip


def test_acks_of_next_order_dropped_but_requests_still_list_it() -> None:
    """drop_acks_of_next_order: IB works the order (it fills) yet the client hears nothing
    about it, ticks go on, and open/completed orders and executions answer with it."""
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        ticker = streaming(ib, "AAA")
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        gw.faults.drop_acks_of_next_order(2)
        unheard = ib.placeOrder(contract, MarketOrder("BUY", 10, orderRef="unheard"))
        wait_for(lambda: gw.account.positions().get("AAA") == 10, what="the fill at IB", ib=ib)
        assert updates_within(ib, ticker, 0.3) > 0  # alive: everything else flows
        assert unheard.orderStatus.status == "PendingSubmit" and unheard.fills == []
        fills = ib.reqExecutions()
        assert [(f.execution.orderRef, f.execution.shares) for f in fills] == [("unheard", 10)]
        done = [t.order.orderRef for t in ib.reqCompletedOrders(apiOnly=True)]
        assert done == ["unheard"]
        resting = ib.placeOrder(contract, LimitOrder("BUY", 5, 1.0, orderRef="heard"))
        wait_for(lambda: resting.orderStatus.status == "Submitted", what="the next ack", ib=ib)
        assert [t.order.orderRef for t in ib.reqAllOpenOrders()] == ["heard"]
        assert unheard.orderStatus.status == "PendingSubmit"


def test_stop_ticks_for_one_symbol_then_resume() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        quiet, busy = streaming(ib, "AAA"), streaming(ib, "BBB")
        gw.faults.stop_ticks("AAA")
        ib.sleep(0.2)  # let ticks already on the wire arrive
        assert updates_within(ib, quiet, 0.4) == 0
        assert updates_within(ib, busy, 0.4) > 0
        gw.faults.resume_ticks("AAA")
        wait_for(lambda: updates_within(ib, quiet, 0.1) > 0, what="AAA ticks resume", ib=ib)


def test_go_silent_keeps_socket_open_but_answers_nothing() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        ticker = streaming(ib, "CCC")
        gw.faults.go_silent()
        ib.sleep(0.2)  # let ticks already on the wire arrive
        with pytest.raises(asyncio.TimeoutError):
            ib.run(asyncio.wait_for(ib.reqCurrentTimeAsync(), 0.5))
        assert updates_within(ib, ticker, 0.3) == 0
        assert ib.isConnected()
        gw.faults.resume()
        assert ib.reqCurrentTime() is not None


def test_restart_refuses_connections_then_restores_account_and_ids() -> None:
    with ibsim_gateway() as gw:
        with client(gw, 2) as ib:
            contract = us_stock("AAA")
            ib.qualifyContracts(contract)
            filled = ib.placeOrder(contract, MarketOrder("BUY", 10, orderRef="before-restart"))
            wait_for(lambda: filled.orderStatus.status == "Filled", ib=ib)
            far = round(gw.quote("AAA").bid * 0.5, 2)
            resting = ib.placeOrder(
                contract, LimitOrder("BUY", 5, far, tif="GTC", orderRef="gtc-1")
            )
            wait_for(lambda: resting.orderStatus.status == "Submitted", ib=ib)
            last_id = resting.order.orderId
            gw.faults.restart(down_seconds=1.0)
            wait_for(
                lambda: not ib.isConnected(),
                what="dropped by restart",
                disconnect_expected=True,
                ib=ib,
            )
        with pytest.raises(ConnectionRefusedError):
            IB().connect("127.0.0.1", gw.port, clientId=2, timeout=2)
        deadline = time.monotonic() + 5
        while True:
            try:
                again = IB().connect(
                    "127.0.0.1", gw.port, clientId=2, timeout=2, raiseSyncErrors=True
                )
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "gateway did not come back"
                time.sleep(0.1)
        try:
            assert [t.order.orderRef for t in again.openTrades()] == ["gtc-1"]
            assert [f.execution.orderRef for f in again.fills()] == ["before-restart"]
            assert {p.contract.symbol: p.position for p in again.positions()} == {"AAA": 10.0}
            assert again.client.getReqId() > last_id
        finally:
            again.disconnect()


def test_reconnect_restores_open_orders_executions_and_increasing_ids() -> None:
    with ibsim_gateway() as gw:
        with client(gw, 2) as ib:
            contract = us_stock("BBB")
            ib.qualifyContracts(contract)
            entry = ib.placeOrder(contract, MarketOrder("BUY", 20, orderRef="entry-BBB"))
            wait_for(lambda: entry.orderStatus.status == "Filled", ib=ib)
            far = round(gw.quote("BBB").ask * 2, 2)
            target = ib.placeOrder(contract, LimitOrder("SELL", 20, far, orderRef="target-BBB"))
            wait_for(lambda: target.orderStatus.status == "Submitted", ib=ib)
            used = target.order.orderId
        with client(gw, 2) as ib:
            (trade,) = ib.openTrades()
            assert (trade.order.orderRef, trade.order.permId) == ("target-BBB", target.order.permId)
            (fill,) = ib.fills()
            assert (
                fill.execution.orderRef == "entry-BBB" and fill.commissionReport.commission == 1.0
            )
            new_order = ib.placeOrder(contract, LimitOrder("SELL", 1, far))
            assert new_order.order.orderId > used
            wait_for(lambda: new_order.orderStatus.status == "Submitted", ib=ib)
            assert {o["order_ref"] for o in gw.account.open_orders()} == {"target-BBB", ""}


# -- bad input from raw sockets ------------------------------------------------------------


def raw_connect(port: int, client_id: int | None = None) -> tuple[socket.socket, FrameReader]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    reader = FrameReader()
    reader.handshake_done = True
    if client_id is not None:
        sock.sendall(MAGIC + frame(b"v157..178"))
        sock.sendall(encode(71, 2, client_id, ""))
        read_until(sock, reader, lambda msgs: any(m[0] == "9" for m in msgs))
    return sock, reader


def read_until(
    sock: socket.socket, reader: FrameReader, done, timeout: float = 3.0
) -> list[list[str]]:  # type: ignore[no-untyped-def]
    messages: list[list[str]] = []
    deadline = time.monotonic() + timeout
    while not done(messages):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            messages.append(["<closed>"])
            break
        reader.feed(data)
        messages += reader.read_messages()
    return messages


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(3)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x01garbage\xff\xfe" * 10,  # wrong magic
        MAGIC + struct.pack(">I", 0x7FFFFFFF),  # absurd frame length
        MAGIC + frame(b"v1..2"),  # no common version
        MAGIC + frame(b"v157..178") + struct.pack(">I", 5) + b"\xff\xfe\x00\x00\x00",  # not UTF-8
    ],
)
def test_bad_bytes_drop_that_client_only(payload: bytes) -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        sock, _ = raw_connect(gw.port)
        sock.sendall(payload)
        assert closed_by_server(sock)
        sock.close()
        assert ib.reqCurrentTime() is not None


def test_unknown_message_id_gets_505_and_disconnect() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        sock, reader = raw_connect(gw.port, client_id=77)
        sock.sendall(encode(7777, 1))
        messages = read_until(sock, reader, lambda msgs: any(m[0] == "<closed>" for m in msgs))
        assert any(m[:1] == ["4"] and m[3] == "505" for m in messages)
        sock.close()
        assert ib.reqCurrentTime() is not None


def test_absurd_field_values_are_rejected_but_client_stays() -> None:
    with ibsim_gateway() as gw:
        sock, reader = raw_connect(gw.port, client_id=78)
        sock.sendall(
            encode(
                3,
                50,
                0,
                "AAA",
                "STK",
                "",
                0,
                "",
                "",
                "SMART",
                "",
                "USD",
                "",
                "",
                "",
                "",
                "BUY",
                "abc",
            )
        )
        sock.sendall(encode(59, 1, 99))  # market data type 99
        sock.sendall(encode(49, 1))
        messages = read_until(sock, reader, lambda msgs: any(m[0] == "49" for m in msgs))
        codes = [m[3] for m in messages if m[0] == "4"]
        assert "320" in codes and "321" in codes
        sock.close()
        assert gw.account.open_orders() == []


def test_truncated_frame_then_close_does_not_hurt_the_gateway() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        sock, _ = raw_connect(gw.port, client_id=79)
        sock.sendall(struct.pack(">I", 100) + b"3\x00")
        sock.close()
        wait_for(lambda: gw.account.state()["clients"] == [2], what="half-frame client gone", ib=ib)
        assert ib.reqCurrentTime() is not None


# -- control interface and standalone process ----------------------------------------------


def test_control_http_and_ctl_commands() -> None:
    with ibsim_gateway(control_port=0) as gw, client(gw, 2) as ib:
        port = gw.control_port
        assert port
        ticker = streaming(ib, "AAA")
        assert ctl.call(port, "set_price", {"symbol": "AAA", "price": 33.33})["ok"]
        wait_for(lambda: ticker.last == 33.33, what="price set over HTTP", ib=ib)
        assert ctl.call(port, "state", {})["result"]["clients"] == [2]
        assert ctl.call(port, "explode", {})["ok"] is False
        assert ctl.call(port, "drop_client", {"client_id": 55})["ok"] is False
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        done = subprocess.run(
            [sys.executable, "-m", "ibsim.ctl", "--control-port", str(port), "drop_client", "client_id=2"],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"] is True
        wait_for(
            lambda: not ib.isConnected(), what="dropped via ctl", disconnect_expected=True, ib=ib
        )


def test_standalone_process_serves_and_shuts_down_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock_file = tmp_path / "clock.json"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "PYTHONWARNINGS": "error::RuntimeWarning"}
    args = [sys.executable, "-m", "ibsim", "--port", "0", "--symbol-names", "AAA,BBB",
            "--date", "2026-11-24", "--start", "10:00", "--speed", "60",
            "--clock-file", str(clock_file), "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        assert json.loads(clock_file.read_text())["speed"] == 60.0
        ib = IB()
        ib.connect("127.0.0.1", port, clientId=3, timeout=5, raiseSyncErrors=True)
        assert ib.reqCurrentTime().year == 2026
        ib.disconnect()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "Task was destroyed" not in stderr and "Traceback" not in stderr


def test_bad_cli_flag_is_a_one_line_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ibsim", "--speed", "fast"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--speed" in done.stderr
