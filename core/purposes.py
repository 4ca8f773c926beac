"""The purposes stored with every exit order intent, and the exit reason each one means.

Plain names with no broker import, so the reports (and the supervisor's status block, which
shows today's P&L) read them without loading ib_async.
"""

from __future__ import annotations

PURPOSE_TARGET = "PROTECT_TARGET"
PURPOSE_BACKSTOP = "PROTECT_STOP"
PURPOSE_BOT_STOP = "BOT_STOP"
PURPOSE_BOT_TARGET = "BOT_TARGET"
PURPOSE_EOD = "EOD_FLATTEN"
PURPOSE_MANUAL = "MANUAL"  # a person asked to sell now (the dashboard's flatten)
PROTECTIVE_PURPOSES = frozenset({PURPOSE_TARGET, PURPOSE_BACKSTOP})
EXIT_REASON_BY_PURPOSE: dict[str, str] = {
    PURPOSE_TARGET: "PROFIT_TARGET",
    PURPOSE_BOT_TARGET: "PROFIT_TARGET",
    PURPOSE_BACKSTOP: "STOP_LOSS",
    PURPOSE_BOT_STOP: "STOP_LOSS",
    PURPOSE_EOD: "EOD",
    PURPOSE_MANUAL: "MANUAL",
}
