"""ib_tools: the session every operator tool opens, on the simulated gateway."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from sim_support import gateway, wait_for

from core.settings import Settings, SettingsError
from ib_tools import TOOL_CLIENT_IDS, ToolSession, add_connection_args, add_db_arg, tool_session
from observability import DatabaseError


def test_tool_session_disconnects_when_the_body_raises_and_opens_no_database_when_told(
    tmp_path: Path, _isolated_settings: Settings
) -> None:
    """A tool that fails mid-way must not leave its client id held at the gateway (IB then
    refuses the next run with 326), and test_connection must not create a database file."""
    with gateway(tmp_path) as gw:
        parser = argparse.ArgumentParser()
        add_connection_args(parser, "test_connection")
        add_db_arg(parser)
        args = parser.parse_args(["--port", str(gw.port)])
        client_id = TOOL_CLIENT_IDS["test_connection"]
        opened: list[ToolSession] = []

        with (
            pytest.raises(RuntimeError, match="body failed"),
            tool_session(args, "test_connection", database=False) as session,
        ):
            opened.append(session)
            assert session.ib.isConnected() and client_id in gw.gateway.by_client
            raise RuntimeError("body failed")

        [session] = opened
        assert session.db is None
        assert not _isolated_settings.database_path.exists()
        assert not session.ib.isConnected()
        wait_for(lambda: client_id not in gw.gateway.by_client, 5, "the gateway to free the id")


def test_tool_that_sends_orders_is_refused_a_live_account_at_connect_a_looking_tool_is_not(
    tmp_path: Path,
) -> None:
    """liquidate_all (it can sell) gets no session on a U... account in paper mode; the id is
    freed. test_connection only looks: it may inspect any account."""
    with gateway(tmp_path, account="U7654321") as gw:
        selling = argparse.ArgumentParser()
        add_connection_args(selling, "liquidate_all")
        args = selling.parse_args(["--port", str(gw.port)])
        with (
            pytest.raises(SettingsError, match="U7654321 is a live \\(non-paper\\) account"),
            tool_session(args, "liquidate_all", database=False),
        ):
            pytest.fail("a session was opened")
        client_id = TOOL_CLIENT_IDS["liquidate_all"]
        wait_for(lambda: client_id not in gw.gateway.by_client, 5, "the gateway to free the id")

        looking = argparse.ArgumentParser()
        add_connection_args(looking, "test_connection")
        args = looking.parse_args(["--port", str(gw.port)])
        with tool_session(args, "test_connection", database=False) as session:
            assert session.ib.managedAccounts() == ["U7654321"]


def test_tool_session_for_a_tool_that_only_reads_refuses_a_missing_database_before_connecting(
    tmp_path: Path, _isolated_settings: Settings
) -> None:
    """The database is opened before the connection, so a wrong --db never reaches IB."""
    parser = argparse.ArgumentParser()
    add_connection_args(parser, "check_orders")
    add_db_arg(parser)
    missing = tmp_path / "nonexist.db"
    args = parser.parse_args(["--port", "1", "--db", str(missing)])  # nothing listens on 1
    with (
        pytest.raises(DatabaseError, match=f"database {missing} does not exist"),
        tool_session(args, "check_orders", read_only_db=True),
    ):
        pytest.fail("the session opened")
    assert not missing.exists()
