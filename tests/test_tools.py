"""Operator tools on the simulated gateway (real processes): test_connection, check_orders,
monitor_live, analyze_today (reports), view_logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ib_async import LimitOrder
from matplotlib.dates import date2num, num2date
from sim_support import buy, client, gateway, run_tool, sim_db, start_gateway, stock, tool_env

import reports
import view_logs
from core.clock import NEW_YORK
from core.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """One simulated morning shared by the read-only tools: two protected positions."""
    tmp = tmp_path_factory.mktemp("tools")
    gw = start_gateway(tmp)
    db = sim_db(tmp)
    ib = client(gw.port, 2)
    first, second, third = list(gw.gateway.market.symbols)[:3]
    buy(ib, first, 100, db=db)
    buy(ib, second, 40, db=db)
    # A manual order: no orderRef, placed outside the intent protocol.
    manual = LimitOrder("BUY", 1, 1.00, tif="DAY")
    ib.placeOrder(stock(ib, third), manual)
    ib.sleep(0.3)
    ib.disconnect()
    yield {"tmp": tmp, "gw": gw, "db": db, "symbols": (first, second, third)}
    gw.stop()


def test_test_connection_reports_everything_and_exits_0(day):
    result = run_tool(day["tmp"], day["gw"].port, "test_connection.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "server version:   176" in out
    assert "account:          DU1234567" in out
    assert "market data type: 1 live" in out  # probed with a held symbol
    assert "positions:        2" in out
    assert "round trip:" in out and " ms " in out


def test_test_connection_exits_1_with_one_line_when_gateway_down(day):
    result = run_tool(day["tmp"], 1, "test_connection.py", "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.startswith("test_connection: error: connection refused by 127.0.0.1:1:")
    assert result.stderr.count("\n") == 1


def test_check_orders_lists_orders_with_intents_and_flags_disagreements(day):
    tmp, gw, db = day["tmp"], day["gw"], day["db"]
    first, _, third = day["symbols"]
    result = run_tool(tmp, gw.port, "check_orders.py")
    out = result.stdout
    assert result.returncode == 3, out + result.stderr  # the manual order is flagged
    assert "NO_REF" in out and third in out
    assert out.count("PROFIT_TARGET") == 0  # purposes are not shown; orderRefs are
    for intent in db.get_open_intents():
        assert intent["order_ref"] in out
    # Now an intent the database believes is working but IB never saw.
    ghost = db.create_order_intent(first, "SELL", 100, "LMT", "exit_manager", purpose="ghost")
    result = run_tool(tmp, gw.port, "check_orders.py")
    assert "NOT_AT_IB" in result.stdout and ghost in result.stdout
    db.update_order_intent(ghost, "CANCELLED", note="test cleanup")


def test_check_orders_flags_state_disagreement():
    import check_orders
    from ib.tools import OrderAtIB

    order = OrderAtIB("AAPL", "SELL", 5, "STP", "Filled", 5, 0, 10, "r1")
    intents = {"r1": {"state": "SUBMITTED"}}
    [row] = check_orders.compare([], [order], [], intents.get)
    assert row.flag == "STATE: IB FILLED, db SUBMITTED"
    intents["r1"]["state"] = "FILLED"
    assert check_orders.compare([], [order], [], intents.get)[0].flag == ""


def test_monitor_live_once_shows_prices_distances_and_pnl(day):
    tmp, gw, db = day["tmp"], day["gw"], day["db"]
    first, second, _ = day["symbols"]
    result = run_tool(tmp, gw.port, "monitor_live.py", "--once")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    row = next(line for line in out.splitlines() if f" {first} " in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    symbol, qty, _entry, last, target, to_target, stop, to_stop, pnl, _pnl_pct, _note = cells
    position = db.get_active_position(first)
    assert (symbol, qty) == (first, "100")
    assert float(last) > 0, "a streamed price"
    assert float(target) == position["profit_target_price"]
    assert float(stop) == position["stop_loss_price"]
    assert to_target.endswith("%") and to_stop.endswith("%")
    assert float(pnl.replace(",", "")) == pytest.approx(
        (float(last) - position["entry_price"]) * 100
    )
    assert second in out and "open P&L $" in out and "gross P&L $" in out  # labelled gross


def test_monitor_live_build_views_marks_database_disagreements():
    import monitor_live
    from trading.model import BrokerPosition

    pos = BrokerPosition("AAA", 10, 9.0)
    rows = [
        {"symbol": "AAA", "quantity": 7, "entry_price": 10.0, "profit_target_price": 10.18,
         "stop_loss_price": 9.91},
        {"symbol": "BBB", "quantity": 5, "entry_price": 20.0, "profit_target_price": 20.36,
         "stop_loss_price": 19.82},
    ]  # fmt: skip
    views = {v.symbol: v for v in monitor_live.build_views([pos], rows, {"AAA": 10.0})}
    assert views["AAA"].note == "database qty 7"
    assert views["AAA"].to_target_pct == pytest.approx(1.8)
    assert views["AAA"].to_stop_pct == pytest.approx(0.9)
    assert views["AAA"].pnl == 0.0
    assert views["BBB"].note.startswith("database only")


def _fill(i, symbol, side, qty, price, hhmm, ref, commission=1.0):
    return {"id": i, "symbol": symbol, "side": side, "quantity": qty, "price": price,
            "trade_time": f"2026-11-24T{hhmm}:00-05:00", "order_ref": ref, "exec_id": f"e{i}",
            "commission": commission}  # fmt: skip


def test_round_trips_fifo_pnl_win_rate_and_drawdown():
    fills = [
        _fill(1, "AAA", "BUY", 100, 10.00, "09:40", "b1"),
        _fill(2, "BBB", "BUY", 50, 20.00, "09:45", "b2"),
        _fill(3, "AAA", "SELL", 60, 10.18, "10:10", "s1"),  # target hit in two fills
        _fill(4, "AAA", "SELL", 40, 10.18, "10:10", "s1"),
        _fill(5, "BBB", "SELL", 50, 19.82, "11:00", "s2"),
        _fill(6, "CCC", "BUY", 10, 5.00, "15:00", "b3"),  # still open
    ]
    trips, still_open = reports.round_trips_from_fills(
        fills, {"s1": "PROFIT_TARGET", "s2": "STOP_LOSS"}
    )
    assert [(t.symbol, t.quantity, t.exit_reason) for t in trips] == [
        ("AAA", 100, "PROFIT_TARGET"),
        ("BBB", 50, "STOP_LOSS"),
    ]
    assert trips[0].gross_pnl == pytest.approx(18.0)
    assert trips[0].pnl == pytest.approx(18.0 - 3.0)  # buy + two sell commissions
    assert trips[1].pnl == pytest.approx(-9.0 - 2.0)
    assert trips[0].hold_seconds == 30 * 60
    assert still_open == {"CCC": 10}
    report = reports.DayReport("2026-11-24", trips, still_open, len(fills))
    assert report.win_rate == 50.0
    assert report.max_drawdown == pytest.approx(11.0)
    assert report.exit_reasons() == {"PROFIT_TARGET": 1, "STOP_LOSS": 1}
    assert reports.max_drawdown([5, -3, 4, -10, 2]) == pytest.approx(10)


def test_round_trips_table_shows_net_dollars_and_net_percent_and_labels_gross():
    """Bug pinned: the table's P&L % was the gross price move beside a net P&L $."""
    fills = [
        _fill(1, "AAA", "BUY", 100, 10.00, "09:40", "b1", commission=2.0),
        _fill(2, "AAA", "SELL", 100, 10.18, "10:10", "s1", commission=2.0),
    ]
    trips, _ = reports.round_trips_from_fills(fills, {"s1": "PROFIT_TARGET"})
    [trip] = trips
    assert trip.pnl == pytest.approx(14.0)
    assert trip.pnl_pct == pytest.approx(1.4)  # $14 net on $1,000
    assert trip.gross_pnl_pct == pytest.approx(1.8)
    report = reports.DayReport("2026-11-24", trips, {}, len(fills))
    text = reports.render_report(report)
    assert "P&L: $+14.00 net (+1.40% of $1,000 used; gross $+18.00, commissions $4.00)" in text
    header = next(line for line in text.splitlines() if "symbol" in line and "qty" in line)
    assert "net P&L $" in header and "net P&L %" in header
    row = next(line for line in text.splitlines() if "AAA" in line and "PROFIT_TARGET" in line)
    assert "+14.00" in row and "+1.40" in row and "+1.80" not in row


def _markers(axes, marker):
    return [line for line in axes.get_lines() if line.get_marker() == marker]


def test_pnl_chart_spans_the_whole_session_in_new_york_time_with_entry_and_exit_markers():
    """Bug pinned: the x-axis ran from the first to the last exit only, with no markers."""
    fills = [
        _fill(1, "AAA", "BUY", 100, 10.00, "09:40", "b1"),
        _fill(2, "AAA", "SELL", 100, 10.18, "10:10", "s1"),
        _fill(3, "BBB", "BUY", 50, 20.00, "10:15", "b2"),
        _fill(4, "BBB", "SELL", 50, 19.82, "11:00", "s2"),
    ]
    trips, _ = reports.round_trips_from_fills(fills, {})
    fig = reports.pnl_figure(reports.DayReport("2026-11-24", trips, {}, len(fills)))
    curve = fig.axes[0]

    left, right = (num2date(x, tz=NEW_YORK) for x in curve.get_xlim())
    assert (left, right) == (
        datetime(2026, 11, 24, 9, 30, tzinfo=NEW_YORK),
        datetime(2026, 11, 24, 16, 0, tzinfo=NEW_YORK),
    )
    assert "New York" in curve.get_xlabel()
    [entries] = _markers(curve, "^")
    entry_times = [
        num2date(x, tz=NEW_YORK).strftime("%H:%M") for x in date2num(entries.get_xdata())
    ]
    assert entry_times == ["09:40", "10:15"]
    exits = {line.get_label(): line for line in _markers(curve, "v")}
    assert set(exits) == {"exit, win", "exit, loss"}
    assert [y for y in exits["exit, win"].get_ydata()] == [pytest.approx(16.0)]
    assert [y for y in exits["exit, loss"].get_ydata()] == [pytest.approx(16.0 - 11.0)]
    fig.canvas.draw()  # the labels exist once drawn
    labels = [tick.get_text() for tick in curve.get_xticklabels()]
    assert labels[0] == "10:00" and labels[-1] == "16:00"


def test_pnl_chart_of_an_empty_half_day_says_no_trades_on_the_session_axis(tmp_path):
    """The day after Thanksgiving closes at 13:00; with no trades there is no curve, no
    marker and no 1970 date axis, only the session and "no trades"."""
    report = reports.DayReport("2026-11-27", [], {}, 0)
    fig = reports.pnl_figure(report)
    curve, bars = fig.axes

    left, right = (num2date(x, tz=NEW_YORK) for x in curve.get_xlim())
    assert (left, right) == (
        datetime(2026, 11, 27, 9, 30, tzinfo=NEW_YORK),
        datetime(2026, 11, 27, 13, 0, tzinfo=NEW_YORK),
    )
    assert not _markers(curve, "^") and not _markers(curve, "v")
    for axes in (curve, bars):
        assert "no trades" in [text.get_text() for text in axes.texts]
    assert reports.write_pnl_chart(report, tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_exit_reason_from_intent_purpose():
    assert reports.exit_reason_for("PROTECT_TARGET") == "PROFIT_TARGET"
    assert reports.exit_reason_for("PROTECT_STOP") == "STOP_LOSS"
    assert reports.exit_reason_for("BOT_STOP") == "STOP_LOSS"
    assert reports.exit_reason_for("EOD_FLATTEN") == "EOD"
    assert reports.exit_reason_for("MANUAL") == "MANUAL"
    assert reports.exit_reason_for("entry:standard") == "UNKNOWN"
    assert reports.exit_reason_for(None) == "UNKNOWN"


def test_analyze_today_on_a_liquidated_morning_writes_report_and_chart(tmp_path):
    with gateway(tmp_path) as gw, client(gw, 2) as ib:
        db = sim_db(gw)
        symbol = next(iter(gw.gateway.market.symbols))
        buy(ib, symbol, 20, db=db)
        ib.disconnect()
        assert run_tool(tmp_path, gw.port, "liquidate_all.py", "--yes").returncode == 0
    chart = tmp_path / "chart.png"
    result = run_tool(tmp_path, 1, "analyze_today.py", "--chart", str(chart))
    assert result.returncode == 0, result.stderr
    assert "trades (round trips): 1" in result.stdout
    assert "win rate:" in result.stdout and "max drawdown:" in result.stdout
    assert "MANUAL 1" in result.stdout and symbol in result.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other_day = run_tool(tmp_path, 1, "analyze_today.py", "--date", "2026-11-23", "--no-chart")
    assert "trades (round trips): 0" in other_day.stdout
    bad = run_tool(tmp_path, 1, "analyze_today.py", "--date", "yesterday")
    assert bad.returncode == 1 and "YYYY-MM-DD" in bad.stderr


def _write_log(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"ts": "partial')


def _rec(hh, mm, bot, level, event, **fields):
    ts = datetime(2026, 11, 24, hh, mm, tzinfo=NEW_YORK).astimezone(UTC)
    return {"ts": ts.isoformat(timespec="milliseconds"), "level": level, "bot": bot,
            "event": event, "logger": bot, **fields}  # fmt: skip


def test_view_logs_filters_by_bot_level_event_symbol_and_time(tmp_path):
    _write_log(tmp_path / "exit_manager_run_20261124_093000.json", [
        _rec(9, 31, "exit_manager", "INFO", "connected"),
        _rec(10, 5, "exit_manager", "WARNING", "stop_triggered", symbol="AAPL", last=187.1),
        _rec(11, 0, "exit_manager", "ERROR", "order_rejected", symbol="MSFT"),
    ])  # fmt: skip
    _write_log(tmp_path / "day_trader_run_20261124_093000.json", [
        _rec(9, 45, "day_trader", "INFO", "order_sent", symbol="AAPL"),
    ])  # fmt: skip

    def run(*argv):
        out = subprocess.run([sys.executable, "view_logs.py", "--dir", str(tmp_path), *argv],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    assert len(run()) == 4
    assert [line.split()[3] for line in run()] == [
        "connected", "order_sent", "stop_triggered", "order_rejected"
    ]  # fmt: skip
    assert len(run("--bot", "day_trader")) == 1
    assert len(run("--level", "warning")) == 2
    assert len(run("--symbol", "aapl")) == 2
    assert len(run("--event", "order_*")) == 2
    assert len(run("--since", "2026-11-24T10:00", "--until", "2026-11-24T10:30")) == 1
    assert run("--event", "stop")[0].startswith("10:05:00.000 WARNING exit_manager stop_triggered")
    assert json.loads(run("--json", "--limit", "1")[0])["event"] == "order_rejected"


def test_view_logs_of_a_simulated_day_shows_and_filters_by_its_simulated_new_york_time(tmp_path):
    """Bug pinned: a simulated day's lines were shown and filtered in real New York time, so
    `--since 09:30` found nothing in them; now each line's exchange_time counts, and HH:MM
    is on the logs' trading day (2026-11-24 here, not the real today)."""
    written = datetime.now(UTC)  # the run happened just now, in real time

    def sim_rec(hh, mm, event):
        sim = datetime(2026, 11, 24, hh, mm, tzinfo=NEW_YORK)
        return {"ts": written.isoformat(timespec="milliseconds"),
                "exchange_time": sim.isoformat(timespec="milliseconds"), "level": "INFO",
                "bot": "day_trader", "event": event, "logger": "day_trader"}  # fmt: skip

    _write_log(tmp_path / "day_trader_run_20261201_205559.json", [
        sim_rec(9, 0, "starting"), sim_rec(9, 45, "entry_sent"), sim_rec(15, 58, "stopping"),
    ])  # fmt: skip
    out = subprocess.run(
        [sys.executable, "view_logs.py", "--dir", str(tmp_path), "--since", "09:30",
         "--until", "10:00"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["09:45:00.000 INFO    day_trader entry_sent"]


def test_view_logs_follow_prints_new_lines(tmp_path):
    log = tmp_path / "day_trader_run_20261124_093000.json"
    log.write_text(json.dumps(_rec(9, 45, "day_trader", "INFO", "old")) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "view_logs.py", "--dir", str(tmp_path), "--follow", "--poll", "0.1",
         "--event", "new"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # let it start and skip the existing lines
        with log.open("a") as handle:
            handle.write(json.dumps(_rec(9, 46, "day_trader", "INFO", "new_event")) + "\n")
        (tmp_path / "exit_manager_run_20261124_094700.json").write_text(
            json.dumps(_rec(9, 47, "exit_manager", "INFO", "new_file")) + "\n"
        )
        lines = [proc.stdout.readline() for _ in range(2)]
        assert sorted(line.split()[3] for line in lines) == ["new_event", "new_file"]
    finally:
        proc.kill()
        proc.wait()


def test_view_logs_shows_a_value_with_a_newline_on_its_own_line_escaped(tmp_path):
    _write_log(tmp_path / "day_trader_run_20261124_093000.json", [
        _rec(9, 45, "day_trader", "WARNING", "symbol_rejected",
             symbol="AAPL\n09:45:00.000 CRITICAL exit_manager naked"),
    ])  # fmt: skip
    out = subprocess.run([sys.executable, "view_logs.py", "--dir", str(tmp_path)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1
    assert "AAPL\\n09:45:00.000 CRITICAL" in out.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--follow", "--poll", "-1"], "--poll -1.0 is invalid"),
        (["--poll", "0"], "--poll 0.0 is invalid"),
        (["--dir", "{missing}"], "does not exist"),
        (["--dir", "{empty}"], "holds no run files"),
    ],
)
def test_view_logs_bad_poll_or_folder_is_one_line(tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in argv]
    if "--dir" not in argv:
        argv += ["--dir", str(tmp_path / "empty")]
    out = subprocess.run([sys.executable, "view_logs.py", *argv],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_view_logs_time_forms():
    now = datetime(2026, 11, 24, 12, 0, tzinfo=NEW_YORK)
    assert view_logs.parse_when("-15m", now) == datetime(2026, 11, 24, 11, 45, tzinfo=NEW_YORK)
    assert view_logs.parse_when("09:30", now) == datetime(2026, 11, 24, 9, 30, tzinfo=NEW_YORK)
    with pytest.raises(view_logs.ToolError, match="HH:MM"):
        view_logs.parse_when("noonish", now)


@pytest.mark.parametrize(
    "argv",
    [["analyze_today.py"], ["check_orders.py"], ["monitor_live.py", "--once"]],
    ids=lambda argv: argv[0],
)
def test_read_only_tool_refuses_a_missing_database_in_one_line_and_creates_none(tmp_path, argv):
    """A wrong --db (or DATABASE_PATH) once made an empty database and reported zeros."""
    missing = tmp_path / "nonexist.db"
    tool = argv[0].removesuffix(".py")
    env = {**tool_env(tmp_path, 1), "DATABASE_PATH": str(missing)}
    del env["CLOCK_FILE"]  # no simulated gateway: the machine's clock
    for given in (["--db", str(missing)], []):  # the flag, then DATABASE_PATH
        result = subprocess.run(
            [sys.executable, *argv, *given], cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=60, env=env,
        )  # fmt: skip
        assert result.returncode == 1, result.stdout
        assert result.stderr == (
            f"{tool}: error: database {missing} does not exist: pass --db with the path of an "
            "existing trading_history.db (or set DATABASE_PATH), or start the bots once to "
            "create it\n"
        )
        assert not list(tmp_path.glob("nonexist.db*"))


@pytest.mark.parametrize(
    "script",
    ["supervisor.py", "liquidate_all.py", "test_connection.py", "check_orders.py",
     "monitor_live.py", "analyze_today.py", "view_logs.py"],
)  # fmt: skip
def test_every_tool_has_help(script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and "usage:" in out.stdout


def test_tool_port_flag_cannot_reach_a_live_port_in_paper_mode() -> None:
    """--port bypassed the paper/live port check before; now it is one clear line."""
    done = subprocess.run(
        [sys.executable, "test_connection.py", "--port", "4001"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "live port" in done.stderr and done.stderr.strip().count("\n") == 0
