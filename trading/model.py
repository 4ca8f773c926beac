"""The shared records and vocabularies of the trading core.

Plain data only (NamedTuples, frozensets, string constants): the bots, the IB adapter
(`ib.convert` turns IB's objects into these records and intents into IB orders), the
reports and the backtest all speak in these words.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import NamedTuple

# -- market data types ---------------------------------------------------------------------
# IB's marketDataType: 1 live, 2 frozen, 3 delayed, 4 delayed frozen.
LIVE_DATA_TYPES = frozenset({1})
DELAYED_DATA_TYPES = frozenset({3, 4})

# Entry rules and their refusals: reason codes, stable strings for logs, the store's guard
# and reports.
STANDARD = "standard"
GAP_AND_GO = "gap_and_go"

KILL_SWITCH = "kill_switch"
EXIT_MANAGER_NOT_READY = "exit_manager_not_ready"  # nobody would protect the fill
DAILY_LOSS_LIMIT = "daily_loss_limit"
MAX_OPEN_POSITIONS = "max_open_positions"
MARKET_CLOSED = "market_closed"
AFTER_ENTRY_CUTOFF = "after_entry_cutoff"
POSITION_ACTIVE = "position_active"
CLOSED_TODAY = "closed_today"
ENTRY_WORKING = "entry_working"
NO_QUOTE = "no_quote"
DELAYED_DATA = "delayed_data"
STALE_QUOTE = "stale_quote"
STALE_BARS = "stale_bars"
WARMING_UP = "warming_up"
NO_SIGNAL = "no_signal"
ENTER = "enter"
# Why a decided entry was not sent after its intent was written.
NOT_CONNECTED = "not_connected"  # 1100, or the connection dropped
DECISION_STALE = "decision_stale"  # the intent write took too long

# -- agent names (the `agent` of positions, trades and intents; heartbeat and log names) ----
EXIT_MANAGER = "exit_manager"
DAY_TRADER = "day_trader"
ADOPTED = "adopted"  # a position the exit manager found at the broker with no database row

# -- order purposes (stored with every exit order intent) -----------------------------------
PURPOSE_TARGET = "PROTECT_TARGET"
PURPOSE_BACKSTOP = "PROTECT_STOP"
PURPOSE_BOT_STOP = "BOT_STOP"
PURPOSE_BOT_TARGET = "BOT_TARGET"
PURPOSE_EOD = "EOD_FLATTEN"
PURPOSE_MANUAL = "MANUAL"  # a person asked to sell now (the dashboard's flatten)
PROTECTIVE_PURPOSES = frozenset({PURPOSE_TARGET, PURPOSE_BACKSTOP})

# -- exit reasons (closed_positions_today.exit_reason) ---------------------------------------
EXIT_REASONS = frozenset(
    {"PROFIT_TARGET", "STOP_LOSS", "EOD", "MANUAL", "EMERGENCY", "RECONCILE", "RECONCILE_BROKER"}
)
UNKNOWN_EXIT_REASON = "UNKNOWN"  # reports only: a sell whose purpose says no reason
EXIT_REASON_BY_PURPOSE: dict[str, str] = {
    PURPOSE_TARGET: "PROFIT_TARGET",
    PURPOSE_BOT_TARGET: "PROFIT_TARGET",
    PURPOSE_BACKSTOP: "STOP_LOSS",
    PURPOSE_BOT_STOP: "STOP_LOSS",
    PURPOSE_EOD: "EOD",
    PURPOSE_MANUAL: "MANUAL",
}


def exit_reason_for(purpose: str | None) -> str:
    """The exit reason of a sell placed for `purpose`: the exit manager's purposes by
    EXIT_REASON_BY_PURPOSE, a purpose that is itself a reason (liquidate_all's MANUAL /
    EMERGENCY) as that reason, anything else UNKNOWN_EXIT_REASON."""
    if not purpose:
        return UNKNOWN_EXIT_REASON
    if purpose in EXIT_REASON_BY_PURPOSE:
        return EXIT_REASON_BY_PURPOSE[purpose]
    return purpose.upper() if purpose.upper() in EXIT_REASONS else UNKNOWN_EXIT_REASON


# -- records ---------------------------------------------------------------------------------
class BrokerPosition(NamedTuple):
    """A position as IB reports it (shares; negative: short)."""

    symbol: str
    quantity: float
    avg_cost: float


class WorkingOrder(NamedTuple):
    """An order working at IB (any client), as far as the rules care."""

    symbol: str
    order_id: int
    client_id: int
    perm_id: int
    action: str  # BUY / SELL
    order_type: str  # LMT / STP / MKT
    quantity: float  # remaining
    limit_price: float | None
    stop_price: float | None
    oca_group: str
    order_ref: str


class Quote(NamedTuple):
    """A price with the exchange time it is from and IB's market data type."""

    symbol: str
    last: float
    bid: float
    ask: float
    time: float  # epoch seconds (exchange / simulated time)
    data_type: int = 1
    prev_close: float = math.nan  # the previous session's close (IB's tick 9): the gap base


class FillRecord(NamedTuple):
    """One execution: `side` is BUY or SELL, `commission` None until IB reports it."""

    symbol: str
    side: str
    shares: float
    price: float
    time: datetime
    exec_id: str
    order_ref: str
    commission: float | None = None


# -- intents (what the rules want done; the IB adapter turns them into orders) ---------------
class EnterIntent(NamedTuple):
    """Buy `quantity` at a marketable `limit_price` for entry `rule` ("standard", ...)."""

    symbol: str
    quantity: int
    limit_price: float
    rule: str
    reason: str
    tif: str = "DAY"


class ProtectIntent(NamedTuple):
    """One protective set: a take-profit LMT at `target_price` and a server STP at
    `stop_price`, both for `quantity` shares in OCA group `oca_group` (ocaType 1)."""

    symbol: str
    quantity: int
    target_price: float
    stop_price: float
    oca_group: str
    reason: str
    tif: str = "GTC"


class ExitIntent(NamedTuple):
    """Sell `quantity` now for `purpose` (exit reason `reason`): an IOC limit at
    `limit_price`, or a DAY market order when `limit_price` is None."""

    symbol: str
    quantity: int
    purpose: str
    reason: str
    limit_price: float | None = None


class CancelIntent(NamedTuple):
    """Cancel one working order (`reason` says why: extra, stale, orphan, ...)."""

    symbol: str
    order_id: int
    order_ref: str
    reason: str
