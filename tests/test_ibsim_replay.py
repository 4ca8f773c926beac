"""Replaying recorded bars: any calendar date, a file or a directory, bad rows named, the bar
size the data's, rows without volume kept on the quote path, and the spread of the stock."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.settings import PROJECT_ROOT
from ibsim.__main__ import config_from_args
from ibsim.__main__ import main as ibsim_main
from ibsim.market import Market, MarketConfig, spread_ticks
from ibsim.replay import check_sessions, infer_bar_seconds, read_replay_frame
from ibsim.server import build_market
from tests.stepped_gateway import SAMPLE, SAMPLE_DATE, SAMPLE_DIR, at


def sample_market(path: Path = SAMPLE, **kw: object) -> Market:
    market = Market(MarketConfig(SAMPLE_DATE, replay_path=str(path), **kw))
    market.advance(at(20, 0))
    return market


def run_ibsim(*argv: str) -> subprocess.CompletedProcess[str]:
    """python -m ibsim with a port it cannot keep (0 is fine: bad input stops it first)."""
    return subprocess.run(
        [sys.executable, "-m", "ibsim", "--port", "0", *argv],
        capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT,
    )  # fmt: skip


def edited_sample(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    lines = SAMPLE.read_text().splitlines()
    path = tmp_path / SAMPLE.name
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


# -- dates and inputs ----------------------------------------------------------------------------
def test_a_2022_replay_file_builds_with_its_date_from_the_command_line() -> None:
    config, _ = config_from_args(["--date", "2022-05-19", "--replay", str(SAMPLE)])
    market = build_market(config)
    assert list(market.symbols) == ["MSFT"]
    assert config.resolved_date() == date(2022, 5, 19)


def test_a_replay_directory_gives_the_symbols_and_the_day_of_its_data() -> None:
    config, _ = config_from_args(["--replay", str(SAMPLE_DIR)])
    assert config.resolved_date() == SAMPLE_DATE  # no --date: the data's day
    assert sorted(build_market(config).symbols) == ["AAPL", "MSFT"]


def test_a_duplicated_row_is_an_error_naming_the_file_and_the_row(tmp_path: Path) -> None:
    path = edited_sample(tmp_path, lambda lines: [*lines[:10], lines[9], *lines[10:]])
    with pytest.raises(ValueError) as error:
        read_replay_frame(path)
    message = str(error.value)
    assert f"{path} row 11" in message and "repeats" in message and "\n" not in message


def test_an_out_of_order_row_is_an_error_naming_the_row(tmp_path: Path) -> None:
    path = edited_sample(tmp_path, lambda lines: [*lines[:5], lines[6], lines[5], *lines[7:]])
    with pytest.raises(ValueError, match=r"row 7: MSFT at 2022-05-19 \S+ is earlier than"):
        read_replay_frame(path)


def test_the_same_bar_in_two_files_of_a_directory_is_an_error(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "a.csv")
    shutil.copy(SAMPLE, tmp_path / "b.csv")
    with pytest.raises(ValueError, match=r"b\.csv row 2: MSFT .* repeats .*a\.csv row 2"):
        read_replay_frame(tmp_path)


@pytest.mark.parametrize(
    "argv",
    [
        ["--replay", "nowhere/bars.csv"],
        ["--replay", "tests/data/massive"],  # a directory without replay files
        ["--replay", "tests/data/replay", "--date", "2022-05-20"],
        ["--replay", "tests/data/replay", "--bar-seconds", "0"],
        ["--replay", "tests/data/replay", "--spread", "0"],
        ["--date", "1985-05-20"],
    ],
)
def test_bad_replay_input_is_one_line_and_exit_2(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    # In process: any exception other than the exit would escape as a traceback here.
    with pytest.raises(SystemExit) as exited:
        ibsim_main(["--port", "0", *argv])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("ibsim: error: ")


def test_a_duplicate_row_from_the_command_line_is_one_line(tmp_path: Path) -> None:
    path = edited_sample(tmp_path, lambda lines: [*lines[:10], lines[9], *lines[10:]])
    result = run_ibsim("--replay", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "row 11" in result.stderr


# -- bar size --------------------------------------------------------------------------------------
def test_the_bar_size_is_the_typical_spacing_not_the_smallest_step() -> None:
    frame = read_replay_frame(SAMPLE)  # minute bars with minutes missing
    assert infer_bar_seconds(frame) == 60
    five = pd.DataFrame({"symbol": "X", "time": [0.0, 300, 600, 720, 900, 1200, 1500]})
    assert infer_bar_seconds(five) == 300  # one stray row 2 minutes after a bar


def test_an_explicit_bar_size_is_used(tmp_path: Path) -> None:
    # The sample's minute bars replayed as 30-s bars: each bar's volume lands in 30 seconds.
    market = sample_market(bar_seconds=30)
    bars = market.bars("MSFT", at(9, 30), at(9, 31), 30)
    assert [b.time for b in bars] == [at(9, 30)]


# -- rows without volume ---------------------------------------------------------------------------
def test_a_row_without_volume_keeps_its_prices_on_the_quote_path_without_trades() -> None:
    market = sample_market()
    rows = read_replay_frame(SAMPLE).set_index("time")
    row = rows.loc[at(9, 47)]
    assert row["volume"] == 0 and row["high"] > row["low"]
    before = market.quote_at("MSFT", at(9, 46, 59))
    quotes = [market.quote_at("MSFT", at(9, 47, s)) for s in range(60)]
    assert {q.volume for q in quotes} == {before.volume}  # no trade, no volume
    assert {q.last for q in quotes} == {before.last}
    mids = np.array([(q.bid + q.ask) / 2 for q in quotes])
    assert mids.max() >= row["high"] - 0.01 and mids.min() <= row["low"] + 0.01
    assert not market.bars("MSFT", at(9, 47), at(9, 48), 60)  # history: no trades, no bar


# -- spread ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("price", "dollars_a_day", "ticks"),
    [(250.0, 6e9, 1), (140.0, 10e9, 1), (5.0, 5e6, 2), (100.0, 100e6, 6)],
)
def test_the_spread_is_a_function_of_price_and_liquidity(
    price: float, dollars_a_day: float, ticks: int
) -> None:
    assert spread_ticks(price, dollars_a_day) == ticks


def test_a_liquid_large_cap_replays_with_a_one_cent_spread() -> None:
    market = sample_market()
    spreads = {
        round(
            market.quote_at("MSFT", at(10, 0) + s).ask - market.quote_at("MSFT", at(10, 0) + s).bid,
            4,
        )
        for s in range(0, 600, 7)
    }
    assert spreads == {0.01}


def test_the_spread_override_applies_to_every_second() -> None:
    market = sample_market(spread=0.05)
    quotes = [market.quote_at("MSFT", t) for t in (at(8, 30), at(10, 0), at(10, 15, 31))]
    assert {round(q.ask - q.bid, 4) for q in quotes} == {0.05}


def test_a_float32_previous_close_goes_out_on_the_tick_grid(tmp_path: Path) -> None:
    frame = read_replay_frame(SAMPLE)[["symbol", "time", "open", "high", "low", "close", "volume"]]
    path = tmp_path / "msft.parquet"
    frame.assign(prev_close=np.float32(254.14)).to_parquet(path)
    assert float(np.float32(254.14)) == 254.13999938964844  # what the column holds
    market = Market(MarketConfig(SAMPLE_DATE, replay_path=str(path)))
    assert repr(market.previous_close("MSFT")) == "254.14"
    assert market.quote("MSFT").prev_close == 254.14  # the ticker's close (tick 9)


# -- a day's sessions (check_sessions) ----------------------------------------------------------
def test_the_sample_passes_the_session_checks() -> None:
    check_sessions(read_replay_frame(SAMPLE_DIR))


def _checked(tmp_path: Path, edit) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as error:
        check_sessions(read_replay_frame(edited_sample(tmp_path, edit)))
    assert "\n" not in str(error.value)
    return str(error.value)


def _regular_rows(lines: list[str]) -> list[int]:
    """The sample's regular-hours rows (09:30-16:00 New York, times like ...T09:31:00-04:00)."""
    return [
        i
        for i, line in enumerate(lines[1:], 1)
        if "09:30" <= line.split(",")[1].split("T")[1][:5] < "16:00"
    ]


def test_a_bar_whose_close_is_outside_its_range_is_named(tmp_path: Path) -> None:
    def edit(lines: list[str]) -> list[str]:
        cells = lines[3].split(",")
        cells[5] = str(float(cells[3]) + 1)  # close above the high
        return [*lines[:3], ",".join(cells), *lines[4:]]

    assert "row 4" in _checked(tmp_path, edit) and "open and close must lie within" in (
        _checked(tmp_path, edit)
    )


def test_a_day_without_regular_hours_bars_is_named(tmp_path: Path) -> None:
    def edit(lines: list[str]) -> list[str]:
        keep = set(_regular_rows(lines))
        return [line for i, line in enumerate(lines) if i not in keep]

    assert "without regular-hours bars" in _checked(tmp_path, edit)


def test_a_day_with_no_regular_hours_volume_is_named(tmp_path: Path) -> None:
    def edit(lines: list[str]) -> list[str]:
        regular = set(_regular_rows(lines))
        out = []
        for i, line in enumerate(lines):
            cells = line.split(",")
            if i in regular:
                cells[6] = "0"
            out.append(",".join(cells))
        return out

    assert "zero volume in every regular-hours bar" in _checked(tmp_path, edit)


def test_a_regular_hours_hole_longer_than_half_an_hour_is_named(tmp_path: Path) -> None:
    def edit(lines: list[str]) -> list[str]:
        regular = _regular_rows(lines)
        cut = set(regular[5:45])
        return [line for i, line in enumerate(lines) if i not in cut]

    message = _checked(tmp_path, edit)
    assert "follows a gap of 41 minutes in regular hours" in message
    assert "fill the missing bars" in message


def test_a_per_symbol_export_takes_its_symbol_from_its_file_name(tmp_path: Path) -> None:
    frame = (
        pd.read_csv(SAMPLE).drop(columns=["symbol", "prev_close"]).rename(columns={"time": "date"})
    )
    frame.to_csv(tmp_path / "abc_1min.csv", index=False)
    assert set(read_replay_frame(tmp_path / "abc_1min.csv")["symbol"]) == {"ABC"}
