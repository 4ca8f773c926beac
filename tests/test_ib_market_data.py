"""The entry side's IB market data adapter: quotes into records, 5-s bars into 30-s bars,
history updates, and IB's history pacing."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import pytest
from ib_async import IB, BarData, Contract, RealTimeBar, Ticker

from ib.market_data import (
    HistoricalPacer,
    MarketDataLine,
    bar_from_ib,
    entry_quote,
    history_request,
    new_history_bars,
    qualified_stocks,
)
from tests.sim_support import gateway
from trading.indicators import Bar

T0 = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)  # 10:00 New York: a 30-s boundary


def five_second_bar(i: int, close: float, volume: float = 100.0) -> RealTimeBar:
    when = datetime.fromtimestamp(T0.timestamp() + 5 * i, UTC)
    return RealTimeBar(
        time=when, open_=close, high=close + 0.1, low=close - 0.1, close=close, volume=volume
    )


def test_a_ticker_with_unset_or_no_prices_becomes_a_quote_of_nans_stamped_on_arrival() -> None:
    ticker = Ticker(contract=Contract(symbol="ABC"))
    ticker.last, ticker.bid, ticker.ask = 12.5, -1.0, float("nan")  # IB's -1: no bid
    ticker.close = 1.7976931348623157e308  # IB's UNSET_DOUBLE
    ticker.marketDataType = None  # type: ignore[assignment]
    quote = entry_quote("ABC", ticker, received_at=1234.0)
    assert (quote.symbol, quote.last, quote.time, quote.data_type) == ("ABC", 12.5, 1234.0, 0)
    assert math.isnan(quote.bid) and math.isnan(quote.ask) and math.isnan(quote.prev_close)


def test_real_time_and_history_bars_become_the_same_bar_record() -> None:
    stream = bar_from_ib(RealTimeBar(time=T0, open_=1, high=2, low=0.5, close=1.5, volume=10))
    history = bar_from_ib(BarData(date=T0, open=1, high=2, low=0.5, close=1.5, volume=10))
    assert stream == history == Bar(T0.timestamp(), 1.0, 2.0, 0.5, 1.5, 10.0)


def test_six_five_second_bars_make_one_30_second_bar_and_the_list_is_kept_short() -> None:
    line = MarketDataLine("ABC", Contract(symbol="ABC"))
    bars: list[RealTimeBar] = []
    completed: list[Bar] = []
    for i in range(6 * 40):
        bars.append(five_second_bar(i, 10.0 + (i % 6) * 0.01))
        completed += line.realtime_bars(bars)
    assert len(completed) == 40 and len(bars) <= 201  # ib_async would keep every 5-s bar
    first = completed[0]
    assert (first.time, first.open, first.close, first.volume) == (
        T0.timestamp(),
        10.0,
        10.05,
        600.0,
    )


def test_a_window_whose_last_five_second_bar_never_came_closes_on_the_clock() -> None:
    line = MarketDataLine("ABC", Contract(symbol="ABC"), bar_source="realtime")
    assert line.realtime_bars([five_second_bar(0, 10.0)]) == []
    assert line.flush_due(T0.timestamp() + 30) is None  # the 25-s bar may still come
    flushed = line.flush_due(T0.timestamp() + 35)
    assert flushed is not None and flushed.time == T0.timestamp()


def test_history_updates_give_only_completed_bars_newer_than_the_last_one_seen() -> None:
    bars = [
        BarData(
            date=datetime.fromtimestamp(T0.timestamp() + 30 * i, UTC),
            open=1,
            high=1,
            low=1,
            close=1,
            volume=1,
        )
        for i in range(5)
    ]
    fresh = new_history_bars(bars, after=T0.timestamp() + 30)
    assert [b.time - T0.timestamp() for b in fresh] == [60.0, 90.0]  # the last is in progress


def test_history_request_covers_today_from_4_am_capped_at_8_hours() -> None:
    assert history_request(datetime(2026, 11, 25, 4, 0, 30)) == ("60 S", "")
    assert history_request(datetime(2026, 11, 25, 9, 30)) == (f"{int(5.5 * 3600)} S", "")
    assert history_request(datetime(2026, 11, 25, 15, 0)) == ("28800 S", "")


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pacer_keeps_ib_history_limits() -> None:
    clock = FakeMonotonic()
    pacer = HistoricalPacer(monotonic=clock)
    key = ("ABC", "TRADES", "", "600 S", "30 secs", False)
    pacer.record(key, "ABC")
    assert pacer.wait_seconds(key, "ABC") == pytest.approx(15.0)  # identical within 15 s
    for i in range(4):
        pacer.record(("ABC", i), "ABC")
    # Five for one contract within 2 s: the sixth waits; another contract does not.
    assert pacer.wait_seconds(("ABC", "x"), "ABC") == pytest.approx(2.0)
    assert pacer.wait_seconds(("XYZ", "x"), "XYZ") == 0.0
    clock.now += 3
    for i in range(55):
        pacer.record((f"S{i}",), f"S{i}")
    assert pacer.wait_seconds(("NEW",), "NEW") == pytest.approx(597.0)  # 60 in 10 minutes


def test_pacer_backs_off_on_162_and_recovers() -> None:
    clock = FakeMonotonic()
    pacer = HistoricalPacer(monotonic=clock)
    assert pacer.on_pacing_violation() == 15.0
    assert pacer.wait_seconds(("A",), "A") == pytest.approx(15.0)
    assert pacer.on_pacing_violation() == 30.0
    clock.now += 30
    pacer.on_success()
    assert pacer.wait_seconds(("A",), "A") == 0.0
    assert pacer.on_pacing_violation() == 15.0


def test_qualified_stocks_gives_the_gateways_contract_or_none_for_an_unknown_symbol() -> None:
    """The watchlist drops a symbol the gateway does not know; a known one keeps its conId."""

    async def scenario(port: int) -> list[tuple[str, Contract | None]]:
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=31, timeout=5)
        try:
            return await qualified_stocks(ib, ["AAPL", "ZZZZQ"], timeout=10.0)
        finally:
            ib.disconnect()

    with gateway(symbols=("AAPL",)) as gw:
        answer = asyncio.run(scenario(gw.port))
    [(known, contract), (unknown, missing)] = answer
    assert (known, unknown, missing) == ("AAPL", "ZZZZQ", None)
    assert contract is not None and contract.conId and contract.symbol == "AAPL"
