"""store/bars.py: what the day trader records replays through ibsim/replay.py exactly."""

from __future__ import annotations

import logging
import random
import time
from datetime import date, datetime
from datetime import time as dtime
from pathlib import Path

import numpy as np
import pytest

from core.clock import NEW_YORK
from ibsim.market import Market, MarketConfig
from ibsim.replay import read_replay_frame
from store.bars import BarRecorder, bar_file, read_bars_file
from tests.test_day_trader import DAY as TRADER_DAY
from tests.test_day_trader import SYMBOLS, events, gateway, start_trader, stop_trader, wait_until
from trading.indicators import Bar

DAY = date(2026, 11, 24)
OPEN = datetime(2026, 11, 24, 9, 30, tzinfo=NEW_YORK).timestamp()


def a_day_of_bars(seed: int, count: int = 780, start: float = OPEN - 3600) -> list[Bar]:
    """30-s bars on the penny grid (as IB sends them), volume >= 4 so every bar trades."""
    rng = random.Random(seed)
    price, bars = 40.0, []
    for i in range(count):
        move = rng.choice((-3, -1, 0, 1, 2)) / 100
        opened, closed = price, round(price + move, 2)
        high = round(max(opened, closed) + rng.randint(0, 3) / 100, 2)
        low = round(min(opened, closed) - rng.randint(0, 3) / 100, 2)
        bars.append(Bar(start + 30 * i, opened, high, low, closed, float(rng.randint(4, 900))))
        price = closed
    return bars


def recorded(tmp_path: Path, days: dict[str, list[Bar]], prev_close: float = 39.5) -> Path:
    recorder = BarRecorder(tmp_path)
    for symbol, bars in days.items():
        for bar in bars:
            recorder.add(symbol, bar, prev_close)
    recorder.close()
    return tmp_path / DAY.isoformat()


def test_a_recorded_day_reads_back_through_the_replay_reader_exactly(tmp_path):
    days = {"AAPL": a_day_of_bars(1), "MSFT": a_day_of_bars(2)}
    days["AAPL"][5] = Bar(days["AAPL"][5].time, 254.13999938964844, 254.2, 254.1, 254.15, 7.0)

    frame = read_replay_frame(recorded(tmp_path, days))

    for symbol, bars in days.items():
        rows = frame[frame["symbol"] == symbol]
        columns = ["time", "open", "high", "low", "close", "volume"]
        assert np.array_equal(rows[columns].to_numpy(), np.array(bars))
        assert set(rows["prev_close"]) == {39.5}


def test_a_recorded_day_replays_to_the_same_30_second_bars_in_the_simulated_market(tmp_path):
    bars = a_day_of_bars(3)
    folder = recorded(tmp_path, {"MSFT": bars})
    market = Market(MarketConfig(DAY, replay_path=str(folder)))
    market.advance(datetime(2026, 11, 24, 20, 0, tzinfo=NEW_YORK).timestamp())

    replayed = market.bars("MSFT", bars[0].time, bars[-1].time + 30, 30)

    ohlcv = [(b.time, b.open, b.high, b.low, b.close, b.volume) for b in replayed]
    assert ohlcv == [tuple(b) for b in bars]
    assert market.previous_close("MSFT") == 39.5


def test_a_restart_the_same_day_keeps_the_bars_recorded_before_it(tmp_path):
    bars = a_day_of_bars(4, count=20)
    first = BarRecorder(tmp_path)
    for bar in bars[:12]:
        first.add("MSFT", bar, 39.5)
    first.close()

    second = BarRecorder(tmp_path)  # the history seed brings some of them again
    for bar in bars[8:]:
        second.add("MSFT", bar)
    second.close()

    path = bar_file(tmp_path, DAY, "MSFT")
    assert read_bars_file(path) == bars
    assert set(read_replay_frame(path)["prev_close"]) == {39.5}


def test_bars_are_written_on_the_timer_while_trading_goes_on(tmp_path):
    recorder = BarRecorder(tmp_path, flush_every_s=0.05).start()
    bars = a_day_of_bars(5, count=3)
    for bar in bars:
        recorder.add("MSFT", bar)
    path = bar_file(tmp_path, DAY, "MSFT")

    deadline = time.monotonic() + 10.0
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)

    assert read_bars_file(path) == bars  # written without close()
    recorder.close()


def test_a_failing_write_is_logged_once_never_raised_and_retried(tmp_path, caplog):
    root = tmp_path / "bars"
    root.write_text("a file where the folder should be")
    recorder = BarRecorder(root)
    bars = a_day_of_bars(6, count=4)
    recorder.add("MSFT", bars[0])

    with caplog.at_level(logging.INFO, logger="bars"):
        assert recorder.flush() == []
        recorder.add("MSFT", bars[1])
        assert recorder.flush() == []
        root.unlink()  # the disk is fixed
        (path,) = recorder.flush()

    failures = [r for r in caplog.records if getattr(r, "event", "") == "bars_record_failed"]
    assert len(failures) == 1 and "BARS_DIR" in failures[0].fix
    assert read_bars_file(path) == bars[:2]  # nothing was lost meanwhile


def test_each_trading_day_gets_its_own_file(tmp_path):
    today = a_day_of_bars(7, count=2)
    tomorrow = [b._replace(time=b.time + 86400) for b in today]

    recorded(tmp_path, {"MSFT": today + tomorrow})

    assert read_bars_file(bar_file(tmp_path, DAY, "MSFT")) == today
    assert read_bars_file(bar_file(tmp_path, date(2026, 11, 25), "MSFT")) == tomorrow


def test_flush_every_must_be_positive():
    with pytest.raises(ValueError, match="flush_every_s > 0"):
        BarRecorder("bars", flush_every_s=0)


def test_the_day_trader_records_every_bar_it_takes_as_a_replayable_day(tmp_path):
    """The real program against the simulated gateway: what it saw (the history seed from
    04:00, then the stream) is on disk after it stops, traded bars equal to the gateway's."""
    start, speed = dtime(9, 29, 0), 30.0
    with gateway(tmp_path, start, speed) as gw:
        trader = start_trader(gw, tmp_path)
        logs = tmp_path / "logs"
        try:
            wait_until(
                lambda: len(events(logs, "seeded")) == SYMBOLS, 60, "every feed seeded", logs
            )
            stop_at = datetime.combine(TRADER_DAY, dtime(9, 31, 30), NEW_YORK).timestamp()
            wait_until(lambda: gw.now() >= stop_at, 60, "09:31:30 on the gateway", logs)
        finally:
            assert stop_trader(trader) == 0
        folder = tmp_path / "bars" / TRADER_DAY.isoformat()  # bars/ beside the database
        frame = read_replay_frame(folder)
        assert sorted(set(frame["symbol"])) == sorted(gw.gateway.market.symbols)
        subscribed = datetime.fromisoformat(events(logs, "watchlist")[0]["exchange_time"])
        seeded = {
            e["symbol"]: datetime.fromisoformat(e["exchange_time"]) for e in events(logs, "seeded")
        }
        for symbol, rows in frame.groupby("symbol"):
            traded = rows[rows["volume"] > 0]
            first, last = float(rows["time"].min()), float(rows["time"].max())
            history = gw.call(gw.gateway.marketdata.bars, symbol, first, last + 30, 30, False)
            expected = {b.time: (b.open, b.high, b.low, b.close, b.volume) for b in history}
            columns = ["open", "high", "low", "close", "volume"]
            got = {
                float(t): tuple(r)
                for t, r in zip(traded["time"], traded[columns].to_numpy(), strict=True)
            }
            assert sorted(got) == sorted(expected)
            # Bars that may lack seconds as the trader saw them (and so as recorded): the
            # seed's first (its window opens a fraction of a second past 04:00) and the live
            # windows open while it subscribed and seeded (no 5-s bars from before).
            joint = (subscribed.timestamp() // 30 * 30, seeded[symbol].timestamp() // 30 * 30)
            whole = [t for t in got if t != first and not joint[0] <= t <= joint[1]]
            assert len(whole) >= len(got) - 12 > 100  # at 30x a seed takes a few windows
            assert [got[t] for t in whole] == [expected[t] for t in whole]
            assert first < datetime.combine(TRADER_DAY, dtime(4, 5), NEW_YORK).timestamp()
            assert last >= stop_at - 90  # the stream's bars too, not only the seed
            assert set(rows["prev_close"]) == {gw.gateway.market.previous_close(symbol)}


def test_the_recorded_root_reads_as_one_replay_folder_across_days(tmp_path):
    today = a_day_of_bars(8, count=3)
    tomorrow = [b._replace(time=b.time + 86400) for b in today]
    recorded(tmp_path, {"MSFT": today + tomorrow, "AAPL": today})

    frame = read_replay_frame(tmp_path)  # bars/, not one day's folder: what backtest.py reads

    assert len(frame) == 9 and sorted(set(frame["symbol"])) == ["AAPL", "MSFT"]
    msft = frame[frame["symbol"] == "MSFT"]
    assert msft["time"].tolist() == [b.time for b in today + tomorrow]
