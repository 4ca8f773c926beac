"""Filter the bots' JSON logs (logs/<bot>_run_*.json) by bot, level, event, symbol and time.

    python view_logs.py --bot exit_manager --level warning
    python view_logs.py --event order_ --symbol AAPL --since 09:30
    python view_logs.py --since -15m --follow
    python view_logs.py --dir sim_runs/2026-11-24_7/logs --json

Lines are shown in New York exchange time: simulated time for a simulated day's logs (each
line's `exchange_time`), so `--since 09:30` finds a simulated 09:30. Times given without a
zone are New York time; HH:MM means that time on the last trading day the logs reach.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from core import cli
from core.cli import ProgramError as ToolError
from core.clock import NEW_YORK
from core.logs import printable
from core.settings import Settings

TOOL = "view_logs"
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_BASE_KEYS = ("ts", "exchange_time", "level", "bot", "event", "logger")
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")


def parse_when(text: str, now: datetime | None = None, day: date | None = None) -> datetime:
    """'-15m' (before `now`), 'HH:MM[:SS]' (New York, on `day`, default now's date), or an
    ISO time (no zone = New York)."""
    now = now or datetime.now(NEW_YORK)
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[relative[2]]
        return now - timedelta(**{unit: float(relative[1])})
    for pattern in ("%H:%M", "%H:%M:%S"):
        try:
            clock_time = datetime.strptime(text, pattern).time()
        except ValueError:
            continue
        return datetime.combine(day or now.astimezone(NEW_YORK).date(), clock_time, NEW_YORK)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ToolError(
            f"time {text!r} not understood; use HH:MM, YYYY-MM-DDTHH:MM or -15m"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=NEW_YORK)


@dataclass(frozen=True)
class LogFilter:
    bots: frozenset[str] = frozenset()
    min_level: int = 0
    event: str | None = None  # substring, or a glob when it has * or ?
    symbol: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.bots and record.get("bot") not in self.bots:
            return False
        if LEVELS.get(str(record.get("level", "")).upper(), 0) < self.min_level:
            return False
        if self.event:
            event = str(record.get("event", ""))
            if any(c in self.event for c in "*?"):
                if not fnmatch.fnmatchcase(event, self.event):
                    return False
            elif self.event not in event:
                return False
        if self.symbol and str(record.get("symbol", "")).upper() != self.symbol:
            return False
        if self.since or self.until:
            stamp = record_time(record)
            if stamp is None:
                return False
            if self.since and stamp < self.since:
                return False
            if self.until and stamp > self.until:
                return False
        return True


def record_time(record: dict[str, Any]) -> datetime | None:
    """When the line happened in exchange time (`exchange_time`: simulated in a simulation),
    else its wall time `ts` (lines written before exchange_time existed); None if neither."""
    for key, zone in (("exchange_time", NEW_YORK), ("ts", UTC)):
        try:
            stamp = datetime.fromisoformat(str(record[key]))
        except (KeyError, ValueError):
            continue
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=zone)
    return None


def last_log_day(files: Sequence[Path]) -> date | None:
    """The New York date of the newest line of the newest file: what HH:MM refers to."""
    for path in reversed(files):
        try:
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - 65536))
                tail = handle.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(tail):
            record = parse_line(line)
            stamp = record_time(record) if record is not None else None
            if stamp is not None:
                return stamp.astimezone(NEW_YORK).date()
    return None


def parse_line(line: str) -> dict[str, Any] | None:
    """One JSON log line as a dict; None for a blank, partial or foreign line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def format_record(record: dict[str, Any]) -> str:
    """`HH:MM:SS.mmm LEVEL bot event key=value ...` in New York time."""
    stamp = record_time(record)
    shown = stamp.astimezone(NEW_YORK).strftime("%H:%M:%S.%f")[:-3] if stamp else "--:--:--"
    extras = " ".join(
        f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
        for k, v in record.items()
        if k not in _BASE_KEYS
    )
    line = (
        f"{shown} {record.get('level', '')!s:<7} {record.get('bot', '?')} {record.get('event', '')}"
    )
    # A logged value never starts a line of its own (a symbol with a newline once forged one).
    return printable(f"{line} {extras}" if extras else line)


def log_files(log_dir: Path) -> list[Path]:
    """Run files and their rotations (`*_run_*.json`, `*_run_*.json.1`...), oldest first."""
    files = [*log_dir.glob("*_run_*.json"), *log_dir.glob("*_run_*.json.[0-9]*")]
    return sorted(set(files), key=lambda p: (p.stat().st_mtime, p.name))


def read_records(files: Iterable[Path], log_filter: LogFilter) -> list[dict[str, Any]]:
    """Every matching record of `files`, in time order."""
    found = []
    for path in files:
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    record = parse_line(line)
                    if record is not None and log_filter.matches(record):
                        found.append(record)
        except OSError:
            continue  # rotated away while reading
    return sorted(found, key=lambda r: str(r.get("ts", "")))


@dataclass
class Follower:
    """Tails every run file of a folder, including files that appear later."""

    log_dir: Path
    offsets: dict[Path, int] = field(default_factory=dict)
    partial: dict[Path, str] = field(default_factory=dict)

    def skip_existing(self) -> None:
        for path in self.log_dir.glob("*_run_*.json"):
            self.offsets[path] = path.stat().st_size

    def poll(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.log_dir.glob("*_run_*.json")):
            offset = self.offsets.get(path, 0)
            try:
                size = path.stat().st_size
                if size < offset:  # rotated: the file started again
                    offset = 0
                with path.open(encoding="utf-8", errors="replace") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    self.offsets[path] = handle.tell()
            except OSError:
                continue
            text = self.partial.pop(path, "") + chunk
            lines = text.split("\n")
            if lines and lines[-1]:
                self.partial[path] = lines[-1]  # a line still being written
            for line in lines[:-1]:
                record = parse_line(line)
                if record is not None:
                    yield record


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(description="Filter and follow the bots' JSON logs.")
    parser.add_argument("--dir", type=Path, help="log folder (default LOG_DIR)")
    parser.add_argument("--bot", action="append", help="bot name (repeat or comma-separate)")
    parser.add_argument("--level", help="minimum level: debug, info, warning, error, critical")
    parser.add_argument("--event", help="event name: substring, or glob with * and ?")
    parser.add_argument("--symbol", help="only lines about this symbol")
    parser.add_argument(
        "--since",
        help="from: HH:MM (New York, on the logs' last trading day), ISO time, or -15m / -2h",
    )
    parser.add_argument("--until", help="to: same forms as --since")
    parser.add_argument("--limit", type=int, help="only the last N matching lines")
    parser.add_argument("--json", action="store_true", help="print the raw JSON lines")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    parser.add_argument("--poll", type=float, default=0.5, help="--follow: seconds between reads")
    return parser


def filter_from_args(args: argparse.Namespace, day: date | None = None) -> LogFilter:
    """The filter of the flags; HH:MM in --since/--until is on `day` (default today)."""
    bots = frozenset(b.strip() for arg in args.bot or [] for b in arg.split(",") if b.strip())
    min_level = 0
    if args.level:
        level = args.level.upper()
        if level not in LEVELS:
            raise ToolError(
                f"--level {args.level!r} unknown; use one of {', '.join(LEVELS).lower()}"
            )
        min_level = LEVELS[level]
    return LogFilter(
        bots=bots,
        min_level=min_level,
        event=args.event,
        symbol=args.symbol.upper() if args.symbol else None,
        since=parse_when(args.since, day=day) if args.since else None,
        until=parse_when(args.until, day=day) if args.until else None,
    )


def view(args: argparse.Namespace, settings: Settings) -> int:
    if not (args.poll > 0 and args.poll != float("inf")):
        raise ToolError(f"--poll {args.poll} is invalid: expected seconds > 0, e.g. --poll 0.5")
    log_dir = args.dir or settings.log_dir
    if not log_dir.is_dir():
        raise ToolError(f"log folder {log_dir} does not exist; pass --dir or set LOG_DIR")
    files = log_files(log_dir)
    if not files and not args.follow:
        raise ToolError(
            f"log folder {log_dir} holds no run files (*_run_*.json); pass the --dir of a run"
        )
    log_filter = filter_from_args(args, day=last_log_day(files))
    show = (lambda r: json.dumps(r)) if args.json else format_record
    records = read_records(files, log_filter)
    if args.limit is not None:
        records = records[-args.limit :] if args.limit > 0 else []
    for record in records:
        print(show(record), flush=False)
    sys.stdout.flush()
    if not args.follow:
        return 0
    follower = Follower(log_dir)
    follower.skip_existing()
    while True:
        time.sleep(args.poll)
        for record in follower.poll():
            if log_filter.matches(record):
                print(show(record), flush=True)


def main(argv: list[str] | None = None) -> int:
    # No run file of its own: it reads the log folder.
    return cli.run_program(TOOL, build_parser(), view, argv, logs=False)


if __name__ == "__main__":
    sys.exit(main())
