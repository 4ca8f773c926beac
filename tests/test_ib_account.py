"""ib.account: the one rule for which IB account a bot or a tool works with."""

from __future__ import annotations

import pytest

from core.settings import SettingsError
from ib.account import AccountError, choose_account


def test_configured_account_is_used_when_the_gateway_manages_it_else_the_first() -> None:
    assert choose_account(["DU1", "DU2"], "DU2") == "DU2"
    assert choose_account(["DU1", "DU2"], "") == "DU1"


def test_account_the_gateway_does_not_manage_is_refused_naming_the_managed_ones() -> None:
    with pytest.raises(AccountError, match="IB_ACCOUNT='DU9' is invalid: the gateway manages DU1"):
        choose_account(["DU1"], "DU9")


def test_gateway_without_an_account_is_refused_not_taken_as_an_empty_account() -> None:
    """The exit manager once took "" for the account and left the refusal to the paper/live
    check; a tool refused it in other words. One rule, one message."""
    with pytest.raises(AccountError, match="reports no account"):
        choose_account([], "")
    with pytest.raises(AccountError, match="manages no account"):
        choose_account([], "DU1")


def test_account_refusal_is_a_settings_error_never_retried_by_the_bots() -> None:
    assert issubclass(AccountError, SettingsError)
