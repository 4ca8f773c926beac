"""core.tickers: the one ticker rule for the command line and the watchlist file."""

from __future__ import annotations

import pytest

from core.tickers import is_ticker


@pytest.mark.parametrize("symbol", ["AAPL", "BRK.B", "BF-B", "X", "GOOGL", "A1"])
def test_tickers_as_ib_spells_them_are_accepted(symbol: str) -> None:
    assert is_ticker(symbol)


@pytest.mark.parametrize(
    "symbol", ["", "aapl", "../etc", "AAPL; DROP", "ÄPFEL", "AAPL\n", "AAPL\nMSFT", " AAPL", "1AB"]
)
def test_anything_else_is_refused_including_a_trailing_newline(symbol: str) -> None:
    assert not is_ticker(symbol)
