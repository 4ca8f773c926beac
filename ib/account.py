"""Which IB account a program works with: the one rule for the bots and the tools."""

from __future__ import annotations

from collections.abc import Sequence

from ib_async import IB

from core.settings import SettingsError


class AccountError(SettingsError):
    """The gateway does not offer the account this program should use (never retried)."""


def choose_account(managed: Sequence[str], configured: str) -> str:
    """IB_ACCOUNT (`configured`) when the gateway manages it, else the first managed account.

    Raises AccountError naming the gateway's accounts when IB_ACCOUNT is not one of them, or
    when the gateway reports none (paper or live could not be checked).
    """
    if configured:
        if configured not in managed:
            raise AccountError(
                f"setting IB_ACCOUNT={configured!r} is invalid: the gateway manages "
                f"{', '.join(managed) or 'no account'}; set IB_ACCOUNT to one of them, or "
                "leave it empty for the first"
            )
        return configured
    if not managed:
        raise AccountError(
            "the gateway reports no account, so paper or live cannot be checked: log the "
            "gateway in to its account (or set IB_ACCOUNT) and start again"
        )
    return managed[0]


def account_of(ib: IB, configured: str) -> str:
    """The account of a connected `ib` (see choose_account). Raises AccountError."""
    return choose_account(list(ib.managedAccounts()), configured)
