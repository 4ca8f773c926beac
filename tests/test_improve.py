"""The improvement cycle: the walk-forward study, the live-vs-model day, the report, --apply."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path

import numpy as np
import pytest

import improve
from core import settings
from core.clock import NEW_YORK, Session
from journal import JournalRow
from sim import improve as im
from sim.backtest import BacktestConfig
from sim.days import SymbolDay, TradingDay, analysis_bars, on_tick_grid, synthetic_sessions
from sim.improve_report import write_proposal
from sim.live_vs_model import compare_day, render_comparison
from store.bars import bar_file, bars_frame, write_bars_file
from trading.indicators import Bar

TARGET_AND_STOP = (
    im.PARAMETER_BY_FIELD["profit_target_pct"],
    im.PARAMETER_BY_FIELD["stop_loss_pct"],
)
FIRST_DAY = date(2026, 3, 2)


def gapper_day(session: Session, seed: int, run_up_pct: float | None) -> TradingDay:
    """One symbol gapping 6% up (gap-and-go enters at the open). With `run_up_pct` it then
    climbs that much in the next hour and holds there (tiny noise: no stop is ever
    touched), so a target at the run-up earns more than the default 1.8% every day; with
    None it random-walks, and any target or stop that did well on a day was luck."""
    rng = np.random.default_rng(seed)
    start = datetime.combine(session.trading_date, time(9, 0), NEW_YORK).timestamp()
    opened, closed = session.open.timestamp(), session.close.timestamp()
    times = np.arange(start, closed, 30.0)
    prev_close = 20.0
    gap_price = prev_close * 1.06
    if run_up_pct is None:
        steps = np.where(times < opened + 8 * 60, 0.0, 0.003 * rng.standard_normal(len(times)))
        path = gap_price * np.exp(np.cumsum(steps))
        noise = 0.0
    else:
        path = gap_price * (1 + run_up_pct / 100 * np.clip((times - opened - 480) / 3600, 0, 1))
        noise = 0.0002
    price = path * (1 + noise * rng.standard_normal(len(times)))
    # A zigzag of two ticks until RSI is warm (14 regular-hours bars) and neutral: the entry.
    warm = opened + 8 * 60
    price = np.where(times < warm, gap_price + 0.02 * (np.arange(len(times)) % 2), price)
    opens, closes = on_tick_grid(np.r_[price[0], price[:-1]]), on_tick_grid(price)
    highs, lows = np.maximum(opens, closes) + 0.01, np.minimum(opens, closes) - 0.01
    fill = np.column_stack([times, opens, highs, lows, closes, np.full(len(times), 20_000.0)])
    symbol = SymbolDay("GAPR", prev_close, 1, fill, analysis_bars(fill))
    return TradingDay(session.trading_date, session, (symbol,), 30)


def gapper_days(count: int, run_up_pct: float | None, seed: int = 0) -> list[TradingDay]:
    sessions = synthetic_sessions(FIRST_DAY, count)
    return [gapper_day(s, seed + i, run_up_pct) for i, s in enumerate(sessions)]


def options(tmp_path: Path, **kw) -> im.StudyOptions:
    values = {"trials": 6, "seed": 3, "min_trades": 3, "space": TARGET_AND_STOP}
    values.update(kw)
    return im.StudyOptions(f"sqlite:///{tmp_path / 'study.db'}", **values)


def test_walk_forward_never_scores_a_fold_on_a_day_it_was_tuned_on():
    dates = [s.trading_date for s in synthetic_sessions(FIRST_DAY, 9)]
    folds = im.walk_forward_folds(dates, im.WalkForwardPlan(train_days=3, test_days=2))
    assert [len(f.train) for f in folds] == [3, 3, 3]
    assert [len(f.test) for f in folds] == [2, 2, 2]
    for fold in folds:
        assert max(fold.train) < min(fold.test)
    tested = [d for f in folds for d in f.test]
    assert tested == dates[3:] and len(set(tested)) == len(tested)
    assert im.walk_forward_folds(dates[:3], im.WalkForwardPlan(3, 2)) == []


def test_study_finds_the_wider_target_and_it_wins_out_of_sample(tmp_path):
    """The market climbs 3% after every open: the tuned target is wider than the current
    1.8%, it earns more on days it never saw, and the .env change proposes it."""
    days = gapper_days(4, run_up_pct=3.0)
    result = im.study_parameters(
        days, BacktestConfig(), im.WalkForwardPlan(1, 1), options(tmp_path)
    )
    assert len(result.folds) == 3
    for fold in result.folds:
        assert fold.best_params["profit_target_pct"] > 2.4, fold
        assert fold.tuned_test.net_pnl > fold.current_test.net_pnl
    assert result.tuned_oos.trades >= 3 and result.current_oos.trades >= 3
    assert result.verdict.recommend, result.verdict
    target = float(result.proposal["PROFIT_TARGET_PCT"])
    assert target > 2.4


def test_noise_tuned_in_sample_is_not_recommended_over_current(tmp_path):
    """Random-walk days: the best trial beats the current settings on the days it was tuned
    on (that is what tuning does), but not on the days after: keep the current settings."""
    days = gapper_days(4, run_up_pct=None, seed=11)
    result = im.study_parameters(
        days, BacktestConfig(), im.WalkForwardPlan(1, 1), options(tmp_path)
    )
    assert any(f.best_in_sample > f.current_in_sample for f in result.folds)
    assert not result.verdict.recommend, result.verdict
    assert result.proposal == {}


def test_judge_wants_enough_trades_and_a_gain_beyond_day_to_day_noise():
    def figure(pnls, trades=10):
        return im.Figure(tuple(im.DayFigure(str(i), p, trades) for i, p in enumerate(pnls)))

    steady = im.judge(figure([110, 120, 115, 118]), figure([100, 100, 100, 100]), min_trades=30)
    assert steady.recommend
    lucky = im.judge(figure([400, -300, 350, -250]), figure([0, 0, 0, 0]), min_trades=30)
    assert not lucky.recommend and "noise" in lucky.why
    thin = im.judge(figure([110, 120], trades=2), figure([100, 100], trades=2), min_trades=30)
    assert not thin.recommend and "too few trades" in thin.why


def test_a_second_evening_continues_the_persisted_studies(tmp_path):
    days = gapper_days(3, run_up_pct=3.0)
    plan = im.WalkForwardPlan(1, 1)
    first = im.study_parameters(days[:2], BacktestConfig(), plan, options(tmp_path, trials=3))
    assert first.trials_run == 6  # one fold and the proposal, 3 trials each
    again = im.study_parameters(days, BacktestConfig(), plan, options(tmp_path, trials=3))
    # The first fold (and tonight's fold on day 2, last night's proposal window) are done.
    assert again.trials_run == 3
    assert again.folds[0].trials == 3


def test_too_few_days_says_what_is_missing_and_keeps_the_current_settings(tmp_path):
    result = im.study_parameters(
        gapper_days(1, 3.0), BacktestConfig(), im.WalkForwardPlan(5, 2), options(tmp_path)
    )
    assert result.folds == () and result.proposal == {}
    assert result.missing == (
        "only 1 recorded day(s); walk-forward needs 7 (5 to tune on, 2 to score on): "
        "no study tonight",
    )


def test_proposed_env_names_only_the_keys_that_change():
    current = {"profit_target_pct": 1.8, "stop_loss_pct": 0.9, "max_open_positions": 4}
    tuned = {"profit_target_pct": 3.1, "stop_loss_pct": 0.9, "max_open_positions": 6}
    assert im.proposed_env(current, tuned) == {
        "PROFIT_TARGET_PCT": "3.1",
        "MAX_OPEN_POSITIONS": "6",
    }


@pytest.mark.parametrize("value,expected", [(3.14159, 3.1), (99.0, 6.0), (0.0, 0.5)])
def test_parameter_clamp_puts_a_value_on_the_grid(value, expected):
    assert im.PARAMETER_BY_FIELD["profit_target_pct"].clamp(value) == expected


# -- .env: --apply ------------------------------------------------------------------------------
ENV_TEXT = (
    "# my settings\n"
    "IB_PORT=4002\n"
    "PROFIT_TARGET_PCT=1.8  # was 2.0 last month\n"
    "\n"
    "export STOP_LOSS_PCT=0.9\n"
    "OTHER_TOOL_TOKEN=abc\n"
)


def test_update_dotenv_changes_exactly_the_keys_keeps_the_rest_and_backs_up(tmp_path):
    env = tmp_path / ".env"
    env.write_text(ENV_TEXT)
    backup = tmp_path / "archive" / "env.bak"
    changes = {"PROFIT_TARGET_PCT": "3.1", "STOP_LOSS_PCT": "1.2", "ENTRY_RSI_MAX": "70"}
    assert settings.update_dotenv(env, changes, backup) == backup
    assert backup.read_text() == ENV_TEXT
    assert env.read_text() == (
        "# my settings\n"
        "IB_PORT=4002\n"
        "PROFIT_TARGET_PCT=3.1\n"
        "\n"
        "export STOP_LOSS_PCT=1.2\n"
        "OTHER_TOOL_TOKEN=abc\n"
        "ENTRY_RSI_MAX=70\n"
    )
    loaded = settings.load_settings(environ={}, dotenv_path=env)
    assert (loaded.profit_target_pct, loaded.stop_loss_pct, loaded.entry_rsi_max) == (3.1, 1.2, 70)


def test_update_dotenv_refuses_a_value_the_settings_refuse_and_leaves_the_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text(ENV_TEXT)
    with pytest.raises(settings.SettingsError, match="PROFIT_TARGET_PCT"):
        settings.update_dotenv(env, {"PROFIT_TARGET_PCT": "-1"}, tmp_path / "b.bak")
    with pytest.raises(settings.SettingsError, match="not a setting"):
        settings.update_dotenv(env, {"PROFIT_TARGT_PCT": "2"}, tmp_path / "b.bak")
    assert env.read_text() == ENV_TEXT and not (tmp_path / "b.bak").exists()


@pytest.fixture
def proposal(tmp_path, monkeypatch) -> Path:
    env = tmp_path / ".env"
    env.write_text(ENV_TEXT)
    monkeypatch.setattr(settings, "DOTENV_PATH", env)
    out = tmp_path / "report"
    out.mkdir()
    write_proposal(out, {"PROFIT_TARGET_PCT": "3.1", "MAX_OPEN_POSITIONS": "6"})
    return out


class _Stdin:
    def __init__(self, tty: bool, answer: str = "") -> None:
        self.tty, self.answer = tty, answer

    def isatty(self) -> bool:
        return self.tty

    def readline(self) -> str:
        return self.answer


def test_apply_refuses_without_confirmation_off_a_terminal(proposal, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", _Stdin(tty=False))
    assert improve.main(["--apply", "--out", str(proposal)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not confirmed" in err and "--yes" in err
    assert (tmp_path / ".env").read_text() == ENV_TEXT
    assert not (tmp_path / "archive").exists()


def test_apply_asks_and_a_no_leaves_env_alone(proposal, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", _Stdin(tty=True, answer="n\n"))
    assert improve.main(["--apply", "--out", str(proposal)]) == 1
    assert (tmp_path / ".env").read_text() == ENV_TEXT


def test_apply_confirmed_writes_exactly_the_proposed_keys_and_keeps_a_backup(
    proposal, tmp_path, monkeypatch
):
    monkeypatch.setattr("sys.stdin", _Stdin(tty=True, answer="y\n"))
    assert improve.main(["--apply", "--out", str(proposal)]) == 0
    after = (tmp_path / ".env").read_text().splitlines()
    before = ENV_TEXT.splitlines()
    changed = [(b, a) for b, a in zip(before, after, strict=False) if b != a]
    assert changed == [("PROFIT_TARGET_PCT=1.8  # was 2.0 last month", "PROFIT_TARGET_PCT=3.1")]
    assert after[len(before) :] == ["MAX_OPEN_POSITIONS=6"]
    (backup,) = (tmp_path / "archive").glob("env_*.bak")
    assert backup.read_text() == ENV_TEXT


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,named",
    [
        (["--trials", "0"], "--trials"),
        (["--date", "2026-13-01"], "--date"),
        (["--storage", "study.db"], "--storage"),
        (["--jobs", "x"], "--jobs"),
        (["--data", "/no/such/bars"], "--data"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as stopped:
        code = improve.main(argv)
        raise SystemExit(code)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err and "Traceback" not in err


def record_days(root: Path, days: list[TradingDay]) -> None:
    for day in days:
        for symbol in day.symbols:
            bars = [Bar(*row[:6]) for row in symbol.fill.tolist()]
            frame = bars_frame(symbol.symbol, bars, symbol.prev_close)
            write_bars_file(bar_file(root, day.trading_date, symbol.symbol), frame)


CYCLE_FLAGS = ["--trials", "2", "--train-days", "1", "--test-days", "1", "--min-trades", "1",
               "--no-progress"]  # fmt: skip


def test_cycle_without_the_days_bars_says_so_and_still_reports_the_study(tmp_path, capsys):
    days = gapper_days(3, run_up_pct=3.0)
    record_days(tmp_path / "bars", days)
    missing_day = "2026-03-06"  # a session after the recorded ones
    assert improve.main(["--date", missing_day, *CYCLE_FLAGS]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"improve.py: no recorded bars for {missing_day} in {tmp_path / 'bars' / missing_day} "
        "(the day trader records them there): no live-vs-model comparison; the report still "
        "has the study over 3 recorded day(s)"
    ]
    out = tmp_path / "reports" / "improve" / missing_day
    report = (out / "report.md").read_text()
    assert "## Parameter study (walk-forward)" in report and "Live vs model" not in report
    assert {"equity.png", "heatmap.png", "proposed.env"} <= {p.name for p in out.iterdir()}


def test_cycle_on_a_day_without_live_trades_lists_the_models_and_why_not(tmp_path, capsys):
    days = gapper_days(1, run_up_pct=3.0)
    record_days(tmp_path / "bars", days)
    day = days[0].trading_date.isoformat()
    assert improve.main(["--date", day, *CYCLE_FLAGS]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"improve.py: no live trades on {day} in ")
    assert "the comparison lists the model's 1 trade(s) only" in err[0]
    assert err[1] == (
        "improve.py: only 1 recorded day(s); walk-forward needs 2 (1 to tune on, 1 to score "
        "on): no study tonight"
    )
    report = (tmp_path / "reports" / "improve" / day / "report.md").read_text()
    assert "Entries the model took and the live bots did not" in report
    assert "| GAPR | 09:37:30" in report


# -- live vs model ------------------------------------------------------------------------------
def trip(symbol: str, entry: str, entry_price: float, exit_: str, exit_price: float,
         reason: str = "PROFIT_TARGET", commissions: float = 2.0) -> JournalRow:  # fmt: skip
    day = "2026-03-02"
    return JournalRow(
        trading_date=day, symbol=symbol, entry_time=f"{day}T{entry}-05:00",
        entry_price=entry_price, entry_rule="gap_and_go", entry_vwap=None, entry_rsi=None,
        entry_atr_pct=None, llm_verdict=None, exit_time=f"{day}T{exit_}-05:00",
        exit_price=exit_price, exit_reason=reason, quantity=100,
        gross_pnl=round((exit_price - entry_price) * 100, 2), commissions=commissions,
        net_pnl=round((exit_price - entry_price) * 100 - commissions, 2), hold_seconds=60,
        entry_order_ref=None, exit_order_ref=None,
    )  # fmt: skip


def log_line(event: str, symbol: str, at: str, **fields) -> dict:
    return {"event": event, "symbol": symbol, "exchange_time": f"2026-03-02T{at}-05:00", **fields}


def test_live_vs_model_pairs_trades_measures_slippage_and_names_why_live_missed_entries():
    live = [
        trip("AAA", "09:40:05", 10.03, "10:10:00", 9.88, "STOP_LOSS", commissions=2.5),
        trip("ZZZ", "11:00:00", 50.00, "11:30:00", 50.50),
    ]
    model = [
        trip("AAA", "09:40:00", 10.00, "10:09:00", 9.91, "STOP_LOSS"),
        trip("BBB", "09:45:00", 20.00, "10:00:00", 20.36),
        trip("CCC", "09:50:00", 30.00, "10:00:00", 30.54),
        trip("DDD", "09:55:00", 40.00, "10:30:00", 40.72),
        trip("EEE", "10:05:00", 15.00, "10:30:00", 15.27),
        trip("FFF", "10:06:00", 15.00, "10:30:00", 15.27),
    ]
    records = [
        log_line("entry_decision", "BBB", "09:45:00", decision="enter", reason="enter"),
        log_line("entry_vetoed", "BBB", "09:45:02", reason="overextended"),
        log_line("entry_decision", "CCC", "09:49:30", decision="skip", reason="max_open_positions"),
        log_line("entry_sent", "DDD", "09:55:01", order_ref="dt-DDD-1"),
        log_line("entry_cancel_sent", "DDD", "09:56:01", reason="entry timeout, no chase"),
        log_line("entry_decision", "EEE", "10:04:30", decision="skip", reason="stale_quote"),
        log_line("entry_decision", "FFF", "10:02:00", decision="skip", reason="kill_switch"),
    ]
    intents = [{"symbol": "DDD", "side": "BUY", "order_ref": "dt-DDD-1", "state": "CANCELLED",
                "note": "entry timeout: cancelled, not chased"}]  # fmt: skip
    # AAA's bars: the stop (0.9% under 10.03 = 9.94) trades at 10:08:30.
    session = synthetic_sessions(FIRST_DAY, 1)[0]
    t0 = datetime.combine(FIRST_DAY, time(9, 30), NEW_YORK).timestamp()
    rows = [(t0 + 30 * i, 10.0, 10.05, 9.97, 10.0, 1000.0) for i in range(77)]
    rows.append((t0 + 30 * 77, 9.96, 9.96, 9.93, 9.93, 1000.0))  # 10:08:30
    aaa = SymbolDay("AAA", 10.0, 1, np.array(rows), analysis_bars(np.array(rows)))
    day = TradingDay(FIRST_DAY, session, (aaa,), 30)

    result = compare_day("2026-03-02", live, model, records, intents, day, stop_pct=0.9)

    (pair,) = result.pairs
    assert (pair.entry_slippage_cents, pair.entry_slippage_bps) == (3.0, 30.0)
    assert (pair.exit_slippage_cents, pair.exit_slippage_bps) == (3.0, 30.3)
    assert pair.live_reaction_s == 90.0  # 10:08:30 cross -> 10:10:00 fill
    why = {m.row.symbol: m.why for m in result.model_only}
    assert why == {
        "BBB": "LLM veto",
        "CCC": "slot limit",
        "DDD": "timeout (unfilled)",
        "EEE": "stale data",
        "FFF": "kill switch",
    }
    assert [m.row.symbol for m in result.live_only] == ["ZZZ"]
    assert result.live_commissions == 4.5 and result.model_commissions == 12.0
    text = render_comparison(result)
    assert "| AAA | 09:40:05 $10.03 / 09:40:00 $10.00 | +3.00 (+30.0) |" in text


def test_trials_run_in_parallel_processes_against_one_storage(tmp_path):
    days = gapper_days(2, run_up_pct=3.0)
    shown: list[int] = []
    result = im.study_parameters(
        days, BacktestConfig(), im.WalkForwardPlan(1, 1), options(tmp_path, trials=4, jobs=2),
        on_trials=shown.append,
    )  # fmt: skip
    assert result.trials_run == 8 and sum(shown) == 8  # one fold and the proposal, 4 each
    assert result.folds[0].trials == 4


def test_time_budget_stops_the_study_and_says_how_far_it_got(tmp_path):
    days = gapper_days(3, run_up_pct=3.0)
    result = im.study_parameters(
        days, BacktestConfig(), im.WalkForwardPlan(1, 1),
        options(tmp_path, trials=50, time_budget_s=1.0),
    )  # fmt: skip
    assert result.trials_run < result.trials_wanted
    assert any(m.startswith("the time budget ran out: ") for m in result.missing)
    assert len(result.folds) == 2  # every fold is still scored, on what its study found


def test_the_studied_entry_thresholds_reach_the_entry_rules():
    config = im.config_with(
        BacktestConfig(), {"rsi_max": 70.0, "atr_pct_min": 0.5, "gap_min_pct": 3.0,
                           "entry_cutoff_minutes": 5.0}
    )  # fmt: skip
    rules = config.entry_config()
    assert (rules.rsi_max, rules.atr_pct_min, rules.gap_min_pct) == (70.0, 0.5, 3.0)
    assert rules.entry_cutoff_minutes == 15.0, "a cutoff inside the EOD flatten is the flatten's"


def test_cycle_puts_the_live_trade_from_the_database_beside_the_models(tmp_path):
    """The day trader bought one cent over the model and sold at the target a cent under:
    the report pairs the two and shows the slippage of each leg."""
    from observability import TradingDatabase

    days = gapper_days(1, run_up_pct=3.0)
    record_days(tmp_path / "bars", days)
    day = days[0].trading_date
    at = lambda hh, mm, ss=0: datetime.combine(day, time(hh, mm, ss), NEW_YORK)  # noqa: E731
    db = TradingDatabase(tmp_path / "trading_history.db")
    db.record_trade("GAPR", "BUY", 294, 21.22, "day_trader", order_ref="dt-1", commission=1.47,
                    exec_id="e1", trade_time=at(9, 37, 40))  # fmt: skip
    db.record_trade("GAPR", "SELL", 294, 21.58, "exit_manager", order_ref="em-1",
                    commission=1.47, exec_id="e2", trade_time=at(10, 15))  # fmt: skip
    db.close()
    assert improve.main(["--date", day.isoformat(), *CYCLE_FLAGS]) == 0
    report = (tmp_path / "reports" / "improve" / day.isoformat() / "report.md").read_text()
    assert "1 trade(s) both took, 0 only the model, 0 only live" in report
    assert "| GAPR | 09:37:40 $21.22 / 09:37:30 $21.21 | +1.00 (+4.7) |" in report
    assert "10:15:00 $21.58 / " in report and "| +1.00 (+4.6) |" in report
