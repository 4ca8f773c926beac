"""`python backtest.py`: the command line, its outputs, and bad input as one line (exit 2).

The data files here are small CSVs in the two formats the backtest reads: the replay format
(symbol,time,open,...) and the per-symbol export (date,open,... in a file named after the
symbol). The gapper day fires gap-and-go at 09:37:30 (see tests/test_sim_backtest.py).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pytest

import backtest
from core.clock import NEW_YORK
from core.settings import PROJECT_ROOT
from journal import JOURNAL_COLUMNS
from sim.days import BacktestDataError, days_from_data

DAY = date(2026, 3, 16)
HEADER = ["symbol", "time", "open", "high", "low", "close", "volume"]


def _stamp(hh: int, mm: int, ss: int = 0, day: date = DAY) -> str:
    return datetime.combine(day, time(hh, mm, ss), NEW_YORK).isoformat()


def gapper_rows(symbol: str = "GAPR", day: date = DAY, minutes: int = 60) -> list[list]:
    """A 6% pre-market gap and 1-min bars alternating 106.00 / 106.10 (prev close 100)."""
    rows = [[symbol, _stamp(8, 0, day=day), 106.0, 106.0, 106.0, 106.0, 5000, 100.0]]
    start = datetime.combine(day, time(9, 30), NEW_YORK)
    for k in range(minutes):
        c = 106.10 if k % 2 else 106.00
        o = 106.00 if k % 2 else 106.10
        t = (start + timedelta(minutes=k)).isoformat()
        rows.append([symbol, t, o, max(o, c) + 0.05, min(o, c) - 0.05, c, 10_000, 100.0])
    # Up through the target after the entry.
    t = (start + timedelta(minutes=minutes)).isoformat()
    rows.append([symbol, t, 106.0, 109.0, 106.0, 108.9, 10_000, 100.0])
    return rows


def write_csv(path: Path, rows: list[list], header: list[str] | None = None) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header or [*HEADER, "prev_close"])
        writer.writerows(rows)
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    try:
        code = backtest.main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- outputs ----------------------------------------------------------------------------------
def test_a_backtest_of_recorded_bars_writes_every_output(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = write_csv(tmp_path / "bars.csv", gapper_rows())
    out = tmp_path / "out"
    code, printed, err = run(["--data", str(data), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert "day report 2026-03-16" in printed and "profit factor" in printed
    assert (out / "days" / "2026-03-16.txt").read_text().startswith("day report 2026-03-16")
    assert "Sharpe" in (out / "summary.txt").read_text()
    assert (out / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    journal = pd.read_csv(out / "journal.csv")
    assert tuple(journal.columns) == JOURNAL_COLUMNS
    assert list(journal["symbol"]) == ["GAPR"]
    assert journal["entry_rule"][0] == "gap_and_go"
    assert journal["exit_reason"][0] == "PROFIT_TARGET"
    parquet = pd.read_parquet(out / "journal.parquet")
    assert tuple(parquet.columns) == JOURNAL_COLUMNS and len(parquet) == 1


def test_a_minute_bar_is_decided_on_only_when_the_minute_is_over(tmp_path: Path) -> None:
    """1-min bars become two 30-s bars, both known at the minute's end: the entry is decided
    at a whole minute (09:38), never on the first half of a minute not yet finished."""
    from sim.backtest import run_backtest

    days = days_from_data(write_csv(tmp_path / "bars.csv", gapper_rows()))
    (trip,) = run_backtest(days).journal
    assert trip.entry_time == "2026-03-16T09:38:00-04:00"


def test_a_per_symbol_export_takes_its_symbol_from_the_file_name(tmp_path: Path) -> None:
    rows = [[r[1], *r[2:7]] for r in gapper_rows()]
    export = write_csv(tmp_path / "ABCD_1min.csv", rows, ["date", *HEADER[2:]])
    (day,) = days_from_data(export)
    assert [s.symbol for s in day.symbols] == ["ABCD"]


def test_prices_off_the_penny_grid_are_put_on_it(tmp_path: Path) -> None:
    rows = gapper_rows()
    rows[1][2] = 106.1000000004
    (day,) = days_from_data(write_csv(tmp_path / "bars.csv", rows))
    prices = day.symbols[0].fill[:, 1:5] * 100
    assert abs(prices - prices.round()).max() < 1e-9


def test_a_folder_of_days_runs_each_day_with_the_equity_carried(tmp_path: Path) -> None:
    from sim.backtest import run_backtest

    write_csv(tmp_path / "d1.csv", gapper_rows(day=DAY))
    write_csv(tmp_path / "d2.csv", gapper_rows(day=DAY + timedelta(days=1)))
    result = run_backtest(days_from_data(tmp_path))
    assert [d.trading_date for d in result.days] == ["2026-03-16", "2026-03-17"]
    assert result.days[1].equity_start == result.days[0].equity_end
    only_second = days_from_data(tmp_path, start=DAY + timedelta(days=1))
    assert [d.trading_date.isoformat() for d in only_second] == ["2026-03-17"]


def test_a_folder_of_day_folders_is_read_as_the_recorder_writes_it(tmp_path: Path) -> None:
    for day in (DAY, DAY + timedelta(days=1)):
        (tmp_path / day.isoformat()).mkdir()
        write_csv(tmp_path / day.isoformat() / "GAPR.csv", gapper_rows(day=day))
    assert [d.trading_date for d in days_from_data(tmp_path)] == [DAY, DAY + timedelta(days=1)]


# -- bad input ----------------------------------------------------------------------------------
def _bad(tmp_path: Path, name: str, rows: list[list], header: list[str] | None = None) -> Path:
    return write_csv(tmp_path / name, rows, header)


def _unknown_column(tmp_path: Path) -> Path:
    rows = [[*r, 1] for r in gapper_rows()]
    return _bad(tmp_path, "bars.csv", rows, [*HEADER, "prev_close", "vwap_x"])


def _unsorted(tmp_path: Path) -> Path:
    rows = gapper_rows()
    rows[5], rows[6] = rows[6], rows[5]
    return _bad(tmp_path, "bars.csv", rows)


def _duplicate(tmp_path: Path) -> Path:
    rows = gapper_rows()
    rows.insert(6, list(rows[5]))
    return _bad(tmp_path, "bars.csv", rows)


def _gap(tmp_path: Path) -> Path:
    rows = gapper_rows()
    del rows[10:50]  # 40 minutes missing in regular hours
    return _bad(tmp_path, "bars.csv", rows)


def _no_regular_hours(tmp_path: Path) -> Path:
    return _bad(tmp_path, "bars.csv", [gapper_rows()[0]])


def _zero_volume(tmp_path: Path) -> Path:
    rows = gapper_rows()
    for row in rows[1:]:
        row[6] = 0
    return _bad(tmp_path, "bars.csv", rows)


@pytest.mark.parametrize(
    ("make", "row", "says"),
    [
        (_unknown_column, None, "unknown column(s) vwap_x"),
        (_unsorted, "row 8", "is earlier than the row before it"),
        (_duplicate, "row 8", "repeats the time of the row before it"),
        (_gap, "row 12", "follows a gap of 41 minutes in regular hours"),
        (_no_regular_hours, "row 2", "without regular-hours bars"),
        (_zero_volume, "row 3", "zero volume in every regular-hours bar"),
    ],
)
def test_bad_input_is_one_line_naming_the_file_the_row_and_the_fix(  # type: ignore[no-untyped-def]
    tmp_path: Path, capsys, make, row: str | None, says: str
) -> None:
    data = make(tmp_path)
    code, printed, err = run(["--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert printed == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("backtest.py: error: replay file ") and str(data) in lines[0]
    assert says in lines[0]
    assert row is None or row in lines[0]
    assert ";" in lines[0]  # then the fix
    assert not (tmp_path / "o").exists()


def test_a_longer_gap_may_be_allowed_from_the_command_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = _gap(tmp_path)
    argv = ["--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"]
    code, _, err = run([*argv, "--max-gap-minutes", "45"], capsys)
    assert code == 0, err


def test_coarse_bars_that_make_no_30s_bars_are_refused(tmp_path: Path) -> None:
    rows = gapper_rows()[:1]
    start = datetime.combine(DAY, time(9, 30), NEW_YORK)
    for k in range(40):
        t = (start + timedelta(seconds=45 * k)).isoformat()
        rows.append(["GAPR", t, 106.0, 106.1, 105.9, 106.0, 1000, 100.0])
    with pytest.raises(BacktestDataError, match="45-s bars do not make 30-s bars"):
        days_from_data(write_csv(tmp_path / "bars.csv", rows))


# -- the command line -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "one of the arguments --data --synthetic --fetch is required"),
        (["--fetch", "MSFT"], "argument --fetch: needs --start"),
        (["--synthetic", "--data", "x.csv"], "not allowed with argument"),
        (["--synthetic", "--allocation", "0"], "argument --allocation: '0' is outside (0, 1]"),
        (["--synthetic", "--days", "0"], "argument --days: '0' is outside [1, 2520]"),
        (["--synthetic", "--start", "2026-13-01"], "'2026-13-01' is not a date"),
        (["--synthetic", "--start", "2026-03-16", "--end", "2026-03-02"], "is before --start"),
        (["--data", "no/such/bars.csv"], "argument --data: no/such/bars.csv does not exist"),
        (["--synthetic", "--kill-switch-at", "25:00"], "'25:00' is not a time"),
        (["--synthetic", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(argv: list[str], says: str, capsys) -> None:  # type: ignore[no-untyped-def]
    code, printed, err = run(argv, capsys)
    assert code == 2 and printed == ""
    assert err.count("\n") == 1 and says in err and "(see --help)" in err


def test_help_answers_without_loading_the_engine() -> None:
    probe = (
        "import sys, backtest\n"
        "try:\n    backtest.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sim.backtest', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert "--synthetic" in done.stdout
    assert done.stdout.strip().endswith("[]")
