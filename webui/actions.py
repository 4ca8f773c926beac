"""The dashboard's actions, each recorded in the database with who and when.

Halting and resuming entries use the database's kill-switch flag (the day trader's entry
guard reads it in the transaction that writes an entry intent, as for liquidate_all).
Flattening one position asks the exit manager, which owns the symbol's protective orders,
to sell it (a request flag); flattening everything runs `liquidate_all.py --yes` itself,
the one emergency path, so the dashboard never sends an order of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.logs import get_logger
from core.settings import PROJECT_ROOT, Settings
from observability import TradingDatabase

log = get_logger("dashboard")
LIQUIDATE_TIMEOUT_S = 300.0


class ActionRefused(ValueError):
    """The action cannot be done now; the message says why (shown to the person)."""


@dataclass
class Actions:
    db: TradingDatabase
    settings: Settings
    env: Mapping[str, str] = field(default_factory=dict)  # for liquidate_all (ports, files)
    _liquidation: threading.Thread | None = None

    def halt_entries(self, who: str) -> dict[str, object]:
        action_id = self.db.record_operator_action(who, "halt_entries")
        in_flight = self.db.halt_entries(f"halted from the dashboard by {who}")
        outcome = f"entries halted; {len(in_flight)} entry order(s) were already in flight"
        self.db.set_operator_action_outcome(action_id, outcome)
        log.warning("entries_halted", who=who, source="dashboard", in_flight=len(in_flight))
        return {"id": action_id, "outcome": outcome}

    def resume_entries(self, who: str) -> dict[str, object]:
        action_id = self.db.record_operator_action(who, "resume_entries")
        held = self.db.resume_entries()
        outcome = f"entries resumed (halt was: {held})" if held else "entries were not halted"
        self.db.set_operator_action_outcome(action_id, outcome)
        log.warning("entries_resumed", who=who, source="dashboard", halt_was=held)
        return {"id": action_id, "outcome": outcome}

    def flatten_one(self, who: str, symbol: str) -> dict[str, object]:
        symbol = symbol.strip().upper()
        if not self.db.request_exit(symbol, who):
            raise ActionRefused(f"{symbol} is not an open position")
        action_id = self.db.record_operator_action(
            who, "flatten", symbol, "asked the exit manager to sell it now (MANUAL)"
        )
        log.warning("flatten_requested", who=who, symbol=symbol)
        return {"id": action_id, "outcome": "the exit manager sells it at its next look"}

    def liquidate_argv(self) -> list[str]:
        argv = [sys.executable, str(PROJECT_ROOT / "liquidate_all.py"), "--yes"]
        argv += ["--db", str(self.db.path)]
        return argv + (["--live"] if self.settings.is_live else [])

    def flatten_all(self, who: str) -> dict[str, object]:
        """Start liquidate_all (in the background); its outcome is recorded when it ends."""
        if self._liquidation is not None and self._liquidation.is_alive():
            raise ActionRefused("a liquidation is already running")
        action_id = self.db.record_operator_action(who, "flatten_all", None, "running")
        log.warning("liquidation_requested", who=who, source="dashboard")
        self._liquidation = threading.Thread(
            target=self._liquidate, args=(action_id,), name="liquidate_all", daemon=True
        )
        self._liquidation.start()
        return {"id": action_id, "outcome": "liquidate_all.py is running"}

    def _liquidate(self, action_id: int) -> None:
        env = {**os.environ, **self.env, "DATABASE_PATH": str(self.db.path)}
        try:
            done = subprocess.run(
                self.liquidate_argv(),
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=LIQUIDATE_TIMEOUT_S,
            )
            lines = [*done.stdout.splitlines(), *done.stderr.splitlines()]
            last = next((line.strip() for line in reversed(lines) if line.strip()), "")
            outcome = f"liquidate_all exit {done.returncode}: {last}"
        except (OSError, subprocess.SubprocessError) as exc:
            outcome = f"liquidate_all did not run: {exc}"
        self.db.set_operator_action_outcome(action_id, outcome[:500])
        log.warning("liquidation_finished", source="dashboard", outcome=outcome[:500])

    def wait_liquidation(self, timeout: float) -> None:
        if self._liquidation is not None:
            self._liquidation.join(timeout)
