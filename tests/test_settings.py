"""Settings: validation messages, .env handling, secrets never shown, live/paper checks."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import pytest

from core.settings import (
    PROJECT_ROOT,
    Secret,
    SettingsError,
    check_trading_mode,
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


def test_env_example_documents_every_key() -> None:
    documented = (PROJECT_ROOT / ".env.example").read_text()
    missing = [k for k in env_keys() if k not in documented]
    assert missing == []


def test_env_example_itself_loads(tmp_path: Path) -> None:
    s = load_settings(environ={}, dotenv_path=PROJECT_ROOT / ".env.example")
    assert s.ib_port == 4002 and s.clock_file is None and s.massive_api_key is None


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


@pytest.mark.parametrize(
    ("key", "meant"),
    [("MAX_POSITON_USD", "MAX_POSITION_USD"), ("IB_PRT", "IB_PORT"), ("ALLOCATON", "ALLOCATION")],
)
def test_misspelt_setting_in_dotenv_is_fatal_naming_the_setting_meant(
    key: str, meant: str, tmp_path: Path
) -> None:
    """A near miss would be ignored and the default used, like an unparsable line."""
    with pytest.raises(SettingsError) as caught:
        load({}, tmp_path, dotenv=f"IB_PORT=4002\n{key}=1000\n")
    assert str(caught.value) == (
        f"{tmp_path / '.env'}: {key} is not a setting, so it would be ignored and the default "
        f"used; did you mean {meant}?"
    )


def test_dotenv_keys_of_other_programs_are_left_alone(tmp_path: Path) -> None:
    s = load({}, tmp_path, dotenv="OPENAI_API_KEY=x\nMY_APP_PORT=9\nIB_PORT=7497\n")
    assert s.ib_port == 7497


# -- the paper/live rule -----------------------------------------------------------------------

PORT_KINDS = {4002: "paper", 7497: "paper", 4001: "live", 7496: "live", 5000: "other"}
ACCOUNT_KINDS = {None: "not connected", "DU1234567": "paper", "U7654321": "live", "": "none"}


def expected_refusal(flag: bool, mode: str | None, port: int, account: str | None) -> str | None:
    """README's rule, row by row: which refusal comes first (None: allowed)."""
    if mode == "garbage":
        return "bad TRADING_MODE"
    live = (mode or "paper").lower() == "live"
    if flag and not live:
        return "--live without TRADING_MODE=live"
    if live and not flag:
        return "TRADING_MODE=live without --live"
    if PORT_KINDS[port] == ("paper" if live else "live"):
        return "paper port in live mode" if live else "live port in paper mode"
    if account is None:
        return None
    if ACCOUNT_KINDS[account] == "none":
        return "no account"
    if ACCOUNT_KINDS[account] == ("paper" if live else "live"):
        return "paper account in live mode" if live else "live account in paper mode"
    return None


# What each refusal must name: the problem and the exact fix.
REFUSAL_TEXT = {
    "bad TRADING_MODE": ("TRADING_MODE='garbage' is invalid", "expected one of paper, live"),
    "--live without TRADING_MODE=live": ("--live needs TRADING_MODE=live", "set TRADING_MODE=live"),
    "TRADING_MODE=live without --live": ("needs --live on the command line", "add --live"),
    "paper port in live mode": ("is a paper port", "4001 (IB Gateway) or 7496 (TWS)"),
    "live port in paper mode": ("is a live port", "4002 (IB Gateway) or 7497 (TWS)"),
    "no account": ("reports no account", "IB_ACCOUNT"),
    "paper account in live mode": ("DU1234567 is a paper account", "live account"),
    "live account in paper mode": ("U7654321 is a live (non-paper) account", "paper account"),
}


@pytest.mark.parametrize(
    ("flag", "mode", "port", "account"),
    list(
        product(
            (False, True), (None, "paper", "live", "LIVE", "garbage"), PORT_KINDS, ACCOUNT_KINDS
        )
    ),
)
def test_paper_live_rule_for_every_combination(
    flag: bool, mode: str | None, port: int, account: str | None, tmp_path: Path
) -> None:
    """Live needs --live AND TRADING_MODE=live (any case) AND a non-DU account; known paper
    ports are refused live and known live ports paper. Bugs pinned: --live alone traded live,
    TRADING_MODE=LIVE was paper in one program and refused in others, and a user who passed
    --live was told to pass --live."""
    expected = expected_refusal(flag, mode, port, account)
    env = {"IB_PORT": str(port), **({"TRADING_MODE": mode} if mode is not None else {})}
    try:
        settings = load(env, tmp_path)
        check_trading_mode(settings, flag, account)
    except SettingsError as exc:
        message = str(exc)
        assert expected is not None, f"refused but allowed by the rule: {message}"
        problem, fix = REFUSAL_TEXT[expected]
        assert problem in message and fix in message, message
        assert "\n" not in message
        if flag:
            assert "add --live" not in message and "pass --live" not in message, message
        return
    assert expected is None, f"allowed but the rule refuses: {expected}"
    assert settings.is_live is flag


@pytest.mark.parametrize(
    ("mode", "port", "refused"),
    [(None, 4002, None), ("live", 4001, None), ("LIVE", 5000, None), ("paper", 4001, "live port"),
     ("live", 7497, "paper port"), (None, 7496, "live port")],
)  # fmt: skip
def test_tool_that_sends_no_order_follows_trading_mode_and_checks_only_ports(
    mode: str | None, port: int, refused: str | None, tmp_path: Path
) -> None:
    env = {"IB_PORT": str(port), **({"TRADING_MODE": mode} if mode is not None else {})}
    settings = load(env, tmp_path)
    if refused is None:
        check_trading_mode(settings, None)
        return
    with pytest.raises(SettingsError, match=refused) as caught:
        check_trading_mode(settings, None)
    assert "--live" not in str(caught.value)  # such a tool has no --live


def test_entry_thresholds_are_settings_the_day_traders_rules_read(tmp_path: Path) -> None:
    from trading.entries import EntryConfig

    settings = load(
        {"ENTRY_RSI_MAX": "70", "ENTRY_ATR_PCT_MIN": "0.5", "ENTRY_GAP_MIN_PCT": "3",
         "ENTRY_CUTOFF_MINUTES": "30"},
        tmp_path,
    )  # fmt: skip
    rules = EntryConfig.from_settings(settings)
    assert (rules.rsi_max, rules.atr_pct_min, rules.gap_min_pct) == (70.0, 0.5, 3.0)
    assert rules.entry_cutoff_minutes == 30.0
    assert EntryConfig.from_settings(load({}, tmp_path)).entry_cutoff_minutes == 15.0


def test_entry_cutoff_inside_the_eod_flatten_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"ENTRY_CUTOFF_MINUTES=10\.0 is invalid"):
        load({"ENTRY_CUTOFF_MINUTES": "10"}, tmp_path)
