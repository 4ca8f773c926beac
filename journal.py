"""The trade journal: one row per round trip, the same columns live and in a backtest.

    rows = journal_for_dates(db, ["2026-11-24"], log_dir)
    write_journal(rows, Path("journal.csv"))      # or .parquet

`JournalRow` is the one definition of the columns (their names, order and meaning); a
backtest builds the same rows from its own fills, so a live day and a backtest day line up
in any spreadsheet. The fills and exit reasons come from the database (reports' FIFO round
trips); the entry rule from the entry order's intent; the indicator values at entry and the
LLM's verdict from the day trader's decision log, which is the only place they are kept.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from core.clock import NEW_YORK
from observability import TradingDatabase
from reports import RoundTrip, build_day_report
from view_logs import LogFilter, log_files, read_records, record_time

JOURNAL_FORMATS = (".csv", ".parquet")
# Decision-log events that say what the LLM thought of an entry the rules wanted.
LLM_VERDICT_EVENTS = {
    "entry_approved": "approved",
    "entry_vetoed": "vetoed",
    "llm_unavailable": "unavailable",
}
ENTRY_PURPOSE_PREFIX = "entry:"  # the day trader's entry intents: purpose "entry:<rule>"


class JournalError(ValueError):
    """The journal cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class JournalRow:
    """One round trip. The field order is the column order of every journal file."""

    trading_date: str  # YYYY-MM-DD, New York
    symbol: str
    entry_time: str  # ISO, New York
    entry_price: float  # average of the matched buys
    entry_rule: str | None  # the entry rule that fired (None: not the day trader's entry)
    entry_vwap: float | None  # indicator values the decision was taken on
    entry_rsi: float | None
    entry_atr_pct: float | None
    llm_verdict: str | None  # approved / vetoed / unavailable; None when no LLM was asked
    exit_time: str
    exit_price: float
    exit_reason: str  # PROFIT_TARGET, STOP_LOSS, EOD, MANUAL, ...
    quantity: float
    gross_pnl: float
    commissions: float  # both legs
    net_pnl: float
    hold_seconds: float
    entry_order_ref: str | None
    exit_order_ref: str | None


JOURNAL_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(JournalRow))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def entry_rule_of(purpose: str | None) -> str | None:
    """The rule of a day-trader entry intent ('entry:gap_and_go' -> 'gap_and_go'), else None."""
    if purpose and purpose.startswith(ENTRY_PURPOSE_PREFIX):
        return purpose[len(ENTRY_PURPOSE_PREFIX) :] or None
    return None


def _decision_at_entry(
    trip: RoundTrip, decisions: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The last 'enter' decision for the trip's symbol at or before its entry fill."""
    chosen = None
    for record in decisions:
        when = record_time(record)
        if (
            record.get("event") == "entry_decision"
            and record.get("decision") == "enter"
            and record.get("symbol") == trip.symbol
            and when is not None
            and when <= trip.entry_time
        ):
            chosen = record
    return chosen


def _llm_verdict(
    trip: RoundTrip, decision: Mapping[str, Any] | None, records: Sequence[Mapping[str, Any]]
) -> str | None:
    """What the LLM said between the decision and the entry fill, if it was asked."""
    if decision is None:
        return None
    since = record_time(decision)
    verdict = None
    for record in records:
        when = record_time(record)
        if (
            record.get("event") in LLM_VERDICT_EVENTS
            and record.get("symbol") == trip.symbol
            and when is not None
            and since is not None
            and since <= when <= trip.entry_time
        ):
            verdict = LLM_VERDICT_EVENTS[str(record["event"])]
    return verdict


def journal_rows(
    trading_date: str,
    trips: Iterable[RoundTrip],
    purposes_by_ref: Mapping[str, str | None],
    decision_records: Sequence[Mapping[str, Any]],
) -> list[JournalRow]:
    """Pure: the journal rows of one day from its round trips, its intents' purposes and the
    day trader's decision-log records (entry_decision and the LLM verdict events)."""
    rows = []
    for trip in trips:
        decision = _decision_at_entry(trip, decision_records)
        values = decision or {}
        rows.append(
            JournalRow(
                trading_date=trading_date,
                symbol=trip.symbol,
                entry_time=trip.entry_time.astimezone(NEW_YORK).isoformat(timespec="seconds"),
                entry_price=round(trip.entry_price, 6),
                entry_rule=entry_rule_of(purposes_by_ref.get(trip.entry_order_ref or ""))
                or (str(values["rule"]) if values.get("rule") else None),
                entry_vwap=_number(values.get("vwap")),
                entry_rsi=_number(values.get("rsi")),
                entry_atr_pct=_number(values.get("atr_pct")),
                llm_verdict=_llm_verdict(trip, decision, decision_records),
                exit_time=trip.exit_time.astimezone(NEW_YORK).isoformat(timespec="seconds"),
                exit_price=round(trip.exit_price, 6),
                exit_reason=trip.exit_reason,
                quantity=trip.quantity,
                gross_pnl=round(trip.gross_pnl, 2),
                commissions=round(trip.commission, 2),
                net_pnl=round(trip.pnl, 2),
                hold_seconds=round(trip.hold_seconds, 1),
                entry_order_ref=trip.entry_order_ref,
                exit_order_ref=trip.exit_order_ref,
            )
        )
    return rows


def decision_records(log_dir: Path | None) -> list[dict[str, Any]]:
    """The day trader's entry decisions and LLM verdicts from the JSON logs in `log_dir`."""
    if log_dir is None or not log_dir.is_dir():
        return []
    wanted = {"entry_decision", *LLM_VERDICT_EVENTS}
    records = read_records(log_files(log_dir), LogFilter(bots=frozenset({"day_trader"})))
    return [r for r in records if r.get("event") in wanted]


def journal_for_dates(
    db: TradingDatabase, trading_dates: Iterable[str], log_dir: Path | None
) -> list[JournalRow]:
    """Every round trip of `trading_dates` (YYYY-MM-DD, New York), oldest first."""
    decisions = decision_records(log_dir)
    rows: list[JournalRow] = []
    for day in trading_dates:
        report = build_day_report(db, day)
        if not report.round_trips:
            continue
        purposes = {i["order_ref"]: i["purpose"] for i in db.get_intents_by_date(day)}
        rows += journal_rows(day, report.round_trips, purposes, decisions)
    return rows


def dates_between(first: date, last: date) -> list[str]:
    """Every calendar date from `first` to `last` inclusive (a day without fills adds no row).
    Raises JournalError when `last` is before `first`."""
    if last < first:
        raise JournalError(f"--to {last} is before --from {first}: swap them")
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def write_journal(rows: Sequence[JournalRow], path: Path) -> Path:
    """Write `rows` as CSV or Parquet (by the file's suffix); returns the path written.
    Raises JournalError for another suffix or a folder that cannot be written."""
    suffix = path.suffix.lower()
    if suffix not in JOURNAL_FORMATS:
        raise JournalError(
            f"--export {path}: unknown format {suffix or '(none)'}; name the file .csv or .parquet"
        )
    records = [dataclasses.asdict(row) for row in rows]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=JOURNAL_COLUMNS)
                writer.writeheader()
                writer.writerows(records)
        else:
            import pandas as pd

            pd.DataFrame.from_records(records, columns=list(JOURNAL_COLUMNS)).to_parquet(
                path, index=False
            )
    except OSError as exc:
        raise JournalError(
            f"cannot write {path} ({exc.strerror or exc}): pick another path"
        ) from exc
    return path
