"""Settings: read once from the environment and `.env`, validated, frozen.

A bad value stops the program with one line naming the key, the value and what is allowed.
Secrets are wrapped in `Secret` so they never reach a log line or a repr.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values
from dotenv.parser import Binding, parse_stream

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOTENV_PATH = PROJECT_ROOT / ".env"  # tests point this elsewhere: no test reads a real .env
# IB's conventional ports: TWS 7497 paper / 7496 live, Gateway 4002 paper / 4001 live.
LIVE_PORTS = frozenset({7496, 4001})
PAPER_PORTS = frozenset({7497, 4002})
PAPER_ACCOUNT_PREFIX = "DU"  # IB paper accounts are DU...; live ones U..., F..., I...

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the key, the value and what is allowed."""


class Secret:
    """A string that never shows itself in str(), repr() or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"


@dataclass(frozen=True)
class Settings:
    ib_host: str = "127.0.0.1"
    ib_port: int = 4002
    exit_manager_client_id: int = 10
    day_trader_client_id: int = 2
    trading_mode: str = "paper"  # "paper" or "live"
    ib_account: str = ""  # empty: the first managed account
    allocation: float = 0.25  # fraction of net liquidation the day trader may deploy
    profit_target_pct: float = 1.8
    stop_loss_pct: float = 0.9
    max_open_positions: int = 4
    max_position_usd: float = 25_000.0
    daily_loss_limit_pct: float = 2.0  # of net liquidation; halts new entries, never exits
    eod_flatten_minutes: float = 15.0
    eod_sweep_minutes: float = 5.0
    stale_tick_seconds: float = 30.0
    allow_delayed_data: bool = False
    database_path: Path = PROJECT_ROOT / "trading_history.db"
    backup_dir: Path = PROJECT_ROOT / "archive"
    backup_keep_days: int = 10
    log_dir: Path = PROJECT_ROOT / "logs"
    log_level: str = "INFO"
    kill_switch_file: Path = PROJECT_ROOT / "KILL_SWITCH"
    watchlist_path: Path = PROJECT_ROOT / "day_trading_watchlist.json"
    bars_dir: Path | None = None  # the day trader's recorded bars; None: bars/ beside the database
    clock_file: Path | None = None  # simulated clock published by the simulated gateway
    deepseek_api_key: Secret | None = None
    google_api_key: Secret | None = None
    massive_api_key: Secret | None = None
    # The LLM providers' API roots; None: the providers' own (a proxy, or a local test server).
    deepseek_base_url: str | None = None
    gemini_base_url: str | None = None
    # The dashboard: a token is required to bind beyond loopback, and for its actions.
    dashboard_token: Secret | None = None
    # Alerts (apprise URLs hold bot tokens and passwords: a secret); kinds turned off by name.
    alert_urls: Secret | None = None
    alerts_off: tuple[str, ...] = ()
    alert_repeat_seconds: float = 300.0  # one alert per kind and subject in this many real s
    alert_timeout_seconds: float = 10.0  # a channel that takes longer is given up for that alert
    alert_disconnect_seconds: float = 60.0  # a lost connection is alerted once it lasts this long
    # None: the plan's limit (5/min on the free plan, none on paid plans); 0: no limit.
    massive_requests_per_minute: int | None = None
    scanner_max_data_age_seconds: float = 300.0  # beyond the plan's delay

    @property
    def is_live(self) -> bool:
        return self.trading_mode == "live"

    @property
    def recorded_bars_dir(self) -> Path:
        """Where the day trader records the bars it sees (BARS_DIR, else bars/ beside the
        database): one folder per day, one replay file per symbol."""
        return self.bars_dir or self.database_path.parent / "bars"

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"Settings({shown})"


def _fail(key: str, raw: str, allowed: str) -> SettingsError:
    return SettingsError(f"setting {key}={raw!r} is invalid: {allowed}")


def _integer(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(key: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise _fail(key, raw, f"expected a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise _fail(key, raw, f"expected a whole number from {lo} to {hi}")
        return value

    return parse


def _number(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str, str], float]:
    bound = f"{'>' if lo_open else '>='} {lo} and <= {hi}"

    def parse(key: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _fail(key, raw, f"expected a number {bound}") from None
        if value != value or value > hi or value < lo or (lo_open and value == lo):
            raise _fail(key, raw, f"expected a number {bound}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(key: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise _fail(key, raw, f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _boolean(key: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise _fail(key, raw, "expected true or false")


def _text(key: str, raw: str) -> str:
    return raw.strip()


def _host(key: str, raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise _fail(key, raw, "expected a host name or IP address such as 127.0.0.1")
    return value


def _path(key: str, raw: str) -> Path:
    value = raw.strip()
    if not value:
        raise _fail(key, raw, "expected a file path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _url(key: str, raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise _fail(key, raw, "expected an http(s) URL such as https://api.deepseek.com/v1")
    return value


def _secret(key: str, raw: str) -> Secret | None:
    value = raw.strip()
    return Secret(value) if value else None


def _names(key: str, raw: str) -> tuple[str, ...]:
    """A comma- or space-separated list of names, lower case (checked by their user)."""
    return tuple(name.lower() for name in re.split(r"[,\s]+", raw.strip()) if name)


# env key -> (Settings field, parser)
_KEYS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "IB_HOST": ("ib_host", _host),
    "IB_PORT": ("ib_port", _integer(1, 65535)),
    "IB_CLIENT_ID_EXIT_MANAGER": ("exit_manager_client_id", _integer(0, 999_999)),
    "IB_CLIENT_ID_DAY_TRADER": ("day_trader_client_id", _integer(0, 999_999)),
    "TRADING_MODE": ("trading_mode", _choice("paper", "live")),
    "IB_ACCOUNT": ("ib_account", _text),
    "ALLOCATION": ("allocation", _number(0.0, 1.0, lo_open=True)),
    "PROFIT_TARGET_PCT": ("profit_target_pct", _number(0.0, 50.0, lo_open=True)),
    "STOP_LOSS_PCT": ("stop_loss_pct", _number(0.0, 50.0, lo_open=True)),
    "MAX_OPEN_POSITIONS": ("max_open_positions", _integer(1, 100)),
    "MAX_POSITION_USD": ("max_position_usd", _number(0.0, 1e9, lo_open=True)),
    "DAILY_LOSS_LIMIT_PCT": ("daily_loss_limit_pct", _number(0.0, 100.0, lo_open=True)),
    "EOD_FLATTEN_MINUTES": ("eod_flatten_minutes", _number(1.0, 120.0)),
    "EOD_SWEEP_MINUTES": ("eod_sweep_minutes", _number(0.5, 60.0)),
    "STALE_TICK_SECONDS": ("stale_tick_seconds", _number(1.0, 3600.0)),
    "ALLOW_DELAYED_DATA": ("allow_delayed_data", _boolean),
    "DATABASE_PATH": ("database_path", _path),
    "BACKUP_DIR": ("backup_dir", _path),
    "BACKUP_KEEP_DAYS": ("backup_keep_days", _integer(1, 3650)),
    "LOG_DIR": ("log_dir", _path),
    "LOG_LEVEL": (
        "log_level",
        lambda k, r: _choice("debug", "info", "warning", "error")(k, r).upper(),
    ),
    "KILL_SWITCH_FILE": ("kill_switch_file", _path),
    "WATCHLIST_PATH": ("watchlist_path", _path),
    "BARS_DIR": ("bars_dir", _path),
    "CLOCK_FILE": ("clock_file", lambda k, r: _path(k, r) if r.strip() else None),
    "DEEPSEEK_API_KEY": ("deepseek_api_key", _secret),
    "GOOGLE_API_KEY": ("google_api_key", _secret),
    "MASSIVE_API_KEY": ("massive_api_key", _secret),
    "DEEPSEEK_BASE_URL": ("deepseek_base_url", _url),
    "GEMINI_BASE_URL": ("gemini_base_url", _url),
    "DASHBOARD_TOKEN": ("dashboard_token", _secret),
    "ALERT_URLS": ("alert_urls", _secret),
    "ALERTS_OFF": ("alerts_off", _names),
    "ALERT_REPEAT_SECONDS": ("alert_repeat_seconds", _number(0.0, 86_400.0)),
    "ALERT_TIMEOUT_SECONDS": ("alert_timeout_seconds", _number(0.5, 120.0)),
    "ALERT_DISCONNECT_SECONDS": ("alert_disconnect_seconds", _number(0.0, 3600.0)),
    "MASSIVE_REQUESTS_PER_MINUTE": ("massive_requests_per_minute", _integer(0, 100_000)),
    "SCANNER_MAX_DATA_AGE_SECONDS": ("scanner_max_data_age_seconds", _number(1.0, 86_400.0)),
}
# Older names still accepted: Polygon.io was renamed Massive.
_ALIASES = {"POLYGON_API_KEY": "MASSIVE_API_KEY", "GEMINI_API_KEY": "GOOGLE_API_KEY"}


def load_settings(
    environ: Mapping[str, str] | None = None,
    dotenv_path: str | Path | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from `.env` overlaid by the environment, then `overrides` (already typed).

    Raises SettingsError (one line: key, value, what is allowed) on the first bad value, and
    on the first `.env` line that cannot be parsed (file, line number, key when readable).
    """
    env_file = Path(dotenv_path) if dotenv_path is not None else DOTENV_PATH
    merged: dict[str, str] = {}
    if env_file.exists():
        merged.update(read_dotenv(env_file))
    merged.update(os.environ if environ is None else environ)

    for alias, key in _ALIASES.items():
        if not merged.get(key, "").strip() and merged.get(alias, "").strip():
            merged[key] = merged[alias]

    values: dict[str, Any] = {}
    for key, (field_name, parse) in _KEYS.items():
        raw = merged.get(key)
        if raw is not None and (raw.strip() or field_name.endswith("_api_key")):
            values[field_name] = parse(key, raw)
    values.update(overrides)
    return with_overrides(Settings(**values))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The key named in a parse error: an identifier before "=", or an upper-case one before a space
# ("KEY VALUE", a lone "KEY"). Any other word may be a pasted secret: it is never echoed.
_READABLE_KEY = re.compile(
    r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=|(?:export\s+)?([A-Z_][A-Z0-9_]*)(?:\s|$)"
)


def read_dotenv(env_file: Path) -> dict[str, str]:
    """The `KEY=value` pairs of a `.env` file, `${VAR}` expanded as python-dotenv does.

    python-dotenv skips a line it cannot parse, so a typo (`MAX_POSITION_USD="1000`) would
    silently leave the default in force. Raises SettingsError naming the file, the line number
    and, when readable, the key of the first such line; the line's text is never shown (it may
    hold a secret).
    """
    try:
        text = env_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {env_file}: {exc}; fix or delete the file") from exc
    for binding in parse_stream(io.StringIO(text)):
        if _is_unparsable(binding):
            raise _unparsable_line(env_file, binding)
    values = dotenv_values(stream=io.StringIO(text))
    _refuse_misspelt_keys(env_file, values)
    return {k: v for k, v in values.items() if v is not None}


def _refuse_misspelt_keys(env_file: Path, values: Mapping[str, str | None]) -> None:
    """A key that is not a setting but nearly is (MAX_POSITON_USD) would leave the default in
    force as silently as an unparsable line. Keys unlike any setting belong to other programs."""
    known = env_keys()
    for key in values:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
        if close:
            raise SettingsError(
                f"{env_file}: {key} is not a setting, so it would be ignored and the default "
                f"used; did you mean {close[0]}?"
            )


def _is_unparsable(binding: Binding) -> bool:
    if binding.error:
        return True
    # python-dotenv reads a lone word as a key without a value and a key like `$X` as a name:
    # neither sets anything, so for a settings file both are mistakes.
    return binding.key is not None and (
        binding.value is None or not _ENV_NAME.fullmatch(binding.key)
    )


def _unparsable_line(env_file: Path, binding: Binding) -> SettingsError:
    raw = binding.original.string
    statement = raw.lstrip()
    # The statement's own line: python-dotenv counts from the blank lines before it.
    line = binding.original.line + raw[: len(raw) - len(statement)].count("\n")
    first_line = statement.splitlines()[0] if statement else ""
    found = _READABLE_KEY.match(first_line)
    key = (found.group(1) or found.group(2)) if found else None
    quote_hint = " with the quotes closed" if any(q in first_line for q in "\"'") else ""
    if key:
        return SettingsError(
            f"{env_file} line {line}: cannot parse the line for {key}, so it would be ignored "
            f"and the default used; write {key}=value{quote_hint} on one line"
        )
    return SettingsError(
        f"{env_file} line {line}: cannot parse the line, so it would be ignored; write "
        f"KEY=value{quote_hint}, start a comment with #, or delete the line"
    )


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """`settings` with typed `changes` (e.g. from CLI flags), checked like loaded settings.

    Raises SettingsError when the result is inconsistent (e.g. two bots on one client id).
    Paper/live is checked by each program with its --live flag: check_trading_mode.
    """
    updated = replace(settings, **changes)
    _check_consistency(updated)
    return updated


def _check_consistency(s: Settings) -> None:
    if s.exit_manager_client_id == s.day_trader_client_id:
        raise SettingsError(
            f"setting IB_CLIENT_ID_DAY_TRADER={s.day_trader_client_id} is invalid: it must differ "
            f"from IB_CLIENT_ID_EXIT_MANAGER={s.exit_manager_client_id} (IB rejects a duplicate "
            "client id with error 326)"
        )
    if s.eod_sweep_minutes >= s.eod_flatten_minutes:
        raise SettingsError(
            f"setting EOD_SWEEP_MINUTES={s.eod_sweep_minutes} is invalid: it must be smaller than "
            f"EOD_FLATTEN_MINUTES={s.eod_flatten_minutes} (the sweep comes after the flatten)"
        )


def is_paper_account(account: str) -> bool:
    """Whether IB's account id is a paper one (DU...)."""
    return account.upper().startswith(PAPER_ACCOUNT_PREFIX)


def check_trading_mode(
    settings: Settings, live_flag: bool | None, account: str | None = None
) -> None:
    """The one paper/live rule, for every program that connects to IB.

    Live trading needs all of: `--live` on the command line, TRADING_MODE=live (read
    case-insensitively when the settings load), and an account the gateway reports as
    non-paper. A known paper port (4002, 7497) is refused in live mode and a known live port
    (4001, 7496) in paper mode; other ports are allowed in either.
    `live_flag` is whether --live was given; None for a tool that never sends an order (it
    follows TRADING_MODE, and only the ports are checked). `account` is the account the gateway
    reports, None before connecting.
    Raises SettingsError: one line naming what is missing and the fix.
    """
    live = settings.is_live
    if live_flag is True and not live:
        raise SettingsError(
            f"--live needs TRADING_MODE=live, but TRADING_MODE is {settings.trading_mode} (the "
            "default when unset): set TRADING_MODE=live in .env or the environment to trade "
            "real money, or drop --live to trade paper"
        )
    if live_flag is False and live:
        raise SettingsError(
            "TRADING_MODE=live needs --live on the command line: add --live to trade real "
            "money, or set TRADING_MODE=paper to trade paper"
        )
    real_money = "--live and TRADING_MODE=live" if live_flag else "TRADING_MODE=live"
    to_paper = "drop --live and set TRADING_MODE=paper" if live_flag else "set TRADING_MODE=paper"
    to_live = "set TRADING_MODE=live" + (" and add --live" if live_flag is not None else "")
    port = settings.ib_port
    if live and port in PAPER_PORTS:
        raise SettingsError(
            f"port {port} is a paper port but this run trades real money ({real_money}): "
            "point IB_PORT (or --port) at the live gateway, 4001 (IB Gateway) or 7496 (TWS), "
            f"or {to_paper} to trade paper"
        )
    if not live and port in LIVE_PORTS:
        raise SettingsError(
            f"port {port} is a live port but this is paper trading: point IB_PORT (or --port) "
            f"at the paper gateway, 4002 (IB Gateway) or 7497 (TWS), or {to_live} to trade "
            "real money"
        )
    if account is None:
        return
    if not account:
        raise SettingsError(
            "the gateway reports no account, so paper or live cannot be checked: log the "
            "gateway in to its account (or set IB_ACCOUNT) and start again"
        )
    if live and is_paper_account(account):
        raise SettingsError(
            f"account {account} is a paper account but this run trades real money "
            f"({real_money}): log the live gateway in to the live account, or {to_paper} to "
            "trade paper"
        )
    if not live and not is_paper_account(account):
        raise SettingsError(
            f"account {account} is a live (non-paper) account but this is paper trading: "
            f"connect to a gateway logged in to a paper account ({PAPER_ACCOUNT_PREFIX}...), "
            f"or {to_live} to trade real money"
        )


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, loaded once. Raises SettingsError on a bad value."""
    global _cached
    if _cached is None:
        _cached = load_settings()
    return _cached


def set_settings(settings: Settings | None) -> None:
    """Replace the process's settings (programs applying CLI flags, and tests)."""
    global _cached
    _cached = settings


def env_keys() -> list[str]:
    """Every environment key the settings read (documented in .env.example)."""
    return [*_KEYS, *_ALIASES]
