"""The live day beside the model's: the same day's recorded bars through the backtest with the
settings that were live, trade by trade.

    comparison = compare_day(date, live_rows, model_rows, records, intents, day, stop_pct)

Pure: fed the live journal (journal.JournalRow from the database), the model's journal, the
bots' log records of the day (view_logs.read_records), the day's order intents and its bars.
A live trip and a model trip pair up when they are the same symbol entered within
MATCH_WINDOW_S of each other. For an entry the model took and the live bots did not, the
reason is read from what the day trader recorded around that moment: the LLM's veto, an entry
timed out unfilled or rejected, or the decision's reason code (stale data, kill switch, slot
limit, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.money import stop_loss_price
from journal import JournalRow
from sim.days import ANALYSIS_SECONDS, TradingDay
from trading import entries
from view_logs import record_time

MATCH_WINDOW_S = 300.0  # a live and a model entry of one symbol this close are one trade
BEFORE_S = 120.0  # records this long before the model's entry can explain a missed one
AFTER_S = 300.0  # and this long after it (an entry timeout is 60 s by default)

# The day trader's reason codes in the report's words.
REASON_WORDS = {
    entries.KILL_SWITCH: "kill switch",
    entries.MAX_OPEN_POSITIONS: "slot limit",
    entries.STALE_QUOTE: "stale data",
    entries.STALE_BARS: "stale data",
    entries.NO_QUOTE: "stale data",
    entries.DELAYED_DATA: "stale data (delayed)",
    entries.DAILY_LOSS_LIMIT: "daily loss limit",
    entries.EXIT_MANAGER_NOT_READY: "exit manager not ready",
    entries.CLOSED_TODAY: "re-entry blocked",
    entries.POSITION_ACTIVE: "re-entry blocked",
    entries.ENTRY_WORKING: "entry already working",
    entries.AFTER_ENTRY_CUTOFF: "after the entry cutoff",
    entries.MARKET_CLOSED: "market closed",
    entries.WARMING_UP: "indicators warming up",
    entries.NO_SIGNAL: "no signal on the live bars",
}


@dataclass(frozen=True)
class Pair:
    """One trade both took: live and model side by side."""

    live: JournalRow
    model: JournalRow
    entry_slippage_cents: float  # live paid this much more a share (negative: less)
    entry_slippage_bps: float
    exit_slippage_cents: float  # live got this much less a share
    exit_slippage_bps: float
    live_reaction_s: float | None  # stop crossed -> exit filled (stop-loss exits)
    model_reaction_s: float | None


@dataclass(frozen=True)
class Missed:
    row: JournalRow
    why: str


@dataclass(frozen=True)
class DayComparison:
    trading_date: str
    pairs: tuple[Pair, ...]
    model_only: tuple[Missed, ...]  # the model entered, the live bots did not
    live_only: tuple[Missed, ...]  # the live bots entered, the model did not
    live_commissions: float
    model_commissions: float
    live_net: float
    model_net: float


def _time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _slippage(worse_by: float, model: float) -> tuple[float, float]:
    """Cents a share and basis points of the model's price the live fill was worse by."""
    return round(worse_by * 100, 2), round(worse_by / model * 10_000, 1) if model else 0.0


def stop_cross_time(row: JournalRow, day: TradingDay | None, stop_pct: float) -> float | None:
    """When the day's bars first traded at or below the trip's stop after its entry (the
    bar's start: 30-s resolution at best); None without bars or a cross before the exit."""
    if day is None:
        return None
    symbol = next((s for s in day.symbols if s.symbol == row.symbol), None)
    if symbol is None or not len(symbol.fill):
        return None
    stop = stop_loss_price(row.entry_price, stop_pct)
    entry, exit_ = _time(row.entry_time), _time(row.exit_time)
    bars = symbol.fill
    size = day.fill_seconds or ANALYSIS_SECONDS
    crossed = bars[(bars[:, 0] + size > entry) & (bars[:, 0] <= exit_) & (bars[:, 3] <= stop)]
    return float(max(crossed[0, 0], entry)) if len(crossed) else None


def reaction_seconds(row: JournalRow, day: TradingDay | None, stop_pct: float) -> float | None:
    """Seconds from the stop cross to the exit fill, for a stop-loss exit; else None."""
    if "STOP" not in row.exit_reason:
        return None
    crossed = stop_cross_time(row, day, stop_pct)
    return None if crossed is None else round(_time(row.exit_time) - crossed, 1)


def why_not_entered(
    symbol: str,
    at: float,
    records: Sequence[Mapping[str, Any]],
    intents: Sequence[Mapping[str, Any]],
) -> str:
    """Why the live bots did not enter `symbol` when the model did (at `at`, epoch): the
    strongest explanation the day trader recorded around that moment."""
    near = []
    last_decision = None
    paused = False
    for record in records:
        when = record_time(dict(record))
        if when is None:
            continue
        t = when.timestamp()
        if record.get("event") == "entries_paused" and t <= at:
            paused = True
        elif record.get("event") == "entries_resumed" and t <= at:
            paused = False
        if record.get("symbol") != symbol:
            continue
        if at - BEFORE_S <= t <= at + AFTER_S:
            near.append(record)
        if record.get("event") == "entry_decision" and t <= at + ANALYSIS_SECONDS:
            last_decision = record
    events = [r.get("event") for r in near]
    if "entry_vetoed" in events:
        return "LLM veto"
    refs = {r.get("order_ref") for r in near if r.get("order_ref")}
    for intent in intents:
        if intent.get("symbol") != symbol or intent.get("side") != "BUY":
            continue
        if refs and intent.get("order_ref") not in refs:
            continue
        if intent.get("state") == "REJECTED":
            return "rejected"
        if intent.get("state") == "CANCELLED" and "timeout" in str(intent.get("note") or ""):
            return "timeout (unfilled)"
    for record in near:
        if record.get("event") == "entry_cancel_sent" and "timeout" in str(record.get("reason")):
            return "timeout (unfilled)"
        if record.get("event") == "entry_done" and record.get("status") == "Inactive":
            return "rejected"
    for record in reversed(near):
        if record.get("event") in ("entry_dropped", "entry_decision") and record.get("reason"):
            code = str(record["reason"])
            if code != entries.ENTER:
                return REASON_WORDS.get(code, code)
        if record.get("event") == "entry_too_small":
            return "too small to size"
    if last_decision is not None and last_decision.get("reason") not in (None, entries.ENTER):
        code = str(last_decision["reason"])
        return REASON_WORDS.get(code, code)
    if paused:
        return "exit manager not ready"
    return "no record (the day trader logged nothing for it then)"


def compare_day(
    trading_date: str,
    live_rows: Sequence[JournalRow],
    model_rows: Sequence[JournalRow],
    records: Sequence[Mapping[str, Any]],
    intents: Sequence[Mapping[str, Any]],
    day: TradingDay | None,
    stop_pct: float,
) -> DayComparison:
    """Pure: the live day beside the model's day (see the module's docstring)."""
    unused = sorted(model_rows, key=lambda r: r.entry_time)
    pairs: list[Pair] = []
    live_only: list[Missed] = []
    for live in sorted(live_rows, key=lambda r: r.entry_time):
        match = next(
            (
                m
                for m in unused
                if m.symbol == live.symbol
                and abs(_time(m.entry_time) - _time(live.entry_time)) <= MATCH_WINDOW_S
            ),
            None,
        )
        if match is None:
            later = [m for m in unused if m.symbol == live.symbol]
            why = (
                f"the model entered {live.symbol} at {later[0].entry_time[11:19]} instead"
                if later
                else "the model did not enter: no signal on the recorded bars then, or no slot"
            )
            live_only.append(Missed(live, why))
            continue
        unused.remove(match)
        entry_c, entry_b = _slippage(live.entry_price - match.entry_price, match.entry_price)
        exit_c, exit_b = _slippage(match.exit_price - live.exit_price, match.exit_price)
        pairs.append(
            Pair(
                live,
                match,
                entry_c,
                entry_b,
                exit_c,
                exit_b,
                reaction_seconds(live, day, stop_pct),
                reaction_seconds(match, day, stop_pct),
            )
        )
    model_only = [
        Missed(m, why_not_entered(m.symbol, _time(m.entry_time), records, intents)) for m in unused
    ]
    return DayComparison(
        trading_date=trading_date,
        pairs=tuple(pairs),
        model_only=tuple(model_only),
        live_only=tuple(live_only),
        live_commissions=round(sum(r.commissions for r in live_rows), 2),
        model_commissions=round(sum(r.commissions for r in model_rows), 2),
        live_net=round(sum(r.net_pnl for r in live_rows), 2),
        model_net=round(sum(r.net_pnl for r in model_rows), 2),
    )


def render_comparison(comparison: DayComparison) -> str:
    """The comparison as Markdown."""
    c = comparison
    lines = [
        f"## Live vs model, {c.trading_date}",
        "",
        f"Net P&L live ${c.live_net:+,.2f}, model ${c.model_net:+,.2f}; commissions live "
        f"${c.live_commissions:,.2f}, model ${c.model_commissions:,.2f}. "
        f"{len(c.pairs)} trade(s) both took, {len(c.model_only)} only the model, "
        f"{len(c.live_only)} only live.",
        "",
    ]
    if c.pairs:
        lines += [
            "| symbol | entry live / model | slip ¢ (bps) | exit live / model | slip ¢ (bps) "
            "| reason live / model | stop->exit s live / model | commission live / model |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in c.pairs:
            live_r = "-" if p.live_reaction_s is None else f"{p.live_reaction_s:g}"
            model_r = "-" if p.model_reaction_s is None else f"{p.model_reaction_s:g}"
            lines.append(
                f"| {p.live.symbol} | {p.live.entry_time[11:19]} ${p.live.entry_price:.2f} / "
                f"{p.model.entry_time[11:19]} ${p.model.entry_price:.2f} | "
                f"{p.entry_slippage_cents:+.2f} ({p.entry_slippage_bps:+.1f}) | "
                f"{p.live.exit_time[11:19]} ${p.live.exit_price:.2f} / "
                f"{p.model.exit_time[11:19]} ${p.model.exit_price:.2f} | "
                f"{p.exit_slippage_cents:+.2f} ({p.exit_slippage_bps:+.1f}) | "
                f"{p.live.exit_reason} / {p.model.exit_reason} | {live_r} / {model_r} | "
                f"${p.live.commissions:.2f} / ${p.model.commissions:.2f} |"
            )
        lines.append("")
    for title, missed in (
        ("Entries the model took and the live bots did not", c.model_only),
        ("Entries the live bots took and the model did not", c.live_only),
    ):
        if missed:
            lines += [f"### {title}", "", "| symbol | entry | net $ | why |", "|---|---|---|---|"]
            lines += [
                f"| {m.row.symbol} | {m.row.entry_time[11:19]} ${m.row.entry_price:.2f} | "
                f"{m.row.net_pnl:+,.2f} | {m.why} |"
                for m in missed
            ]
            lines.append("")
    return "\n".join(lines)
