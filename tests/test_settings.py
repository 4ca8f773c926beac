"""Settings: validation messages, .env handling, secrets never shown, live/paper checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import (
    PROJECT_ROOT,
    Secret,
    SettingsError,
    check_live_account,
    env_keys,
    load_settings,
)


def load(env: dict[str, str], tmp_path: Path, dotenv: str | None = None):
    env_file = tmp_path / ".env"
    if dotenv is not None:
        env_file.write_text(dotenv)
    return load_settings(environ=env, dotenv_path=env_file)


def test_defaults_match_the_product(tmp_path: Path) -> None:
    s = load({}, tmp_path)
    assert (s.exit_manager_client_id, s.day_trader_client_id) == (10, 2)
    assert (s.profit_target_pct, s.stop_loss_pct, s.allocation) == (1.8, 0.9, 0.25)
    assert s.trading_mode == "paper" and not s.is_live
    assert s.database_path == PROJECT_ROOT / "trading_history.db"


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("IB_PORT", "abc", "whole number from 1 to 65535"),
        ("IB_PORT", "70000", "whole number from 1 to 65535"),
        ("ALLOCATION", "1.5", "> 0.0 and <= 1.0"),
        ("ALLOCATION", "0", "> 0.0 and <= 1.0"),
        ("PROFIT_TARGET_PCT", "-1", "> 0.0"),
        ("TRADING_MODE", "yolo", "one of paper, live"),
        ("ALLOW_DELAYED_DATA", "maybe", "true or false"),
        ("STOP_LOSS_PCT", "nan", "expected a number"),
    ],
)
def test_bad_value_names_key_value_and_what_is_allowed(
    key: str, value: str, allowed: str, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError) as caught:
        load({key: value}, tmp_path)
    message = str(caught.value)
    assert key in message and repr(value) in message and allowed in message
    assert "\n" not in message


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    s = load({"IB_PORT": "7497"}, tmp_path, dotenv="IB_PORT=4002\nALLOCATION=0.5\n")
    assert s.ib_port == 7497 and s.allocation == 0.5


def test_bad_value_in_dotenv_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="MAX_OPEN_POSITIONS='many'"):
        load({}, tmp_path, dotenv="MAX_OPEN_POSITIONS=many\n")


def test_secrets_never_appear_in_repr_str_or_format(tmp_path: Path) -> None:
    s = load({"DEEPSEEK_API_KEY": "sk-very-secret", "POLYGON_API_KEY": "pk-also"}, tmp_path)
    assert isinstance(s.massive_api_key, Secret)  # the old Polygon name is accepted
    assert s.massive_api_key.reveal() == "pk-also"
    for shown in (repr(s), str(s), f"{s.deepseek_api_key}", str(s.deepseek_api_key)):
        assert "sk-very-secret" not in shown and "pk-also" not in shown


def test_duplicate_client_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="326"):
        load({"IB_CLIENT_ID_DAY_TRADER": "10"}, tmp_path)


def test_live_mode_needs_a_live_port_and_paper_refuses_live_ports(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="paper port"):
        load({"TRADING_MODE": "live", "IB_PORT": "7497"}, tmp_path)
    with pytest.raises(SettingsError, match="live port"):
        load({"IB_PORT": "4001"}, tmp_path)
    assert load({"TRADING_MODE": "live", "IB_PORT": "4001"}, tmp_path).is_live


def test_account_must_match_the_mode(tmp_path: Path) -> None:
    paper = load({}, tmp_path)
    live = load({"TRADING_MODE": "live", "IB_PORT": "4001"}, tmp_path)
    check_live_account(paper, "DU1234567")
    check_live_account(live, "U7654321")
    with pytest.raises(SettingsError, match="live account"):
        check_live_account(paper, "U7654321")
    with pytest.raises(SettingsError, match="paper account"):
        check_live_account(live, "DU1234567")


def test_env_example_documents_every_key() -> None:
    documented = (PROJECT_ROOT / ".env.example").read_text()
    missing = [k for k in env_keys() if k not in documented]
    assert missing == []


def test_env_example_itself_loads(tmp_path: Path) -> None:
    s = load_settings(environ={}, dotenv_path=PROJECT_ROOT / ".env.example")
    assert s.ib_port == 4002 and s.clock_file is None and s.massive_api_key is None


def test_cli_overrides_are_checked_like_loaded_settings(tmp_path: Path) -> None:
    from core.settings import with_overrides

    paper = load({}, tmp_path)
    assert with_overrides(paper, ib_port=7497).ib_port == 7497
    with pytest.raises(SettingsError, match="live port"):
        with_overrides(paper, ib_port=4001)


# -- .env lines that cannot be parsed ---------------------------------------------------------


@pytest.mark.parametrize(
    ("dotenv", "line", "key"),
    [
        ('IB_PORT=4002\nMAX_POSITION_USD="1000\nALLOCATION=0.5\n', 2, "MAX_POSITION_USD"),
        ("# limits\n\n\nMAX_POSITION_USD='1000\n", 4, "MAX_POSITION_USD"),
        ('MAX_POSITION_USD="1000\nMAX_OPEN_POSITIONS="4"\n', 1, "MAX_POSITION_USD"),
        ("ALLOCATION=0.5\nMAX_POSITION_USD 1000\n", 2, "MAX_POSITION_USD"),
        ("ALLOCATION=0.5\nMAX_POSITION_USD\n", 2, "MAX_POSITION_USD"),
        ("IB_PORT=4002\n!!garbage\n", 2, None),
        ("IB_PORT=4002\n=1000\n", 2, None),
        ("$MAX_POSITION_USD=1000\n", 1, None),
        ("export MAX_POSITION_USD='it''s'\n", 1, "MAX_POSITION_USD"),
    ],
)
def test_unparsable_dotenv_line_is_fatal_naming_file_line_and_key(
    dotenv: str, line: int, key: str | None, tmp_path: Path
) -> None:
    """Bug pinned: python-dotenv skipped the line and the default applied
    (MAX_POSITION_USD="1000 silently became $25,000)."""
    with pytest.raises(SettingsError) as caught:
        load({}, tmp_path, dotenv=dotenv)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / '.env'} line {line}: cannot parse the line")
    assert "\n" not in message
    if key is not None:
        assert f"for {key}," in message and f"write {key}=value" in message


def test_unparsable_dotenv_line_never_echoes_its_text(tmp_path: Path) -> None:
    """A pasted API key on a line of its own must not reach the console."""
    with pytest.raises(SettingsError) as caught:
        load({}, tmp_path, dotenv="DEEPSEEK_API_KEY=\nsk-9f8e7d6c5b4a\n")
    assert "9f8e7d6c5b4a" not in str(caught.value) and "line 2" in str(caught.value)


def test_well_formed_dotenv_stays_accepted(tmp_path: Path) -> None:
    dotenv = (
        "# a comment line\n"
        "\n"
        "export IB_PORT=7497\n"
        "ALLOCATION = 0.5  # a trailing comment\n"
        'IB_ACCOUNT="DU 1 # not a comment"\n'
        "LOG_LEVEL='warning'\n"
        "CLOCK_FILE=\n"
        "   \n"
        "TRADER_HOME=/srv/trader\n"
        "DATABASE_PATH=${TRADER_HOME}/db.sqlite\n"
    )
    s = load({}, tmp_path, dotenv=dotenv)
    assert (s.ib_port, s.allocation, s.ib_account) == (7497, 0.5, "DU 1 # not a comment")
    assert s.log_level == "WARNING" and s.clock_file is None
    assert s.database_path == Path("/srv/trader/db.sqlite")
