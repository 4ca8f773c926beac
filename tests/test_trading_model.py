"""The shared vocabularies: one exit reason rule for the exit manager and the reports."""

from __future__ import annotations

import pytest

from trading.model import EXIT_REASONS, exit_reason_for


@pytest.mark.parametrize(
    ("purpose", "reason"),
    [
        ("PROTECT_TARGET", "PROFIT_TARGET"),
        ("BOT_TARGET", "PROFIT_TARGET"),
        ("PROTECT_STOP", "STOP_LOSS"),
        ("BOT_STOP", "STOP_LOSS"),
        ("EOD_FLATTEN", "EOD"),
        ("MANUAL", "MANUAL"),
        ("EMERGENCY", "EMERGENCY"),  # liquidate_all stores the reason as its purpose
        ("emergency", "EMERGENCY"),
    ],
)
def test_exit_reason_of_every_purpose_we_write(purpose: str, reason: str) -> None:
    assert exit_reason_for(purpose) == reason
    assert reason in EXIT_REASONS


@pytest.mark.parametrize("purpose", [None, "", "entry:standard"])
def test_a_purpose_that_names_no_exit_is_unknown_not_a_guess(purpose: str | None) -> None:
    assert exit_reason_for(purpose) == "UNKNOWN"
