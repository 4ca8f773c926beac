"""liquidate_all.py on the simulated gateway: flat at IB, database consistent, never a short."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sim_support import buy_now, client, run_tool, sim_db, start_gateway

import liquidate_all as liq
from core.clock import SimulatedTimeSource, write_sim_clock_file


@pytest.fixture
def gateway(tmp_path):
    gw = start_gateway(tmp_path)
    yield gw
    gw.stop()


def _symbols(gw, n):
    return list(gw.gateway.market.symbols)[:n]


def test_liquidate_flattens_every_broker_position_and_records_manual_closes(gateway, tmp_path):
    db = sim_db(tmp_path)
    ib = client(gateway.port, 2)  # the day trader's client id: its orders are not ours to see
    first, second, third = _symbols(gateway, 3)
    try:
        buy_now(ib, db, first, 100)
        buy_now(ib, db, second, 50)
        buy_now(ib, db, third, 30, protect=False)
    finally:
        ib.disconnect()
    assert len(gateway.account.open_orders()) == 4  # two OCA pairs at IB

    result = run_tool(tmp_path, gateway.port, "liquidate_all.py", "--yes")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "flat" in result.stdout
    assert gateway.account.positions() == {}
    assert gateway.account.open_orders() == []
    closed = {row["symbol"]: row for row in db.get_closed_today()}
    assert set(closed) == {first, second, third}
    assert {row["exit_reason"] for row in closed.values()} == {"MANUAL"}
    assert db.get_active_positions() == []
    # Every execution at IB is in the database, once, with its orderRef.
    executions = {e["exec_id"]: e for e in gateway.account.executions()}
    trades = {t["exec_id"]: t for t in db.get_trades_by_date(db.clock.today_str())}
    assert set(executions) == set(trades)
    sells = [t for t in trades.values() if t["side"] == "SELL"]
    assert {t["agent"] for t in sells} == {"liquidate_all"}
    assert sum(t["quantity"] for t in sells) == 180  # exactly what was held, not a share more
    for sell in sells:
        intent = db.get_order_intent(sell["order_ref"])
        assert intent is not None and intent["state"] == "FILLED"
        assert intent["purpose"] == "MANUAL"
    assert db.entries_halted(), "entries halted after a liquidation"
    assert "new entries stay halted until: python liquidate_all.py --resume" in result.stdout


def test_dry_run_and_unconfirmed_run_send_nothing(gateway, tmp_path):
    db = sim_db(tmp_path)
    ib = client(gateway.port, 2)
    [symbol] = _symbols(gateway, 1)
    try:
        buy_now(ib, db, symbol, 10)
    finally:
        ib.disconnect()
    dry = run_tool(tmp_path, gateway.port, "liquidate_all.py", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"SELL 10 {symbol}" in dry.stdout and "nothing sent" in dry.stdout
    declined = run_tool(tmp_path, gateway.port, "liquidate_all.py", stdin="no\n")
    assert declined.returncode == 1 and "not confirmed" in declined.stdout
    assert gateway.account.positions() == {symbol: 10}
    assert len(gateway.account.open_orders()) == 2
    assert db.entries_halted() is None


def test_database_row_without_broker_position_is_not_sold(gateway, tmp_path):
    """The BYND loop: selling what IB does not hold opens a short. Broker positions only."""
    db = sim_db(tmp_path)
    [symbol] = _symbols(gateway, 1)
    db.add_active_position(symbol, 100, 10.0, 10.18, 9.91)
    result = run_tool(tmp_path, gateway.port, "liquidate_all.py", "--yes", "--emergency")
    assert result.returncode == 0, result.stderr
    assert gateway.account.executions() == []
    assert gateway.account.positions() == {}
    assert "exit manager reconciles" in result.stdout


def test_plan_never_exceeds_the_position_and_buys_back_a_short():
    def pos(symbol, qty, account="DU1"):
        contract = SimpleNamespace(symbol=symbol, conId=1, currency="USD")
        return SimpleNamespace(account=account, contract=contract, position=qty)

    steps = liq.plan_flatten([pos("A", 37), pos("B", 0), pos("C", -5), pos("D", 9, "DU2")], "DU1")
    assert [(s.symbol, s.action, s.quantity) for s in steps] == [("A", "SELL", 37), ("C", "BUY", 5)]


def test_extended_hours_order_is_a_limit_through_the_last_price():
    step = liq.FlattenStep("A", 1, "USD", 10, "SELL", 10)
    order = liq.flatten_order(step, regular_hours=False, last=50.0)
    assert order.orderType == "LMT" and order.lmtPrice == 49.0 and order.outsideRth
    assert liq.flatten_order(step, regular_hours=True, last=None).orderType == "MKT"
    with pytest.raises(liq.ToolError, match="no last price"):
        liq.flatten_order(step, regular_hours=False, last=None)


def test_unreachable_gateway_is_one_clear_line(tmp_path):
    write_sim_clock_file(tmp_path / "sim_clock.json", SimulatedTimeSource(0.0, 1.8e9))
    result = run_tool(tmp_path, 1, "liquidate_all.py", "--yes")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "connection refused" in result.stderr
