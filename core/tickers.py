"""What counts as a ticker the bots may ask IB about: one rule for the command line and files."""

from __future__ import annotations

import re

# US equity tickers as IB spells them: AAPL, BRK.B, BF-B. Nothing else reaches a contract lookup.
_TICKER = re.compile(r"[A-Z][A-Z0-9.\-]{0,9}")


def is_ticker(symbol: str) -> bool:
    """True for an upper-case ticker such as AAPL or BRK.B (no spaces, paths or control chars)."""
    return _TICKER.fullmatch(symbol) is not None
