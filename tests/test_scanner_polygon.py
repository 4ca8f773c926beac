"""scanner_polygon, tested through the real `massive` client against a local HTTP server.

The server serves hand-written JSON in the shape of the Massive/Polygon responses
(tests/data/massive/); the client is pointed at it with its `base` setting. Nothing is mocked
between the scanner and the HTTP socket. Time is injected: no test sleeps on the rate limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

import scanner_polygon as sp
from core.clock import NEW_YORK, MarketClock, SimulatedTimeSource

DATA = Path(__file__).parent / "data" / "massive"
# Tuesday 2026-11-24 11:00 New York: a regular session; the two before are 11-23 and 11-20.
SIM_START = datetime(2026, 11, 24, 11, 0, tzinfo=NEW_YORK)


def _fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


class FakeMassive:
    """A local HTTP server answering the Massive REST paths the scanner uses.

    `script[route]` is a queue of (status, body) or (status, body, headers) served before the
    route's 200 fixture (`defaults[route]` replaces that fixture); `requests` records (route,
    path, query, authorization header) in order.
    """

    def __init__(self) -> None:
        self.script: dict[str, list[tuple]] = {}
        self.defaults: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]], str]] = []
        self.on_request = lambda route: None  # test hook, runs in the server thread
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else ~40 ms per response (delayed ACK)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                route, default = fake.route(url.path, query)
                fake.requests.append(
                    (route, url.path, query, self.headers.get("Authorization", ""))
                )
                fake.on_request(route)
                queue = fake.script.get(route)
                status, body, *more = queue.pop(0) if queue else (200, default)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (more[0] if more else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[str, bytes]:
        route, body = self._route(path, query)
        return route, self.defaults.get(route, body)

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[str, bytes]:
        if path == "/v2/snapshot/locale/us/markets/stocks/tickers":
            return "snapshot", _fixture("snapshot_all.json")
        if path == "/v2/snapshot/locale/us/markets/stocks/gainers":
            return "gainers", _fixture("gainers.json")
        if path.startswith("/v2/aggs/grouped/locale/us/market/stocks/"):
            return "grouped", _fixture("grouped_daily.json")
        if path == "/v3/reference/tickers":
            page = "tickers_cs_page2.json" if "cursor" in query else "tickers_cs_page1.json"
            return "tickers", _fixture(page)
        if path == "/v3/reference/splits":
            return "splits", _fixture("splits_none.json")
        return "unknown", b'{"status":"NOT_FOUND","message":"no such path"}'

    def routes(self) -> list[str]:
        return [r[0] for r in self.requests]


def serving(fake: FakeMassive) -> Iterator[FakeMassive]:
    """Run `fake` for one test (the fixtures of this file and of test_sim_fetch)."""
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def massive() -> Iterator[FakeMassive]:
    yield from serving(FakeMassive())


def scanner_clock() -> MarketClock:
    """The scans' market clock: SIM_START, at market speed."""
    return MarketClock(SimulatedTimeSource.starting_at(SIM_START, speed=1.0))


@pytest.fixture
def clock() -> MarketClock:
    return scanner_clock()


class FakeTime:
    """Injected monotonic time: sleeping advances it instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


def make_scanner(
    massive: FakeMassive | str,
    clock: MarketClock,
    fake_time: FakeTime | None = None,
    requests_per_minute: int | None = None,
    **config: object,
) -> sp.MassiveScanner:
    """A scanner (the fetch's client too) on `massive` (a fake, or any base URL) with a fast
    rate limiter on injected time."""
    fake_time = fake_time or FakeTime()
    plan_limit = {} if requests_per_minute is None else {"requests_per_minute": requests_per_minute}
    return sp.MassiveScanner(
        "test-key",
        config=sp.ScanConfig(**{"avg_volume_days": 2, **config}),  # type: ignore[arg-type]
        clock=clock,
        base_url=massive if isinstance(massive, str) else massive.url,
        limiter=sp.RateLimiter(5, 60.0, time_fn=fake_time.time, sleep_fn=fake_time.sleep),
        sleep_fn=fake_time.sleep,
        rng=random.Random(7),
        timeout_s=2.0,
        **plan_limit,
    )


def scanner_problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "scanner" and r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ filtering


def test_scan_keeps_only_momentum_volume_price_liquidity_common_stock_picks(massive, clock):
    scanner = make_scanner(massive, clock)

    watchlist = scanner.scan()

    assert watchlist is not None
    assert watchlist.source == "massive"
    assert abs(watchlist.timestamp.timestamp() - clock.epoch()) < 5  # exchange time, aware
    # Ranked by momentum: MOMO 0.98, FALLB 0.85, RUNR 0.83. Rejected: SLOW (momentum),
    # THIN (volume), PENY (price floor), BIGP (ceiling), DRY (dollar volume), WARW (not CS),
    # OTCX (OTC), NEWL (no previous close).
    assert watchlist.symbols == ["MOMO", "FALLB", "RUNR"]
    momo = watchlist.picks[0]
    assert momo.momentum == pytest.approx(0.5 * 1.0 + 0.3 * (1.1 / 1.15) + 0.2 * 0.9587, abs=1e-3)
    assert momo.volume_ratio == pytest.approx(3.0)
    assert momo.price == 11.0
    assert momo.change_pct == pytest.approx(10.0)


def test_every_pick_carries_its_numbers_as_reason(massive, clock):
    watchlist = make_scanner(massive, clock).scan()

    assert watchlist is not None
    momo, fallb, _ = watchlist.picks
    assert "momentum 0.98>=0.70" in momo.reason
    assert "chg +10.0%" in momo.reason
    assert "volume 3.0x 2d-avg>2x" in momo.reason
    assert "price $11.00" in momo.reason
    assert "dollar vol $33.0M>=$1M" in momo.reason
    # FALLB has no grouped-daily rows: the previous day's volume is the basis, and says so.
    assert "volume 4.0x prev-day>2x" in fallb.reason


def test_scan_goes_through_the_client_with_key_and_expected_paths(massive, clock):
    make_scanner(massive, clock).scan()

    # The snapshot first: its answer tells the plan (here real-time), then the reference data.
    assert massive.routes() == ["snapshot", "tickers", "tickers", "splits", "grouped", "grouped"]
    assert all(auth == "Bearer test-key" for *_, auth in massive.requests)
    grouped_paths = [path for route, path, _, _ in massive.requests if route == "grouped"]
    assert grouped_paths == [
        "/v2/aggs/grouped/locale/us/market/stocks/2026-11-23",
        "/v2/aggs/grouped/locale/us/market/stocks/2026-11-20",  # skips the weekend
    ]
    first_ref_query = massive.requests[1][2]
    assert first_ref_query["type"] == ["CS"] and first_ref_query["market"] == ["stocks"]
    splits_query = massive.requests[3][2]
    assert splits_query["execution_date.gte"] == ["2026-11-21"]  # after the oldest day in use
    assert splits_query["execution_date.lte"] == ["2026-11-24"]


def test_cursor_page_is_fetched_from_next_url_alone_as_the_client_does(massive, clock):
    make_scanner(massive, clock).scan()

    pages = [query for route, _, query, _ in massive.requests if route == "tickers"]
    next_url = json.loads(_fixture("tickers_cs_page1.json"))["next_url"]
    assert pages[1] == parse_qs(urlparse(next_url).query)  # the cursor, nothing else
    assert set(pages[0]) >= {"type", "market", "active", "limit"}


def test_reference_and_daily_volumes_are_cached_between_scans(massive, clock):
    scanner = make_scanner(massive, clock)
    scanner.scan()
    massive.requests.clear()

    assert scanner.scan() is not None

    assert massive.routes() == ["snapshot"]  # one request per refresh after the first


def test_thresholds_are_configurable(massive, clock):
    watchlist = make_scanner(massive, clock, min_volume_ratio=1.4, common_stocks_only=False).scan()

    assert watchlist is not None
    # THIN (1.5x) now passes; WARW passes without the common-stock list; ties rank by volume.
    assert set(watchlist.symbols) == {"MOMO", "WARW", "THIN", "FALLB", "RUNR"}
    assert "tickers" not in massive.routes()


def test_gainers_universe_uses_the_gainers_snapshot(massive, clock):
    watchlist = make_scanner(massive, clock, universe="gainers", avg_volume_days=0).scan()

    assert watchlist is not None
    assert "gainers" in massive.routes() and "snapshot" not in massive.routes()
    # avg_volume_days=0: previous-day volume basis (MOMO 3.0M / 0.9M = 3.3x)
    assert watchlist.symbols == ["MOMO", "RUNR"]
    assert "prev-day" in watchlist.picks[0].reason


def test_volume_ratio_must_be_strictly_above_threshold_and_momentum_at_least(massive, clock):
    # MOMO's ratio is exactly 3.0: a 3.0 threshold rejects it (strict), 2.99 keeps it.
    assert "MOMO" not in make_scanner(massive, clock, min_volume_ratio=3.0).scan().symbols
    assert "MOMO" in make_scanner(massive, clock, min_volume_ratio=2.99).scan().symbols


def test_pure_scoring_handles_missing_bars_without_picking():
    snaps = [
        sp.TickerSnapshot.from_dict({"ticker": "EMPTY"}),
        sp.TickerSnapshot.from_dict(
            {"ticker": "ZERO", "day": {"o": 0, "h": 0, "l": 0, "c": 0, "v": 0}}
        ),
    ]
    arrays = sp.snapshot_arrays(snaps, {}, None)

    assert sp.rank_picks(arrays, sp.ScanConfig()) == []


def test_bad_config_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="min_price < max_price"):
        sp.ScanConfig(min_price=10, max_price=5)


# ------------------------------------------------------------------ failures


def test_429_waits_for_its_retry_after_and_keeps_the_body(massive, clock, caplog):
    fake_time = FakeTime()
    massive.script["snapshot"] = [(429, _fixture("error_429.json"), {"retry-after": "7"})]
    scanner = make_scanner(massive, clock, fake_time, common_stocks_only=False, avg_volume_days=0)

    watchlist = scanner.scan()

    assert watchlist is not None and watchlist.symbols
    assert massive.routes() == ["snapshot", "snapshot", "splits"]
    assert fake_time.sleeps == [7.0]  # Retry-After, not a guessed backoff
    (warning,) = [r for r in caplog.records if getattr(r, "event", "") == "massive_rate_limited"]
    assert warning.basis == "Retry-After"
    assert "exceeded the maximum requests per minute" in warning.error  # the body, kept


def test_429_without_retry_after_waits_for_the_rate_window_to_clear(massive, clock):
    fake_time = FakeTime()
    massive.script["snapshot"] = [(429, _fixture("error_429.json"))]
    scanner = make_scanner(massive, clock, fake_time, common_stocks_only=False, avg_volume_days=0)

    assert scanner.scan() is not None

    # The refused request's response came back at t=1000: wait the window and its margin.
    assert fake_time.sleeps == [pytest.approx(61.0)]


def test_500s_exhausted_give_none_and_one_log_line(massive, clock, caplog):
    fake_time = FakeTime()
    massive.script["snapshot"] = [(500, b'{"status":"ERROR"}')] * 8
    scanner = make_scanner(massive, clock, fake_time, common_stocks_only=False, avg_volume_days=0)

    first = scanner.scan()
    second = scanner.scan()  # still failing: no second line

    assert first is None and second is None
    assert massive.routes() == ["snapshot"] * 8  # 4 bounded attempts per scan
    problems = scanner_problems(caplog)
    assert len(problems) == 1
    assert problems[0].condition == "http" and "HTTP 500" in problems[0].error
    # exponential backoff with jitter: waits in [1, 2], [2, 4], [4, 8] s (cap doubles)
    waits = fake_time.sleeps[:3]
    assert all(2**k <= w <= 2 ** (k + 1) for k, w in enumerate(waits))


def test_recovery_is_logged_and_a_new_outage_reported_again(massive, clock, caplog):
    caplog.set_level(logging.INFO, logger="scanner")
    massive.script["snapshot"] = [(500, b"{}")] * 4
    scanner = make_scanner(massive, clock, common_stocks_only=False, avg_volume_days=0)
    assert scanner.scan() is None
    assert scanner.scan() is not None
    massive.script["snapshot"] = [(500, b"{}")] * 4

    assert scanner.scan() is None

    assert len(scanner_problems(caplog)) == 2
    assert any(getattr(r, "event", "") == "massive_recovered" for r in caplog.records)


def test_retry_after_reads_seconds_or_an_http_date():
    now = datetime(2026, 11, 24, 16, 0, 0, tzinfo=NEW_YORK).timestamp()

    assert sp.retry_after_seconds("12", now) == 12.0
    assert sp.retry_after_seconds("Tue, 24 Nov 2026 21:00:30 GMT", now) == pytest.approx(30.0)
    assert sp.retry_after_seconds("soon", now) is None
    assert sp.retry_after_seconds(None, now) is None


def test_429_asking_for_longer_than_the_cap_ends_the_scan_without_sleeping(massive, clock, caplog):
    fake_time = FakeTime()
    massive.script["snapshot"] = [(429, _fixture("error_429.json"), {"Retry-After": "3600"})]
    scanner = make_scanner(massive, clock, fake_time, common_stocks_only=False, avg_volume_days=0)

    assert scanner.scan() is None

    assert fake_time.sleeps == [] and massive.routes() == ["snapshot"]
    (problem,) = scanner_problems(caplog)
    assert problem.condition == "rate_limited" and "3600 s by Retry-After" in problem.error


def test_unknown_key_401_stops_the_scan_at_the_first_request_with_one_line(massive, clock, caplog):
    for route in ("snapshot", "tickers", "grouped", "splits"):
        massive.script[route] = [(401, _fixture("error_401.json"))] * 3
    scanner = make_scanner(massive, clock)

    assert scanner.scan() is None
    assert scanner.scan() is None  # the key only changes with a restart: nothing more is sent

    assert massive.routes() == ["snapshot"]
    (problem,) = scanner_problems(caplog)
    assert problem.condition == "unauthorized"
    assert "Unknown API Key" in problem.error and "MASSIVE_API_KEY" in problem.error
    assert "\n" not in problem.error


def test_401_on_reference_data_is_not_degraded_but_stops_the_scan(massive, clock, caplog):
    scanner = make_scanner(massive, clock)
    scanner.scan()  # plan known (real-time), lists cached
    massive.requests.clear()
    caplog.clear()
    scanner._common = None  # a new day's reference list
    massive.script["tickers"] = [(401, _fixture("error_401.json"))]

    assert scanner.scan() is None

    assert massive.routes() == ["tickers"]
    assert [r.event for r in scanner_problems(caplog)] == ["scanner_unavailable"]


def test_no_key_logs_once_and_sends_no_request(massive, clock, caplog):
    scanner = sp.MassiveScanner(None, clock=clock, base_url=massive.url)

    assert scanner.scan() is None
    assert scanner.scan() is None

    assert massive.requests == []
    (problem,) = scanner_problems(caplog)
    assert problem.condition == "no_key" and "MASSIVE_API_KEY" in problem.error


def test_unreachable_server_gives_none(clock, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake_time = FakeTime()
    scanner = sp.MassiveScanner(
        "test-key",
        clock=clock,
        base_url=f"http://127.0.0.1:{port}",
        limiter=sp.RateLimiter(5, 60, time_fn=fake_time.time, sleep_fn=fake_time.sleep),
        sleep_fn=fake_time.sleep,
        timeout_s=1.0,
    )

    assert scanner.scan() is None

    (problem,) = scanner_problems(caplog)
    assert problem.condition == "network"


def test_secondary_data_rejected_degrades_to_prev_day_volume(massive, clock, caplog):
    massive.script["grouped"] = [(403, _fixture("error_403.json"))]
    scanner = make_scanner(massive, clock, common_stocks_only=False)

    watchlist = scanner.scan()

    assert watchlist is not None
    assert all("prev-day" in p.reason for p in watchlist.picks)
    (problem,) = scanner_problems(caplog)
    assert problem.event == "scanner_degraded"


# ------------------------------------------------------------------ rate limit


def _max_in_window(times: list[float], window: float) -> int:
    """Most requests in any closed `window`: a strict server counts both ends."""
    return max(sum(1 for u in times if t <= u <= t + window) for t in times)


def test_limiter_never_allows_more_than_5_in_any_60_seconds_seen_by_the_server():
    fake_time = FakeTime()
    limiter = sp.RateLimiter(5, 60.0, time_fn=fake_time.time, sleep_fn=fake_time.sleep)
    arrivals = []

    for i in range(23):
        if i % 4 == 0:
            fake_time.now += 7.3  # irregular gaps between bursts
        with limiter.slot():
            fake_time.now += 0.4  # on the way to the server
            arrivals.append(fake_time.now)
            fake_time.now += 0.4  # the response on its way back

    assert _max_in_window(arrivals, 60.0) == 5  # a strict (closed) server window
    assert arrivals[-1] - arrivals[0] >= 4 * 60.0  # 23 requests need at least 4 full windows


def test_limiter_without_a_limit_never_waits():
    fake_time = FakeTime()
    limiter = sp.RateLimiter(None, 60.0, time_fn=fake_time.time, sleep_fn=fake_time.sleep)

    for _ in range(50):
        with limiter.slot():
            pass

    assert fake_time.sleeps == []


def _timed_server(massive: FakeMassive, fake_time: FakeTime) -> list[float]:
    """Arrival times at the server, with 0.4 s of latency each way on the injected clock."""
    arrivals: list[float] = []

    def on_request(route: str) -> None:
        fake_time.now += 0.4
        arrivals.append(fake_time.now)
        fake_time.now += 0.4

    massive.on_request = on_request
    return arrivals


def test_free_plan_scan_never_exceeds_5_requests_in_any_60_s_at_the_server(massive, clock):
    fake_time = FakeTime()
    arrivals = _timed_server(massive, fake_time)
    massive.script["snapshot"] = [(403, _fixture("error_403.json"))]
    massive.script["grouped"] = [(429, _fixture("error_429.json"))]  # retries count too
    scanner = make_scanner(massive, clock, fake_time, avg_volume_days=5)

    assert scanner.scan() is not None

    # probe, 2 reference pages, splits, 6 grouped days (one refused, then retried)
    assert massive.routes().count("grouped") == 7 and len(arrivals) == 11
    assert _max_in_window(arrivals, 60.0) <= 5
    assert scanner.limiter.max_requests == 5


def test_paid_plan_is_not_slowed_by_the_free_limit(massive, clock):
    fake_time = FakeTime()
    arrivals = _timed_server(massive, fake_time)
    scanner = make_scanner(massive, clock, fake_time, avg_volume_days=5)

    assert scanner.scan() is not None

    assert len(arrivals) == 1 + 2 + 1 + 5  # snapshot, reference pages, splits, 5 grouped days
    assert fake_time.sleeps == []  # 9 requests, no wait: paid plans have no limit
    assert scanner.limiter.max_requests is None


def test_requests_per_minute_setting_overrides_the_plan(massive, clock):
    fake_time = FakeTime()
    arrivals = _timed_server(massive, fake_time)
    scanner = make_scanner(massive, clock, fake_time, requests_per_minute=3, avg_volume_days=5)

    assert scanner.scan() is not None

    assert scanner.limiter.max_requests == 3
    assert _max_in_window(arrivals, 60.0) <= 3


# ------------------------------------------------------------------ plans


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == event]


def test_free_plan_403_is_detected_once_and_gives_a_previous_day_list(massive, clock, caplog):
    caplog.set_level(logging.INFO, logger="scanner")
    massive.script["snapshot"] = [(403, _fixture("error_403.json"))]
    # The previous session (11-23) is asked first; the days before it answer the default.
    massive.script["grouped"] = [(200, _fixture("grouped_daily_previous_session.json"))]
    scanner = make_scanner(massive, clock)

    first = scanner.scan()
    requests_after_first = len(massive.requests)
    second = scanner.scan()

    assert first is not None and second is not None
    assert first.basis == "previous_day" and first.symbols == ["MOMO"]
    assert "previous day 2026-11-23" in first.picks[0].reason
    # MOMO on 11-23: +10% (11.0 against 10.0), near the high, 3x its 2-day average volume
    assert first.picks[0].momentum == pytest.approx(
        (0.5 * 1.0 + 0.3 * (1.1 / 1.15)) / 0.8, abs=1e-4
    )
    assert first.picks[0].volume_ratio == pytest.approx(3.0)
    (plan,) = _events(caplog, "massive_plan")  # once, though two scans ran
    assert plan.plan == "free" and "NOT_AUTHORIZED" in plan.evidence
    assert massive.routes().count("snapshot") == 1  # never asked again
    assert len(massive.requests) == requests_after_first  # the second scan needed nothing new
    assert scanner_problems(caplog) == []  # a plan is not a failure
    grouped = [path.rsplit("/", 1)[-1] for r, path, _, _ in massive.requests if r == "grouped"]
    assert grouped == ["2026-11-23", "2026-11-20", "2026-11-19"]


def test_delayed_plan_says_the_data_is_15_minutes_old_and_leaves_the_minute_bar_out(
    massive, clock, caplog
):
    caplog.set_level(logging.INFO, logger="scanner")
    massive.defaults["snapshot"] = _fixture("snapshot_delayed.json")
    scanner = make_scanner(massive, clock)

    watchlist = scanner.scan()

    assert watchlist is not None and watchlist.basis == "delayed_15m"
    assert watchlist.symbols == ["MOMO", "FALLB", "RUNR"]  # 15 minutes old is not stale here
    momo = watchlist.picks[0]
    assert momo.reason.startswith("data 15 min delayed; ")
    assert "1m" not in momo.reason
    assert momo.momentum == pytest.approx((0.5 * 1.0 + 0.3 * (1.1 / 1.15)) / 0.8, abs=1e-4)
    (plan,) = _events(caplog, "massive_plan")
    assert plan.plan == "delayed" and plan.requests_per_minute == "unlimited"


def test_delayed_plan_is_recognised_from_the_age_of_its_data(massive, clock, caplog):
    caplog.set_level(logging.INFO, logger="scanner")
    delayed = json.loads(_fixture("snapshot_delayed.json"))
    delayed["status"] = "OK"  # no word in the status: the data's age tells
    massive.defaults["snapshot"] = json.dumps(delayed).encode()

    watchlist = make_scanner(massive, clock).scan()

    assert watchlist is not None and watchlist.basis == "delayed_15m"
    (plan,) = _events(caplog, "massive_plan")
    assert plan.plan == "delayed" and "15.0 min old" in plan.evidence


def test_realtime_plan_scores_on_the_live_snapshot(massive, clock, caplog):
    caplog.set_level(logging.INFO, logger="scanner")

    watchlist = make_scanner(massive, clock).scan()

    assert watchlist is not None and watchlist.basis == "realtime"
    assert "1m +0.92%" in watchlist.picks[0].reason
    (plan,) = _events(caplog, "massive_plan")
    assert plan.plan == "realtime" and plan.requests_per_minute == "unlimited"


# ------------------------------------------------------------------ picks worth trading


def test_stale_tickers_are_dropped_and_counted(massive, clock, caplog):
    caplog.set_level(logging.INFO, logger="scanner")
    snapshot = json.loads(_fixture("snapshot_all.json"))
    runr = next(t for t in snapshot["tickers"] if t["ticker"] == "RUNR")
    runr["updated"] -= 20 * 60 * 10**9  # its last update 20 minutes ago
    runr["min"]["t"] -= 20 * 60 * 1000
    massive.defaults["snapshot"] = json.dumps(snapshot).encode()

    watchlist = make_scanner(massive, clock, max_data_age_s=300.0).scan()

    assert watchlist is not None and watchlist.symbols == ["MOMO", "FALLB"]
    (done,) = _events(caplog, "scan_done")
    assert done.stale_dropped == 1


def test_a_reverse_split_never_tops_the_list(massive, clock, caplog):
    caplog.set_level(logging.INFO, logger="scanner")
    # REVS 1-for-20 today: prevDay (unadjusted) closed at 0.50 on 6M shares; today 10.40 on
    # 900k. Against the split-adjusted 10.00 it is up 4%, not 1,980%.
    massive.defaults["snapshot"] = _fixture("snapshot_reverse_split.json")
    massive.defaults["splits"] = _fixture("splits_reverse.json")

    watchlist = make_scanner(massive, clock, common_stocks_only=False).scan()

    assert watchlist is not None and watchlist.symbols == ["MOMO"]
    (done,) = _events(caplog, "scan_done")
    assert done.split_adjusted == ["REVS"]


def test_split_factors_scale_prices_up_and_volumes_down_for_a_reverse_split():
    splits = [
        sp.Split("REVS", datetime(2026, 11, 24).date(), split_from=20, split_to=1),
        sp.Split("FWD", datetime(2026, 11, 20).date(), split_from=1, split_to=2),
    ]
    factors = sp.split_factors(splits, after=datetime(2026, 11, 23).date())
    bars = sp.adjust_bars({"REVS": sp.DailyBar(0.5, 0.6, 0.4, 0.5, 6e6)}, factors)

    assert factors == {"REVS": 20.0}  # FWD was executed before: the data already shows it
    assert bars["REVS"] == sp.DailyBar(10.0, 12.0, 8.0, 10.0, 3e5)


def test_pre_market_gapper_is_scored_on_pre_market_volume(massive, caplog):
    caplog.set_level(logging.INFO, logger="scanner")
    pre_market = datetime(2026, 11, 24, 8, 30, tzinfo=NEW_YORK)
    clock = MarketClock(SimulatedTimeSource.starting_at(pre_market, speed=1.0))
    massive.defaults["snapshot"] = _fixture("snapshot_premarket.json")

    watchlist = make_scanner(massive, clock, common_stocks_only=False).scan()

    # GAPR: +15% on 300k pre-market shares (the day bar is all zeros, min.av holds them),
    # 0.3x an average day (no grouped rows: the previous day's 1M) > 0.1x pre-market.
    assert watchlist is not None and watchlist.symbols == ["GAPR"]
    assert watchlist.basis == "realtime_premarket"
    gapr = watchlist.picks[0]
    assert gapr.reason.startswith("pre-market; ")
    assert gapr.volume_ratio == pytest.approx(0.3)
    assert "range pos" not in gapr.reason  # no session range before the open
    assert gapr.momentum == pytest.approx(1.0)


def test_scan_done_logs_the_average_volume_basis_the_picks_used(massive, clock, caplog):
    caplog.set_level(logging.INFO, logger="scanner")
    scanner = make_scanner(massive, clock)
    scanner.scan()  # MOMO and RUNR on the 2-day average, FALLB on the previous day's volume
    gainers = make_scanner(massive, clock, universe="gainers", avg_volume_days=0)
    gainers.scan()

    mixed, prev_day = _events(caplog, "scan_done")
    assert mixed.avg_volume_basis == "mixed" and mixed.picks_on_prev_day_volume == 1
    assert prev_day.avg_volume_basis == "prev_day"


# ------------------------------------------------------------------ watchlist file


def _watchlist(symbols: list[str], clock: MarketClock) -> sp.Watchlist:
    picks = tuple(sp.Pick(s, 0.8, 2.5, 10.0, 5.0, f"test {s}") for s in symbols)
    return sp.Watchlist(timestamp=clock.now(), source="massive", picks=picks)


def test_write_then_read_round_trips(tmp_path, clock):
    path = tmp_path / "day_trading_watchlist.json"
    original = _watchlist(["AAPL", "MSFT"], clock)

    sp.write_watchlist(path, original)

    assert sp.read_watchlist(path) == original
    payload = json.loads(path.read_text())
    assert payload["source"] == "massive"
    assert datetime.fromisoformat(payload["timestamp"]).utcoffset() is not None  # exchange time
    assert set(payload["picks"][0]) == {
        "symbol",
        "momentum",
        "volume_ratio",
        "price",
        "change_pct",
        "reason",
    }


def test_watchlist_file_says_what_its_picks_were_scored_on(tmp_path, clock):
    path = tmp_path / "day_trading_watchlist.json"
    sp.write_watchlist(path, replace(_watchlist(["MOMO"], clock), basis="previous_day"))

    assert json.loads(path.read_text())["basis"] == "previous_day"
    assert sp.read_watchlist(path).basis == "previous_day"
    older = json.loads(path.read_text())
    del older["basis"]  # a file written before the field existed
    path.write_text(json.dumps(older))
    assert sp.read_watchlist(path).basis == "unknown"


def test_concurrent_writes_never_show_a_reader_partial_json(tmp_path, clock):
    path = tmp_path / "day_trading_watchlist.json"
    sp.write_watchlist(path, _watchlist(["SEED"], clock))
    big = [f"S{i:04d}" for i in range(400)]  # ~40 kB: a non-atomic write would be seen torn
    stop = threading.Event()
    errors: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                sp.parse_watchlist(json.loads(path.read_text()))
                reads += 1
            except ValueError as exc:
                errors.append(str(exc))

    def writer(n: int) -> None:
        for k in range(15):
            sp.write_watchlist(path, _watchlist(big[: 50 + (n * 40 + k) % 350], clock))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()

    assert errors == []
    assert reads > 0
    assert sp.read_watchlist(path).picks  # valid at the end
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_malformed_file_keeps_previous_list_and_logs_once(tmp_path, clock, caplog):
    path = tmp_path / "day_trading_watchlist.json"
    store = sp.WatchlistStore(path)
    sp.write_watchlist(path, _watchlist(["AAPL", "NVDA"], clock))
    assert store.load().symbols == ["AAPL", "NVDA"]

    path.write_text('{"timestamp": "2026-11-24T11:00:00-05:00", "picks": [')  # torn by hand
    first = store.load()
    second = store.load()

    assert first is not None and first.symbols == ["AAPL", "NVDA"]
    assert first.source == "cache"
    assert second == first
    (problem,) = scanner_problems(caplog)
    assert str(path) in problem.error and "scanner_polygon.py --once" in problem.error

    sp.write_watchlist(path, _watchlist(["TSLA"], clock))
    assert store.load().symbols == ["TSLA"]


def test_file_symbols_that_are_not_tickers_are_dropped_with_one_warning_naming_them(
    tmp_path, caplog
):
    path = tmp_path / "day_trading_watchlist.json"
    forged = "MSFT\n12:00:00 CRITICAL exit_manager naked_position"
    bad = ["../etc", "AAPL; DROP", "ÄPFEL", forged, "TOOLONGTICKER1"]
    payload = {
        "version": 1,
        "timestamp": "2026-11-24T11:00:00-05:00",
        "source": "massive",
        "picks": [{"symbol": s} for s in ["AAPL", *bad, "brk.b"]],
    }
    path.write_text(json.dumps(payload))
    store = sp.WatchlistStore(path)

    first = store.load()
    again = store.load()

    assert first is not None and first.symbols == ["AAPL", "BRK.B"]
    assert again is not None and again.symbols == ["AAPL", "BRK.B"]
    (warning,) = [
        r for r in caplog.records if getattr(r, "event", "") == "watchlist_symbols_dropped"
    ]
    assert warning.symbols == bad


def test_wrong_field_types_are_malformed(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "timestamp": "2026-11-24T11:00:00-05:00",
                "source": "massive",
                "picks": [{"symbol": "AAPL", "momentum": "high"}],
            }
        )
    )

    with pytest.raises(sp.WatchlistError, match="momentum"):
        sp.read_watchlist(path)


def test_missing_file_gives_none_with_one_line_naming_file(tmp_path, caplog):
    path = tmp_path / "nowhere" / "day_trading_watchlist.json"

    assert sp.load_watchlist(path) is None
    assert sp.load_watchlist(path) is None

    (problem,) = scanner_problems(caplog)
    assert "does not exist" in problem.error and str(path.name) in problem.error


def test_fallback_watchlist_from_gateway_symbols(tmp_path, clock):
    fallback = sp.fallback_watchlist(["aapl", "MSFT", "AAPL", " "], now=clock.now())

    assert fallback.source == "gateway"
    assert fallback.symbols == ["AAPL", "MSFT"]
    assert fallback.picks[0].momentum is None  # unknown, not zero
    path = tmp_path / "w.json"
    sp.write_watchlist(path, fallback)
    assert sp.read_watchlist(path) == fallback


# ------------------------------------------------------------------ loop and CLI


def test_run_forever_refreshes_on_the_accelerated_clock(massive, tmp_path):
    fast = MarketClock(SimulatedTimeSource.starting_at(SIM_START, speed=9000.0))  # 15 min = 0.1 s
    # The fixture's data stays at 11:00 while this clock runs on: no staleness check here.
    scanner = make_scanner(
        massive, fast, common_stocks_only=False, avg_volume_days=0, max_data_age_s=86_400.0
    )
    path = tmp_path / "day_trading_watchlist.json"

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(sp.run_forever(scanner, path, clock=fast, stop=stop))
        while massive.routes().count("snapshot") < 3:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, timeout=2)

    asyncio.run(asyncio.wait_for(run(), timeout=10))

    written = sp.read_watchlist(path)
    assert written.symbols[0] == "MOMO" and written.source == "massive"
    assert written.timestamp > SIM_START  # stamped with the simulated exchange time


def test_loop_sleeps_until_the_pre_market_when_closed():
    night = datetime(2026, 11, 24, 3, 0, tzinfo=NEW_YORK)
    closed = MarketClock(SimulatedTimeSource.starting_at(night, speed=1.0))

    pause = sp._seconds_to_next_scan(closed, 900.0, market_hours_only=True)

    assert pause == pytest.approx(900.0)  # never longer than the interval
    # The first scan at 04:00, when the snapshot fills again: the list is ready before the open.
    assert sp._seconds_to_next_scan(closed, 3 * 3600.0, True) == pytest.approx(3600, abs=2)
    pre_market = MarketClock(
        SimulatedTimeSource.starting_at(datetime(2026, 11, 24, 8, 0, tzinfo=NEW_YORK))
    )
    assert sp.in_scan_hours(pre_market) and not sp.in_scan_hours(closed)


@pytest.fixture
def cli_env(tmp_path, clock, monkeypatch):
    from core import clock as clock_module
    from core import settings as settings_module

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    settings = settings_module.load_settings(
        environ={},
        dotenv_path=tmp_path / "absent.env",
        massive_api_key=settings_module.Secret("test-key"),
        log_dir=tmp_path / "logs",
        watchlist_path=tmp_path / "day_trading_watchlist.json",
    )
    settings_module.set_settings(settings)
    clock_module.set_clock(clock)
    yield settings
    settings_module.set_settings(None)
    clock_module.set_clock(None)
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_cli_once_prints_picks_and_writes_file(massive, cli_env, capsys):
    rc = sp.main(["--once", "--base-url", massive.url, "--avg-days", "0", "--no-common-filter"])

    out = capsys.readouterr().out
    assert rc == 0
    assert "4 picks" in out and "  1 MOMO " in out  # WARW is in: no common-stock filter
    assert sp.read_watchlist(cli_env.watchlist_path).symbols[0] == "MOMO"


def test_cli_bad_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sp.main(["--frobnicate"])

    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.count("\n") == 0 and "--frobnicate" in err and "--help" in err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sp.main(["--help"])

    assert exit_info.value.code == 0
    assert "--once" in capsys.readouterr().out


def test_key_echoed_in_a_server_error_never_reaches_the_log_file_or_console(
    massive, clock, tmp_path, capsys, restore_root_logging
):
    from core import settings as settings_module
    from core.logs import setup_logging

    key = "mk-echo-5d81e2"
    settings_module.set_settings(
        settings_module.load_settings(
            environ={"MASSIVE_API_KEY": key}, dotenv_path=tmp_path / "no.env"
        )
    )

    def echo_headers(route: str) -> None:  # the server quotes the request back in its error
        authorization = massive.requests[-1][3]
        body = json.dumps({"status": "ERROR", "error": f"bad: Authorization={authorization}"})
        massive.script[route] = [(400, body.encode())]

    massive.on_request = echo_headers
    run_file = setup_logging("scanner", log_dir=tmp_path / "logs")
    scanner = sp.MassiveScanner(
        key, clock=clock, base_url=massive.url, sleep_fn=lambda s: None, timeout_s=2.0
    )
    assert scanner.scan() is None
    for handler in logging.getLogger().handlers:
        handler.flush()

    assert massive.requests and key in massive.requests[0][3]  # the key did go to the server
    written, console = run_file.read_text(), capsys.readouterr().err
    assert "Authorization=" in written and "Authorization=" in console
    assert key not in written and key not in console
