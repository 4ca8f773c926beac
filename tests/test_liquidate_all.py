"""liquidate_all.py on the simulated gateway: flat at IB, database consistent, never a short."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from ib_async import LimitOrder
from mode_rule import COMBOS, combo_id, rule_refusal, set_environment
from sim_support import buy, client, gateway, run_tool, sim_db, stock, tool_env, wait_for

import ib_tools
import liquidate_all as liq
from core.clock import SimulatedTimeSource, write_sim_clock_file
from core.settings import PROJECT_ROOT
from ib.intents import IntentOrders
from observability import ReentryBlocked
from trading.entries import KILL_SWITCH


@pytest.fixture
def gw(tmp_path):
    with gateway(tmp_path) as running:
        yield running


def _symbols(gw, n):
    return list(gw.gateway.market.symbols)[:n]


def _events(tmp_path, name):
    """The tool's JSON log records named `name`."""
    found = []
    for path in (tmp_path / "logs").glob("liquidate_all_run_*.json"):
        found += [json.loads(line) for line in path.read_text().splitlines() if name in line]
    return [record for record in found if record.get("event") == name]


def test_liquidate_flattens_every_broker_position_and_records_manual_closes(gw, tmp_path):
    db = sim_db(tmp_path)
    ib = client(gw.port, 2)  # the day trader's client id: its orders are not ours to see
    first, second, third = _symbols(gw, 3)
    try:
        buy(ib, first, 100, db=db)
        buy(ib, second, 50, db=db)
        buy(ib, third, 30, db=db, protect=False)
    finally:
        ib.disconnect()
    assert len(gw.account.open_orders()) == 4  # two OCA pairs at IB

    result = run_tool(tmp_path, gw.port, "liquidate_all.py", "--yes")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "flat" in result.stdout
    assert gw.account.positions() == {}
    assert gw.account.open_orders() == []
    closed = {row["symbol"]: row for row in db.get_closed_today()}
    assert set(closed) == {first, second, third}
    assert {row["exit_reason"] for row in closed.values()} == {"MANUAL"}
    assert db.get_active_positions() == []
    # Every execution at IB is in the database, once, with its orderRef.
    executions = {e["exec_id"]: e for e in gw.account.executions()}
    trades = {t["exec_id"]: t for t in db.get_trades_by_date(db.clock.today_str())}
    assert set(executions) == set(trades)
    sells = [t for t in trades.values() if t["side"] == "SELL"]
    assert {t["agent"] for t in sells} == {"liquidate_all"}
    assert sum(t["quantity"] for t in sells) == 180  # exactly what was held, not a share more
    for sell in sells:  # IB's commission report is on each of its fills' rows
        assert sell["commission"] == pytest.approx(executions[sell["exec_id"]]["commission"])
    for sell in sells:
        intent = db.get_order_intent(sell["order_ref"])
        assert intent is not None and intent["state"] == "FILLED"
        assert intent["purpose"] == "MANUAL"
    assert db.entries_halted(), "entries halted after a liquidation"
    assert "new entries stay halted until: python liquidate_all.py --resume" in result.stdout


def test_dry_run_and_unconfirmed_run_send_nothing(gw, tmp_path):
    db = sim_db(tmp_path)
    ib = client(gw.port, 2)
    [symbol] = _symbols(gw, 1)
    try:
        buy(ib, symbol, 10, db=db)
    finally:
        ib.disconnect()
    dry = run_tool(tmp_path, gw.port, "liquidate_all.py", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"SELL 10 {symbol}" in dry.stdout and "nothing sent" in dry.stdout
    declined = run_tool(tmp_path, gw.port, "liquidate_all.py", stdin="no\n")
    assert declined.returncode == 1 and "not confirmed" in declined.stdout
    assert gw.account.positions() == {symbol: 10}
    assert len(gw.account.open_orders()) == 2
    assert db.entries_halted() is None


def test_database_row_without_broker_position_is_not_sold(gw, tmp_path):
    """The BYND loop: selling what IB does not hold opens a short. Broker positions only."""
    db = sim_db(tmp_path)
    [symbol] = _symbols(gw, 1)
    db.add_active_position(symbol, 100, 10.0, 10.18, 9.91)
    result = run_tool(tmp_path, gw.port, "liquidate_all.py", "--yes", "--emergency")
    assert result.returncode == 0, result.stderr
    assert gw.account.executions() == []
    assert gw.account.positions() == {}
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


def test_position_that_appears_mid_liquidation_is_sold_in_the_next_round(gw, tmp_path):
    """The flake of test_end_to_end (NOT FLAT): an entry whose intent was written just before
    the halt reaches IB after the first flatten snapshot and fills. The halt hands that intent
    to the flatten loop, which waits for it and sells its shares in the next round."""
    db = sim_db(tmp_path)
    ib = client(gw.port, 2)  # the day trader's client id
    held, late = _symbols(gw, 2)
    try:
        buy(ib, held, 100, db=db)
        entries = IntentOrders(ib, db, "day_trader")  # keeps the late entry's intent in step
        late_ref = db.create_order_intent(
            late, "BUY", 40, "MKT", "day_trader", purpose="entry:standard", guard_entry=True
        )
        tool = subprocess.Popen(
            [sys.executable, "liquidate_all.py", "--yes"],
            cwd=PROJECT_ROOT, env=tool_env(tmp_path, gw.port),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # The tool's first round sells what IB held at its snapshot...
            wait_for(
                lambda: any(e["side"] == "SLD" for e in gw.account.executions()),
                30,
                "the first round's sell",
            )
            # ...then the entry written before the halt reaches IB and fills.
            buy(ib, late, 40, order_ref=late_ref)
            out, err = tool.communicate(timeout=90)
        finally:
            if tool.poll() is None:
                tool.kill()
        entries.flush()
    finally:
        ib.disconnect()

    assert tool.returncode == 0, out + err
    assert "flat" in out
    assert gw.account.positions() == {}
    sold = {e["symbol"]: 0.0 for e in gw.account.executions()}
    for e in gw.account.executions():
        sold[e["symbol"]] += e["shares"] if e["side"] == "SLD" else -e["shares"]
    assert sold == {held: 0.0, late: 0.0}  # each sold exactly as held: never a short
    tool_sells = [i for i in db.get_intents_by_date(db.clock.today_str()) if i["agent"] == liq.TOOL]
    assert sorted((i["symbol"], i["quantity"], i["state"]) for i in tool_sells) == sorted(
        [(held, 100, "FILLED"), (late, 40, "FILLED")]
    )
    assert db.get_order_intent(late_ref)["state"] == "FILLED"


def test_entry_written_before_the_halt_and_sent_after_it_is_waited_for_and_sold(gw, tmp_path):
    """Nothing is held when the halt commits, but one entry intent is already written: its
    program sends the order a moment later. The tool must not call the account flat before
    that entry has reached IB (or clearly never left): it waits, then sells the fill."""
    db = sim_db(tmp_path)
    ib = client(gw.port, 2)
    [symbol] = _symbols(gw, 1)
    try:
        entries = IntentOrders(ib, db, "day_trader")
        ref = db.create_order_intent(
            symbol, "BUY", 25, "MKT", "day_trader", purpose="entry:standard", guard_entry=True
        )
        tool = subprocess.Popen(
            [sys.executable, "liquidate_all.py", "--yes"],
            cwd=PROJECT_ROOT, env=tool_env(tmp_path, gw.port),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # Sent once the tool has halted entries and found the account flat (if it stops
            # there, the entry fills after it and the account is left holding it).
            wait_for(
                lambda: (
                    tool.poll() is not None or _events(tmp_path, "waiting_for_entries_in_flight")
                ),
                30,
                "the tool to find nothing held",
            )
            buy(ib, symbol, 25, order_ref=ref)
            out, err = tool.communicate(timeout=90)
        finally:
            if tool.poll() is None:
                tool.kill()
        entries.flush()
    finally:
        ib.disconnect()

    assert tool.returncode == 0, out + err
    assert gw.account.positions() == {}
    [waited] = _events(tmp_path, "waiting_for_entries_in_flight")
    assert waited["order_refs"] == [ref]
    sides = sorted((e["side"], e["shares"]) for e in gw.account.executions())
    assert sides == [("BOT", 25), ("SLD", 25)]


def test_entry_decided_before_the_halt_flag_is_refused_by_the_guard_and_never_sent(gw, tmp_path):
    """The day trader reads the book (no halt), then liquidate_all halts entries, then the
    trader places its entry: the guard reads the flag in the intent's own transaction, so
    the entry is refused with the kill_switch reason and nothing reaches IB."""
    db = sim_db(tmp_path)
    ib = client(gw.port, 2)
    [symbol] = _symbols(gw, 1)
    try:
        assert db.entries_halted() is None  # the decision saw no halt
        in_flight = liq.halt_new_entries(db, "MANUAL")
        orders = IntentOrders(ib, db, "day_trader")
        with pytest.raises(ReentryBlocked, match="entries halted") as refused:
            orders.record(  # the day trader's guarded intent write, before any send
                stock(ib, symbol),
                LimitOrder("BUY", 10, 1000.0, tif="DAY"),
                purpose="entry:standard",
                guard_entry=True,
                max_open_positions=4,
            )
        ib.sleep(0.3)
    finally:
        ib.disconnect()
    assert in_flight == []
    assert refused.value.reason == KILL_SWITCH
    assert "python liquidate_all.py --resume" in str(refused.value)
    assert db.get_intents_by_date(db.clock.today_str()) == []
    assert gw.account.open_orders() == [] and gw.account.completed_orders() == []


def test_resume_lifts_the_halt_and_entries_can_be_written_again(gw, tmp_path):
    db = sim_db(tmp_path)
    [symbol] = _symbols(gw, 1)
    liquidated = run_tool(tmp_path, gw.port, "liquidate_all.py", "--yes")
    assert liquidated.returncode == 0, liquidated.stderr
    assert "lift: python liquidate_all.py --resume" in liquidated.stdout
    with pytest.raises(ReentryBlocked, match="entries halted"):
        db.create_order_intent(symbol, "BUY", 1, "LMT", "day_trader", guard_entry=True)
    (tmp_path / "KILL_SWITCH").write_text("operator")

    resumed = run_tool(tmp_path, 1, "liquidate_all.py", "--resume")  # no gateway needed

    assert resumed.returncode == 0, resumed.stderr
    assert "entries resumed: database flag kill_switch cleared (was: MANUAL by liquidate_all" in (
        resumed.stdout
    )
    assert "kill-switch file" in resumed.stdout and "still halts entries" in resumed.stdout
    assert db.entries_halted() is None
    assert db.create_order_intent(symbol, "BUY", 1, "LMT", "day_trader", guard_entry=True)
    again = run_tool(tmp_path, 1, "liquidate_all.py", "--resume")
    assert again.returncode == 0 and "entries were not halted" in again.stdout


def test_resume_with_an_order_flag_is_one_line_error(tmp_path):
    result = run_tool(tmp_path, 1, "liquidate_all.py", "--resume", "--yes")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "liquidate_all: error: --resume only lifts the entry halt; drop --yes"
    ]


def test_paper_mode_never_flattens_a_live_account(tmp_path):
    """Bug pinned: liquidate_all never checked the account, and in paper mode it sold every
    position of a non-paper (U...) account."""
    with gateway(tmp_path, account="U7654321") as gw:
        db = sim_db(tmp_path)
        ib = client(gw.port, 2)
        [symbol] = _symbols(gw, 1)
        try:
            buy(ib, symbol, 40, db=db, protect=False)
        finally:
            ib.disconnect()
        orders_before = gw.account.completed_orders()

        result = run_tool(tmp_path, gw.port, "liquidate_all.py", "--yes")

        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            "liquidate_all: error: account U7654321 is a live (non-paper) account but this is "
            "paper trading: connect to a gateway logged in to a paper account (DU...), or set "
            "TRADING_MODE=live and add --live to trade real money"
        ]
        assert gw.account.positions() == {symbol: 40}
        assert gw.account.open_orders() == []
        assert gw.account.completed_orders() == orders_before  # no order reached IB
        assert not (tmp_path / "KILL_SWITCH").exists()
        live = run_tool(tmp_path, gw.port, "liquidate_all.py", "--live", "--dry-run",
                        env={"TRADING_MODE": "live"})  # fmt: skip
        assert live.returncode == 0, live.stderr
        assert "account U7654321: 1 position(s)" in live.stdout


def test_live_flag_never_flattens_a_paper_account(gw, tmp_path):
    db = sim_db(tmp_path)
    ib = client(gw.port, 2)
    [symbol] = _symbols(gw, 1)
    try:
        buy(ib, symbol, 10, db=db, protect=False)
    finally:
        ib.disconnect()
    result = run_tool(tmp_path, gw.port, "liquidate_all.py", "--live", "--yes",
                      env={"TRADING_MODE": "live"})  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "liquidate_all: error: account DU1234567 is a paper account but this run trades real "
        "money (--live and TRADING_MODE=live)"
    )
    assert result.stderr.strip().count("\n") == 0
    assert gw.account.positions() == {symbol: 10}


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
