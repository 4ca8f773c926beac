"""Connection, startup sync, contracts and market data, end to end with the real ib_async."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime, timedelta
from datetime import time as dtime

import pytest
from ib_async import IB

from core.clock import NEW_YORK
from tests.sim_support import (  # noqa: F401
    IBSIM_SYMBOLS,
    SIM_DATE,
    client,
    collect_errors,
    gateway_config,
    ibsim_gateway,
    no_decode_errors_or_leaks,
    us_stock,
    wait_for,
)


def test_connect_syncs_fast_with_no_timeouts() -> None:
    with ibsim_gateway() as gw:
        ib = IB()
        started = time.monotonic()
        ib.connect("127.0.0.1", gw.port, clientId=2, timeout=3, raiseSyncErrors=True)
        elapsed = time.monotonic() - started
        try:
            assert elapsed < 1.0, f"connect took {elapsed:.2f}s"
            assert ib.managedAccounts() == ["DU1234567"]
            assert ib.client.serverVersion() == 176
            assert any(v.tag == "NetLiquidation" for v in ib.accountValues())
        finally:
            ib.disconnect()


def test_duplicate_client_id_gets_326_and_is_disconnected() -> None:
    with ibsim_gateway() as gw, client(gw, 10) as first:
        second = IB()
        errors = collect_errors(second)
        with pytest.raises((TimeoutError, ConnectionError)):
            second.connect("127.0.0.1", gw.port, clientId=10, timeout=1.5)
        assert (-1, 326) in [(r, c) for r, c, _ in errors]
        assert not second.isConnected()
        assert first.isConnected() and first.reqCurrentTime() is not None
        assert gw.account.state()["clients"] == [10]


def test_current_time_is_simulated_time() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        answer = ib.reqCurrentTime()
        expected = datetime.fromtimestamp(gw.now(), NEW_YORK)
        assert answer.date() == SIM_DATE
        assert abs(answer - expected) < timedelta(seconds=120)


def test_qualify_known_symbol_and_unknown_gets_200() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        known, unknown = ib.qualifyContracts(us_stock("AAA"), us_stock("ZZZZ"))
        assert known is not None and known.conId > 0
        assert (known.secType, known.currency, known.exchange) == ("STK", "USD", "SMART")
        assert known.primaryExchange in {"NASDAQ", "NYSE"}
        assert unknown is None
        assert any(code == 200 for _, code, _ in errors)
        (details,) = ib.reqContractDetails(us_stock("BBB"))
        assert details.minTick == 0.01 and details.longName


def test_live_streaming_ticks_follow_the_market() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        ticker = ib.reqMktData(contract)
        wait_for(lambda: ticker.bid > 0 and ticker.ask > 0 and ticker.last > 0, what="quote", ib=ib)
        assert ticker.bid < ticker.ask and ticker.volume > 0 and ticker.close > 0
        updates: list[float] = []
        ib.pendingTickersEvent += lambda tickers: updates.append(time.monotonic())
        wait_for(lambda: len(updates) >= 5, what="streaming updates", ib=ib)
        gw.faults.set_price("AAA", 42.0)
        wait_for(lambda: ticker.last == 42.0, what="pushed price", ib=ib)
        assert ticker.marketDataType == 1


def test_snapshot_ends_with_tick_snapshot_end() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        contract = us_stock("BBB")
        ib.qualifyContracts(contract)
        (ticker,) = ib.reqTickers(contract)
        assert ticker.bid > 0 and ticker.ask > 0


def test_delayed_data_without_subscription_uses_delayed_tick_ids() -> None:
    with ibsim_gateway(market_data_subscribed=False) as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        live = ib.reqMktData(contract)
        wait_for(lambda: any(code == 354 for _, code, _ in errors), what="354", ib=ib)
        assert live.bid != live.bid or live.bid <= 0  # nan/-1: no live data
        ib.cancelMktData(contract)
        ib.reqMarketDataType(3)
        other = us_stock("CCC")
        ib.qualifyContracts(other)
        delayed = ib.reqMktData(other)
        wait_for(lambda: delayed.bid > 0 and delayed.last > 0, what="delayed quote", ib=ib)
        assert any(code == 10167 for _, code, _ in errors)
        assert delayed.marketDataType == 3
        tick_types = {t.tickType for t in delayed.ticks}
        assert tick_types and tick_types <= set(range(66, 77))
        assert delayed.delayedLastTimestamp is not None


def test_delayed_quotes_show_the_market_as_it_was_the_lag_ago() -> None:
    lag = 60.0  # simulated seconds (IB's is 15 minutes, the default)
    with (
        ibsim_gateway(market_data_subscribed=False, delayed_data_lag_s=lag, speed=20.0) as gw,
        client(gw, 2) as ib,
    ):
        market = gw.gateway.market
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        ib.reqMarketDataType(3)
        ticker = ib.reqMktData(contract)
        wait_for(lambda: ticker.last > 0 and ticker.high >= ticker.low > 0, what="quote", ib=ib)
        target = round(ticker.last * 1.5, 2)
        set_at = market.time
        gw.faults.set_price("AAA", target)
        seen_at: list[float] = []

        def new_price_shown() -> bool:
            if abs(ticker.last - target) < target * 0.05:
                seen_at.append(market.time)
            return bool(seen_at)

        wait_for(new_price_shown, timeout=15, what="the new price, a lag later", ib=ib)
        assert seen_at[0] >= set_at + lag - 1, "a delayed feed showed a price before its time"
        assert ticker.marketDataType == 3


def test_historical_bars_and_keep_up_to_date_updates() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        bars = ib.reqHistoricalData(contract, "", "1800 S", "1 min", "TRADES", useRTH=True)
        assert 20 <= len(bars) <= 31
        assert all(b.low <= min(b.open, b.close) and b.high >= max(b.open, b.close) for b in bars)
        assert bars[-1].date <= datetime.fromtimestamp(gw.now(), NEW_YORK)
        live = ib.reqHistoricalData(
            contract, "", "600 S", "1 min", "TRADES", True, keepUpToDate=True
        )
        first_count = len(live)
        updates: list[bool] = []
        live.updateEvent += lambda bars, has_new_bar: updates.append(has_new_bar)
        wait_for(lambda: any(updates), timeout=5, what="a new bar via historicalDataUpdate", ib=ib)
        assert len(live) > first_count
        ib.cancelHistoricalData(live)
        daily = ib.reqHistoricalData(contract, "", "1 D", "1 day", "TRADES", useRTH=True)
        assert len(daily) == 1 and daily[0].date == SIM_DATE


def test_real_time_bars_arrive_every_5_simulated_seconds() -> None:
    with ibsim_gateway() as gw, client(gw, 2) as ib:
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        bars = ib.reqRealTimeBars(contract, 5, "TRADES", False)
        wait_for(lambda: len(bars) >= 4, what="4 real-time bars", ib=ib)
        times = [b.time.timestamp() for b in bars]
        assert all(b - a == 5 for a, b in itertools.pairwise(times))
        assert all(t % 5 == 0 for t in times)
        ib.cancelRealTimeBars(bars)


def test_unsubscribed_history_162_and_real_time_bars_420() -> None:
    with ibsim_gateway(market_data_subscribed=False) as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        bars = ib.reqHistoricalData(contract, "", "1800 S", "1 min", "TRADES", True, timeout=5)
        assert len(bars) == 0
        ib.reqRealTimeBars(contract, 5, "TRADES", False)
        wait_for(lambda: {162, 420} <= {code for _, code, _ in errors}, what="162 and 420", ib=ib)


def test_pacing_flag_rejects_identical_small_bar_request() -> None:
    with ibsim_gateway(pacing=True) as gw, client(gw, 2) as ib:
        errors = collect_errors(ib)
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        first = ib.reqHistoricalData(contract, "", "600 S", "5 secs", "TRADES", True, timeout=5)
        again = ib.reqHistoricalData(contract, "", "600 S", "5 secs", "TRADES", True, timeout=5)
        assert len(first) > 0 and len(again) == 0
        assert any(code == 162 and "pacing" in text for _, code, text in errors)
        other = ib.reqHistoricalData(contract, "", "600 S", "1 min", "TRADES", True, timeout=5)
        assert len(other) > 0  # large bars are not paced


def test_in_process_async_gateway_with_async_client() -> None:
    from ibsim.server import SimulatedGateway

    async def scenario() -> tuple[int, float]:
        gw = SimulatedGateway(gateway_config(symbols=IBSIM_SYMBOLS, speed=60.0))
        await gw.start()
        try:
            ib = IB()
            await ib.connectAsync("127.0.0.1", gw.port, clientId=5, timeout=5)
            when = await ib.reqCurrentTimeAsync()
            details = await ib.reqContractDetailsAsync(us_stock("AAA"))
            ib.disconnect()
            return len(details), when.timestamp()
        finally:
            await gw.stop()

    count, when = asyncio.run(scenario())
    assert count == 1 and datetime.fromtimestamp(when, NEW_YORK).date() == SIM_DATE


def test_after_20_00_prices_freeze_and_the_gateway_keeps_serving() -> None:
    with ibsim_gateway(start=dtime(19, 59, 55), speed=30) as gw, client(gw, 2) as ib:
        contract = us_stock("AAA")
        ib.qualifyContracts(contract)
        ticker = ib.reqMktData(contract)
        wait_for(lambda: ticker.last > 0, ib=ib)
        wait_for(lambda: gw.now() > gw.gateway.hours.post_close + 1, what="20:00 passed", ib=ib)
        frozen = gw.quote("AAA")
        ib.sleep(0.3)
        assert gw.quote("AAA") == frozen
        assert ib.reqCurrentTime().timestamp() > gw.gateway.hours.post_close
