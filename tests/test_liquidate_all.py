"""liquidate_all.py on the simulated gateway: flat at IB, database consistent, never a short."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mode_rule import COMBOS, combo_id, rule_refusal, set_environment
from sim_support import buy_now, client, run_tool, sim_db, start_gateway

import ib_tools
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
    assert (tmp_path / "KILL_SWITCH").exists(), "entries halted after a liquidation"


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
    assert not (tmp_path / "KILL_SWITCH").exists()


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


# -- paper / live ------------------------------------------------------------------------------


def test_paper_mode_never_flattens_a_live_account(tmp_path):
    """Bug pinned: liquidate_all never checked the account, and in paper mode it sold every
    position of a non-paper (U...) account."""
    gateway = start_gateway(tmp_path, account="U7654321")
    try:
        db = sim_db(tmp_path)
        ib = client(gateway.port, 2)
        [symbol] = _symbols(gateway, 1)
        try:
            buy_now(ib, db, symbol, 40, protect=False)
        finally:
            ib.disconnect()
        orders_before = gateway.account.completed_orders()

        result = run_tool(tmp_path, gateway.port, "liquidate_all.py", "--yes")

        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            "liquidate_all: error: account U7654321 is a live (non-paper) account but this is "
            "paper trading: connect to a gateway logged in to a paper account (DU...), or set "
            "TRADING_MODE=live and add --live to trade real money"
        ]
        assert gateway.account.positions() == {symbol: 40}
        assert gateway.account.open_orders() == []
        assert gateway.account.completed_orders() == orders_before  # no order reached IB
        assert not (tmp_path / "KILL_SWITCH").exists()
        live = run_tool(tmp_path, gateway.port, "liquidate_all.py", "--live", "--dry-run",
                        env={"TRADING_MODE": "live"})  # fmt: skip
        assert live.returncode == 0, live.stderr
        assert "account U7654321: 1 position(s)" in live.stdout
    finally:
        gateway.stop()


def test_live_flag_never_flattens_a_paper_account(gateway, tmp_path):
    db = sim_db(tmp_path)
    ib = client(gateway.port, 2)
    [symbol] = _symbols(gateway, 1)
    try:
        buy_now(ib, db, symbol, 10, protect=False)
    finally:
        ib.disconnect()
    result = run_tool(tmp_path, gateway.port, "liquidate_all.py", "--live", "--yes",
                      env={"TRADING_MODE": "live"})  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "liquidate_all: error: account DU1234567 is a paper account but this run trades real "
        "money (--live and TRADING_MODE=live)"
    )
    assert result.stderr.strip().count("\n") == 0
    assert gateway.account.positions() == {symbol: 10}


@pytest.mark.parametrize(("flag", "mode", "port"), COMBOS, ids=map(combo_id, COMBOS))
def test_start_follows_the_one_paper_live_rule(flag, mode, port, tmp_path, monkeypatch, capsys):
    """Bug pinned: liquidate_all had no --live and traded whatever TRADING_MODE said."""
    set_environment(monkeypatch, tmp_path, mode, port)
    argv = ["--yes", *(["--live"] if flag else [])]
    refusal = rule_refusal(flag, mode, port)
    if refusal is None:
        assert ib_tools.settings_for(liq.build_parser().parse_args(argv)).is_live is flag
        return

    def connect(*_):
        raise AssertionError("got past the start-up checks: it would connect and sell")

    monkeypatch.setattr(ib_tools, "connect", connect)
    assert liq.main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [f"liquidate_all: error: {refusal}"]
