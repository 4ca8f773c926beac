"""sim/fetch.py through the real `massive` client against a local HTTP server.

The scanner tests' FakeMassive also answers the aggregates path here with minute bars made from
the requested window (so every answer is checkable against the request); time is injected, so
no test sleeps on the rate limit.
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from datetime import date, datetime

import numpy as np
import pytest

from core.clock import NEW_YORK, MarketClock
from core.settings import Secret, load_settings
from ibsim.replay import read_replay_frame
from sim.fetch import FetchError, fetch_bars
from tests.test_scanner_polygon import (
    SIM_START,
    FakeMassive,
    FakeTime,
    _fixture,
    _max_in_window,
    _timed_server,
    make_scanner,
    scanner_clock,
    serving,
)

THU, FRI, MON = date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 23)
AGGS = "/v2/aggs/ticker/"


def minute_rows(symbol: str, start_ms: int, end_ms: int) -> list[dict[str, float]]:
    """Deterministic minute bars for 07:00-17:59 New York of each weekday in the window."""
    rng = random.Random(symbol)
    rows = []
    for ms in range(start_ms - start_ms % 60_000, end_ms + 1, 60_000):
        at = datetime.fromtimestamp(ms / 1000, NEW_YORK)
        if at.weekday() >= 5 or not 7 <= at.hour < 18:
            continue
        price = round(20 + rng.random() * 5, 2)
        high, low = round(price + 0.05, 2), round(price - 0.04, 2)
        rows.append({"t": ms, "o": price, "h": high, "l": low, "c": low + 0.01, "v": 300.0})
    return rows


class FakeAggregates(FakeMassive):
    """FakeMassive that also serves /v2/aggs/ticker/{symbol}/range/1/minute/{from}/{to}."""

    def __init__(self) -> None:
        super().__init__()
        self.empty: set[str] = set()  # symbols the service has no bars for
        self.served: dict[str, list[dict[str, float]]] = {}

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[str, bytes]:
        if not path.startswith(AGGS):
            return super()._route(path, query)
        symbol, _, _, _, start, end = path[len(AGGS) :].split("/")
        rows = [] if symbol in self.empty else minute_rows(symbol, int(start), int(end))
        self.served.setdefault(symbol, []).extend(rows)
        body = {"ticker": symbol, "status": "OK", "resultsCount": len(rows), "adjusted": True}
        if rows:
            body["results"] = rows
        return "aggs", json.dumps(body).encode()


@pytest.fixture
def massive() -> Iterator[FakeAggregates]:
    yield from serving(FakeAggregates())


@pytest.fixture
def clock() -> MarketClock:
    return scanner_clock()


def test_minute_bars_are_cached_one_replay_file_per_symbol_per_day(massive, clock, tmp_path):
    paths = fetch_bars(
        ["msft", "AAPL"], [FRI, MON], tmp_path, client=make_scanner(massive.url, clock)
    )

    assert [(p.parent.name, p.name) for p in paths] == [
        ("2026-11-20", "AAPL.parquet"),
        ("2026-11-20", "MSFT.parquet"),
        ("2026-11-23", "AAPL.parquet"),
        ("2026-11-23", "MSFT.parquet"),
    ]
    assert massive.routes() == ["aggs", "aggs"]  # one request per symbol for both days
    monday = read_replay_frame(tmp_path / "2026-11-23")  # a day's folder replays as it is
    served = [r for r in massive.served["MSFT"] if r["t"] >= monday["time"].min() * 1000]
    msft = monday[monday["symbol"] == "MSFT"]
    assert msft["time"].tolist() == [r["t"] / 1000 for r in served]
    assert msft["close"].tolist() == [r["c"] for r in served]
    # prev_close: Friday's last regular-hours minute (15:59) close
    friday_close = datetime(2026, 11, 20, 15, 59, tzinfo=NEW_YORK).timestamp() * 1000
    (last,) = [r for r in massive.served["MSFT"] if r["t"] == friday_close]
    assert set(msft["prev_close"]) == {last["c"]}


def test_a_cached_day_is_never_fetched_again(massive, clock, tmp_path):
    fetch_bars(["MSFT"], [FRI], tmp_path, client=make_scanner(massive.url, clock))
    first = (tmp_path / "2026-11-20" / "MSFT.parquet").read_bytes()

    again = fetch_bars(["MSFT"], [FRI], tmp_path, client=make_scanner(massive.url, clock))
    assert len(massive.requests) == 1
    fetch_bars(["MSFT"], [FRI, MON], tmp_path, client=make_scanner(massive.url, clock))

    assert len(again) == 1 and len(massive.requests) == 2
    start = int(massive.requests[1][1].split("/")[-2])  # the second asks from Friday 04:00 only
    assert start == datetime(2026, 11, 20, 4, 0, tzinfo=NEW_YORK).timestamp() * 1000
    assert (tmp_path / "2026-11-20" / "MSFT.parquet").read_bytes() == first


def test_requests_never_exceed_5_in_any_60_s_at_the_server(massive, clock, tmp_path):
    fake_time = FakeTime()
    arrivals = _timed_server(massive, fake_time)
    symbols = [f"S{i}" for i in range(8)]

    paths = fetch_bars(symbols, [MON], tmp_path, client=make_scanner(massive.url, clock, fake_time))

    assert len(paths) == 8 and len(arrivals) == 8
    assert _max_in_window(arrivals, 60.0) <= 5
    assert arrivals[-1] - arrivals[0] >= 60.0  # the sixth waited for the window


def test_the_settings_key_and_request_limit_are_the_scanners(massive, clock, tmp_path):
    settings = load_settings(
        environ={},
        dotenv_path=tmp_path / "absent.env",
        massive_api_key=Secret("settings-key"),
        massive_requests_per_minute=0,
    )

    fetch_bars(["MSFT"], [MON], tmp_path, settings, base_url=massive.url, clock=clock)

    assert massive.requests[0][3] == "Bearer settings-key"


def test_no_key_is_one_line_naming_the_setting_and_sends_nothing(massive, clock, tmp_path):
    settings = load_settings(environ={}, dotenv_path=tmp_path / "absent.env")

    with pytest.raises(FetchError) as error:
        fetch_bars(["MSFT"], [MON], tmp_path, settings, base_url=massive.url, clock=clock)

    assert "MASSIVE_API_KEY" in str(error.value) and "\n" not in str(error.value)
    assert massive.requests == []


def test_cached_days_need_no_key(massive, clock, tmp_path):
    fetch_bars(["MSFT"], [MON], tmp_path, client=make_scanner(massive.url, clock))
    settings = load_settings(environ={}, dotenv_path=tmp_path / "absent.env")

    (path,) = fetch_bars(["MSFT"], [MON], tmp_path, settings, base_url=massive.url, clock=clock)

    assert path.exists() and len(massive.requests) == 1


@pytest.mark.parametrize(
    ("status", "fixture", "words"),
    [
        (401, "error_401.json", "set MASSIVE_API_KEY in .env"),
        (403, "error_403.json", "plan does not include these bars"),
        (429, "error_429.json", "rate-limiting this key"),
    ],
)
def test_a_refused_request_is_one_line_with_the_fix(
    massive, clock, tmp_path, status, fixture, words
):
    massive.script["aggs"] = [(status, _fixture(fixture))] * 4  # every retry refused too

    with pytest.raises(FetchError) as error:
        fetch_bars(["MSFT"], [MON], tmp_path, client=make_scanner(massive.url, clock))

    message = str(error.value)
    assert f"HTTP {status}" in message and words in message and "\n" not in message
    assert not (tmp_path / "2026-11-23").exists()


def test_a_symbol_without_bars_is_reported_and_the_others_still_come(massive, clock, tmp_path):
    massive.empty.add("NOPE")
    skipped: list[str] = []

    paths = fetch_bars(
        ["NOPE", "MSFT"],
        [MON],
        tmp_path,
        client=make_scanner(massive.url, clock),
        on_missing=skipped.append,
    )

    assert [p.stem for p in paths] == ["MSFT"]
    (line,) = skipped
    assert "NOPE" in line and "2026-11-23" in line


def test_closed_and_unfinished_days_are_reported_without_a_request(massive, clock, tmp_path):
    skipped: list[str] = []
    saturday, today = date(2026, 11, 21), SIM_START.date()

    paths = fetch_bars(
        ["MSFT"],
        [saturday, today],
        tmp_path,
        client=make_scanner(massive.url, clock),
        on_missing=skipped.append,
    )

    assert paths == [] and massive.requests == []
    assert "2026-11-21 is not a trading day" in skipped[0]
    assert "2026-11-24 is not over yet" in skipped[1]


def test_network_down_is_one_line_saying_to_check_the_network(clock, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"

    with pytest.raises(FetchError, match=r"network: .*check the network") as error:
        fetch_bars(["MSFT"], [MON], tmp_path, client=make_scanner(url, clock))

    assert "\n" not in str(error.value)


def test_a_bad_symbol_is_refused_before_any_request(massive, clock, tmp_path):
    with pytest.raises(FetchError, match=r"\.\./ETC is not a ticker"):
        fetch_bars(["../etc"], [MON], tmp_path, client=make_scanner(massive.url, clock))
    assert massive.requests == []


def test_fetched_prices_read_back_exactly(massive, clock, tmp_path):
    (path,) = fetch_bars(["MSFT"], [THU], tmp_path, client=make_scanner(massive.url, clock))

    frame = read_replay_frame(path)
    served = [r for r in massive.served["MSFT"] if r["t"] >= frame["time"].min() * 1000]
    assert np.array_equal(frame["open"].to_numpy(), [r["o"] for r in served])
    assert np.array_equal(frame["volume"].to_numpy(), [r["v"] for r in served])


@pytest.fixture
def cli_settings(tmp_path, clock):
    from core import clock as clock_module
    from core import settings as settings_module

    settings = load_settings(
        environ={},
        dotenv_path=tmp_path / "absent.env",
        massive_api_key=Secret("test-key"),
        massive_requests_per_minute=0,
        database_path=tmp_path / "trading.db",
    )
    settings_module.set_settings(settings)
    clock_module.set_clock(clock)
    yield settings
    settings_module.set_settings(None)
    clock_module.set_clock(None)


def test_backtest_fetch_downloads_then_backtests_the_cached_days(
    massive, cli_settings, tmp_path, capsys
):
    import backtest

    argv = ["--fetch", "MSFT,AAPL", "--start", str(FRI), "--end", str(MON)]
    argv += ["--massive-url", massive.url, "--out", str(tmp_path / "out"), "--no-progress"]

    assert backtest.main(argv) == 0
    assert backtest.main(argv) == 0  # the second run from the cache

    assert massive.routes() == ["aggs", "aggs"]
    cache = tmp_path / "massive_bars"  # beside the database
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.parquet")) == [
        "2026-11-20/AAPL.parquet",
        "2026-11-20/MSFT.parquet",
        "2026-11-23/AAPL.parquet",
        "2026-11-23/MSFT.parquet",
    ]
    captured = capsys.readouterr()
    assert "4 symbol-day file(s)" in captured.err
    assert (tmp_path / "out" / "summary.txt").exists()


def test_backtest_fetch_failure_is_one_line_and_exit_1(massive, cli_settings, tmp_path, capsys):
    import backtest

    massive.script["aggs"] = [(401, _fixture("error_401.json"))]
    argv = ["--fetch", "MSFT", "--start", str(MON), "--massive-url", massive.url]

    assert backtest.main([*argv, "--no-progress", "--out", str(tmp_path / "out")]) == 1

    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("backtest.py: error: fetch MSFT") and "MASSIVE_API_KEY" in line
