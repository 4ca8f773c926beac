"""Recorded bars from Massive for the backtest: minute aggregates per symbol and day, cached.

`fetch_bars(symbols, dates, cache_dir, settings)` downloads the 1-minute aggregates (04:00 to
20:00 New York, split-adjusted) of each symbol on each trading day with the `massive` client
and the scanner's key (MASSIVE_API_KEY), and writes them in the replay format, one Parquet
file per symbol per day (store/bars.py's layout: `<cache>/<YYYY-MM-DD>/<SYMBOL>.parquet`).
A cached day is never fetched again, so a run that stopped half way goes on where it stopped.

Requests: one per symbol per span of up to `SPAN_DAYS` calendar days (the previous session
included: its last regular-hours minute close is the day's `prev_close`), every attempt through
the scanner's rate limiter: 5 a minute (the free plan's) unless MASSIVE_REQUESTS_PER_MINUTE
says otherwise (0: no limit, for paid plans). A day is written only once it is over (after
20:00 New York), so a half-downloaded day is never cached.

Errors: FetchError, one line naming the problem and the fix, for no key, a refused key (401),
a plan without the data (403), rate limiting that outlasts its retries (429), a failing service
and no network; whatever was fetched before stays cached. A symbol with no bars on a day, and a
date that is no trading day or is not over yet, are reported (`on_missing`, one line each) and
skipped: the other symbols and days still come.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from massive.rest import BASE as MASSIVE_BASE_URL

from core.clock import NEW_YORK, MarketClock, Session, get_clock
from core.logs import get_logger
from core.settings import Settings, get_settings
from core.tickers import is_ticker
from scanner_polygon import MarketDataError, MassiveScanner
from store.bars import bar_file, bars_frame, trading_date, write_bars_file
from trading.indicators import Bar

log = get_logger("fetch")

SPAN_DAYS = 30  # ~21 sessions x ~960 minute bars: one request under the 50,000-row page
EXTENDED_OPEN = time(4, 0)  # the replay grid: 04:00 to 20:00 New York
EXTENDED_CLOSE = time(20, 0)

_FIXES = {
    "unauthorized": "Massive does not know this key: set MASSIVE_API_KEY in .env to the key shown "
    "in the Massive dashboard",
    "not_entitled": "the Massive plan does not include these bars (the free plan has about two "
    "years of minute history): choose later dates or a plan that has them",
    "rate_limited": "Massive is rate-limiting this key (the scanner running on it too?): wait a "
    "minute and run again, the days fetched so far are cached",
    "http": "Massive is failing or overloaded: run again later, the days fetched so far are cached",
    "rejected": "Massive refused the request: check the symbol, the dates and MASSIVE_API_KEY",
    "network": "check the network or proxy: run again once it is back, the days fetched so far "
    "are cached",
    "bad_data": "Massive answered in an unexpected shape: run again; if it persists, report it",
}


class FetchError(RuntimeError):
    """Bars could not be downloaded; the message (one line) names the problem and the fix."""


def _extended_hours(session: Session) -> tuple[float, float]:
    day = session.trading_date
    start = datetime.combine(day, EXTENDED_OPEN, NEW_YORK).timestamp()
    return start, datetime.combine(day, EXTENDED_CLOSE, NEW_YORK).timestamp()


def _spans(days: Sequence[date]) -> list[list[date]]:
    """Sorted days grouped so each group spans at most SPAN_DAYS calendar days."""
    groups: list[list[date]] = []
    for day in days:
        if groups and (day - groups[-1][0]).days < SPAN_DAYS:
            groups[-1].append(day)
        else:
            groups.append([day])
    return groups


def _bars_by_day(rows: Iterable[dict[str, Any]]) -> dict[date, list[Bar]]:
    by_day: dict[date, list[Bar]] = {}
    for row in rows:
        try:
            bar = Bar(float(row["t"]) / 1000.0, *(float(row[k]) for k in ("o", "h", "l", "c", "v")))
        except (KeyError, TypeError, ValueError):
            continue  # a row without a price is no bar
        by_day.setdefault(trading_date(bar.time), []).append(bar)
    return by_day


def _last_regular_close(bars: Sequence[Bar], session: Session) -> float | None:
    """The close of the session's last regular-hours minute: the previous close of the next
    day (it can differ from the official closing auction by a few cents)."""
    opened, closed = session.open.timestamp(), session.close.timestamp()
    regular = [b for b in bars if opened <= b.time < closed]
    return regular[-1].close if regular else None


def fetch_bars(
    symbols: Iterable[str],
    dates: Iterable[date],
    cache_dir: str | Path,
    settings: Settings | None = None,
    *,
    base_url: str = MASSIVE_BASE_URL,
    clock: MarketClock | None = None,
    client: MassiveScanner | None = None,
    on_missing: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download (or find cached) minute bars of `symbols` on `dates` into `cache_dir`.

    Returns the replay files of every symbol-day that has bars, sorted by day then symbol.
    `client`: a MassiveScanner to use (default: one from the settings' key and request
    limit, pointed at `base_url`); `clock`: the exchange clock (default the client's). `on_missing` gets one line per symbol-day skipped (default:
    logged as `fetch_skipped`). Raises FetchError (one line) as the module docstring says.
    """
    clock = clock or (client.clock if client is not None else get_clock())
    report = on_missing or (lambda line: log.warning("fetch_skipped", reason=line))
    wanted = sorted({s.strip().upper() for s in symbols if s.strip()})
    bad = [s for s in wanted if not is_ticker(s)]
    if bad or not wanted:
        raise FetchError(
            f"fetch: {', '.join(bad) or 'no symbol'} is not a ticker; "
            "pass symbols such as AAPL,MSFT"
        )
    sessions: dict[date, Session] = {}
    for day in sorted(set(dates)):
        session = clock.session(day)
        if session is None:
            report(f"{day} is not a trading day (the exchange is closed): skipped")
        elif _extended_hours(session)[1] > clock.epoch():
            report(f"{day} is not over yet: its bars are complete after 20:00 New York")
        else:
            sessions[day] = session
    root = Path(cache_dir)
    found: list[Path] = []
    missing: dict[str, list[date]] = {}
    for symbol in wanted:
        for day in sessions:
            path = bar_file(root, day, symbol)
            if path.exists():
                found.append(path)
            else:
                missing.setdefault(symbol, []).append(day)
    if missing:
        massive = client or _client(settings, base_url, clock, missing)
        requests = sum(len(_spans(days)) for days in missing.values())
        limit = massive.limiter.max_requests
        log.info(
            "fetch_started",
            symbol_days=sum(len(d) for d in missing.values()),
            cached=len(found),
            requests=requests,
            requests_per_minute=limit if limit is not None else "unlimited",
        )
        for symbol, days in missing.items():
            for span in _spans(days):
                found.extend(_fetch_span(massive, clock, root, symbol, span, sessions, report))
    return sorted(found, key=lambda p: (p.parent.name, p.stem))


def _client(
    settings: Settings | None, base_url: str, clock: MarketClock, missing: dict[str, list[date]]
) -> MassiveScanner:
    settings = settings or get_settings()
    if settings.massive_api_key is None:
        count = sum(len(d) for d in missing.values())
        raise FetchError(
            f"fetch: no Massive key for the {count} symbol-day(s) not cached yet: set "
            "MASSIVE_API_KEY in .env (the scanner's key; a free key has minute bars)"
        )
    return MassiveScanner.from_settings(settings, base_url=base_url, clock=clock)


def _fetch_span(
    massive: MassiveScanner,
    clock: MarketClock,
    root: Path,
    symbol: str,
    days: list[date],
    sessions: dict[date, Session],
    report: Callable[[str], None],
) -> list[Path]:
    """One request for `days` (one span) of `symbol`, the session before the first included;
    writes each day that has regular-hours bars."""
    before = clock.previous_session(days[0])
    start = _extended_hours(before)[0]
    end = _extended_hours(sessions[days[-1]])[1]
    try:
        rows = massive.fetch_aggregates(symbol, "minute", start, end - 60.0)
    except MarketDataError as exc:
        raise FetchError(
            f"fetch {symbol} {days[0]}..{days[-1]}: {exc.kind}: {exc.detail}; {_FIXES[exc.kind]}"
        ) from exc
    by_day = _bars_by_day(rows)
    written = []
    for day in days:
        session = sessions[day]
        bars = by_day.get(day, [])
        if _last_regular_close(bars, session) is None:
            report(
                f"no Massive minute bars for {symbol} in regular hours on {day} (unknown "
                "symbol, not yet listed, or halted all day): skipped"
            )
            continue
        previous = clock.previous_session(day)
        prev_close = _last_regular_close(by_day.get(previous.trading_date, []), previous)
        path = bar_file(root, day, symbol)
        write_bars_file(path, bars_frame(symbol, bars, prev_close))
        written.append(path)
    log.info(
        "bars_fetched", symbol=symbol, first=str(days[0]), last=str(days[-1]), days=len(written)
    )
    return written


def dates_between(first: date, last: date) -> list[date]:
    """Every calendar date from `first` to `last` inclusive (fetch_bars skips closed days)."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]
