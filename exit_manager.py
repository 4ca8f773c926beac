"""Exit manager: protects every open long position at IB and closes it (GitHub issue 5).

    python exit_manager.py                # run (paper); --once: reconcile, print, exit
    python exit_manager.py --standby      # wait, ready to take over the moment the running one dies
    python exit_manager.py --help

The rules and the per-symbol state live in `trading.exits` / `trading.reconcile` (pure); the
I/O pieces in `bots/exit_*.py` (broker queries, reconciliation, protection, selling, fills,
quotes, the watch loop); `ExitManager` here wires them to one IB connection (client id 10)
and the database. One exit owner per symbol: every SELL goes through
`Selling.exit_locked` or `Protection.protect_locked` under the symbol's lock. An exit first
moves the working protective STP through the market (one message; it already sells exactly
the held quantity, in its OCA group); otherwise our working sells are cancelled *and
confirmed* and it sells the broker's fresh quantity, never when it is <= 0 (failure mode 2).
The day trader's kill switch is never read here (failure mode 15).

One exit manager per database: it holds `<db>.exit_manager.lock` (core.instance_lock) while
it runs, and a second one refuses to start. A `--standby` one pays everything slow (imports,
settings, logs, the database, its objects) up front, then waits on that lock without
connecting, beating or sending anything; the kernel hands it the lock when the holder dies
(kill -9 too), and it goes on as a normal start: connect, reconcile, protect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bots.exit_broker import ExitBroker
from bots.exit_fills import ExitFills
from bots.exit_parts import AGENT, BROKER_TIMEOUT_S, ExitParts, ReconcileError, blocked_flag
from bots.exit_protection import Protection
from bots.exit_quotes import QuoteWatch
from bots.exit_reconcile import Reconciler
from bots.exit_selling import Selling
from bots.exit_tasks import SymbolTasks
from bots.exit_watch import ExitWatch
from core import cli
from core.clock import MarketClock, get_clock, set_clock
from core.heartbeats import EXIT_MANAGER_BEAT_S
from core.instance_lock import InstanceLock, lock_path_for
from core.logs import get_logger
from core.settings import (
    Settings,
    check_trading_mode,
    load_settings,
)
from core.shutdown import install_stop_handlers
from ib import convert
from ib.fills import follow_fills
from ib.intents import IntentOrders, follow_order_statuses
from ib.positions import follow_positions
from ib.session import BrokerSession
from observability import DatabaseError, Mark, TradingDatabase
from trading.exits import ExitBook, ExitConfig
from trading.model import BrokerPosition
from trading.reconcile import format_table, protection_table

__all__ = ["AGENT", "ExitManager", "ReconcileError", "blocked_flag", "main"]
log = get_logger(AGENT)


class ExitManager:
    """Wires the exit pieces to one IB connection (client id 10) and the shared database."""

    def __init__(
        self,
        session: BrokerSession,
        db: TradingDatabase,
        config: ExitConfig,
        clock: MarketClock,
        *,
        stream_quotes: bool = True,
    ) -> None:
        self.session = session
        self.ib = session.ib
        self.db = db
        self.config = config
        self.clock = clock
        # Write-behind: IB's events never wait on an fsync on the exit path.
        self.orders = IntentOrders(
            self.ib, db, AGENT, query_timeout=BROKER_TIMEOUT_S, write_behind=True
        )
        self.book = ExitBook(config)
        parts = self.parts = ExitParts(
            session, db, config, clock, self.orders, self.book, stream_quotes=stream_quotes
        )
        parts.beat = self._beat
        parts.broker = self.broker = ExitBroker(parts)
        parts.reconciler = self.reconciler = Reconciler(parts)
        parts.tasks = self.tasks = SymbolTasks(parts, self.reconciler.sync_symbol)
        parts.fills = self.fills = ExitFills(parts)
        parts.protection = self.protection = Protection(parts)
        parts.selling = self.selling = Selling(parts)
        parts.quotes = self.quotes = QuoteWatch(parts)
        parts.watch = self.watch = ExitWatch(parts)
        self._beats_made = self._beat_written = 0  # a queued beat never overwrites a later one
        session.connected_handlers.append(self.reconciler.reconcile)
        session.resubscribe_handlers.append(self.quotes.resubscribe)
        self.ib.positionEvent += self.broker.pulse  # any position event wakes the waits
        follow_positions(self.ib, lambda: session.account, self._on_position)
        follow_fills(self.ib, clock.now, self.fills.on_exec, self.fills.on_commission)
        follow_order_statuses(self.ib, self.fills.on_order_status)
        self.ib.errorEvent += self._on_error
        self.ib.disconnectedEvent += self._on_disconnected

    @property
    def reconciled(self) -> bool:
        return self.parts.reconciled

    @property
    def state(self) -> str:
        return self.parts.state

    # -- IB's connection events ----------------------------------------------------------
    def _on_position(self, position: BrokerPosition, con_id: int) -> None:
        state = self.book[position.symbol]
        state.con_id = con_id
        if state.seen_quantity == position.quantity:
            return  # a repeat (every positions request replays them)
        state.seen_quantity = position.quantity
        # Also while reconciling: a fill after its positions snapshot is seen only here, and
        # the replays that follow are deduplicated above. The worker waits for the end of
        # the reconciliation, which reschedules every dirty symbol.
        self.tasks.schedule(state.symbol)

    def _on_error(self, req_id: int, code: int, message: str, contract: object = None) -> None:
        self.broker.pulse()
        if code == 1100:
            self.parts.reconciled = False  # the 1101/1102 handler reconciles again
            self.broker.link_lost.set()
            self._beat()  # no new fill would be protected now: entries wait

    def _on_disconnected(self) -> None:
        self.parts.reconciled = False
        self.broker.link_lost.set()
        for state in self.book:
            state.seen_quantity = None
        self.quotes.dropped()
        self.broker.pulse()
        if not self.parts.stopping.is_set():
            self._beat()

    # -- heartbeat -----------------------------------------------------------------------
    def _beat(self, detail: str | None = None, *, behind: bool = False) -> None:
        """Write our heartbeat: now (a state change the day trader must see at once), or with
        `behind` on the intent writer's thread, so another process holding the database
        never stalls the event loop, and with it an exit, for a routine beat."""
        if self.parts.reconciled:
            state = "DEGRADED" if self._degraded() else "RECONCILED"
        elif self.parts.state == "RECONCILED":
            state = "DEGRADED"  # was reconciled: now disconnected or in a 1100 outage
        else:
            state = self.parts.state
        held = self.book.held()
        if detail is None:
            detail = f"held={len(held)} faults={len(self.book.quote_faults())}"
        # The last prices of held symbols ride on the beat: the dashboard's unrealised P&L.
        marks = [
            Mark(symbol, quote.last, quote.time, quote.data_type)
            for symbol, quote in self.book.quotes().items()
            if symbol in held and math.isfinite(quote.last)
        ]
        self._beats_made += 1
        made = self._beats_made

        def write() -> None:  # under the writer's lock, in either thread
            if made < self._beat_written:
                return  # a later beat (a state change written at once) is already in
            self._beat_written = made
            try:
                self.db.beat(AGENT, state, detail, marks=marks)
            except DatabaseError as exc:
                log.error("heartbeat_failed", error=str(exc))

        if behind and self.orders.writer is not None:
            self.orders.writer.submit(write)
            return
        with self.orders.exclusive():
            write()

    def _degraded(self) -> bool:
        return self.book.degraded() or not self.ib.isConnected()

    async def _heartbeat(self) -> None:
        stopping = self.parts.stopping
        while not stopping.is_set():
            self._beat(behind=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), EXIT_MANAGER_BEAT_S)

    # -- running -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        log.warning("stop_requested", action="server-side protection stays at IB")
        self.parts.stopping.set()

    async def run(self) -> int:
        """Connect (retrying), then protect until stopped. Returns the exit code."""
        self._beat("connecting")
        heartbeat = self.tasks.spawn(self._heartbeat())
        try:
            connect = asyncio.ensure_future(self.session.connect())
            stop = asyncio.ensure_future(self.parts.stopping.wait())
            await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not connect.done():
                connect.cancel()
            elif connect.exception() is not None:
                raise connect.exception()  # type: ignore[misc]
            if not self.parts.stopping.is_set():
                await self.watch.run()
            return 0
        finally:
            await self.shutdown()
            heartbeat.cancel()

    async def run_once(self, attempts: int = 3) -> int:
        """Reconcile once, print the protection table, exit: 0 reconciled, 1 not.

        Raises SettingsError (never retried) when the gateway's account does not match the mode.
        """
        try:
            if not await self.session.connect(attempts=attempts) or not self.reconciled:
                print("exit_manager: reconciliation did not complete; see the log", file=sys.stderr)
                return 1
            # Let IB acknowledge what reconciliation placed before reading it back.
            await self.broker.wait_until(
                lambda: all(t.orderStatus.status != "PendingSubmit" for t in self.ib.openTrades()),
                BROKER_TIMEOUT_S,
            )
            print(format_table(self.protection_rows()))
            return 0
        finally:
            await self.shutdown()

    def protection_rows(self) -> list[dict[str, Any]]:
        ours = [convert.working_order(t) for t in self.ib.openTrades()]
        return protection_table(self.book.held().values(), ours, self.session.client_id)

    async def shutdown(self) -> None:
        """Stop our tasks and disconnect; orders at IB (the protection) stay."""
        self.parts.stopping.set()
        await self.tasks.cancel_all()
        await asyncio.to_thread(self.orders.flush)
        self.parts.state = "STOPPED"
        self.parts.reconciled = False
        with contextlib.suppress(DatabaseError):
            self.db.beat(AGENT, "STOPPED", "clean shutdown; server-side protection left at IB")
        await self.session.close()


# -- command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="exit_manager.py",
        description="Protect every open position at IB: OCA target + stop, bot stop, EOD flatten.",
    )
    cli.add_gateway_args(parser, None, "IB client id (default 10)")
    parser.add_argument("--db", default=None, help="database file (default DATABASE_PATH)")
    parser.add_argument("--once", action="store_true", help="reconcile, print the table, exit")
    parser.add_argument(
        "--live", action="store_true", help="trade real money (also needs TRADING_MODE=live)"
    )
    cli.add_seconds_arg(parser, "--retry-seconds", 30.0, "real time between reconnect attempts")
    parser.add_argument("--backstop-gap-pct", type=cli.ranged(float, 0.0, 10.0), default=None,
                        help="server STP this many %% below the bot stop (default 0.5)")  # fmt: skip
    parser.add_argument("--tif", choices=("GTC", "DAY"), default=None, help="protective order tif")
    parser.add_argument(
        "--standby",
        action="store_true",
        help="start ready but idle (no IB, no heartbeat); take over when the running one stops",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the command line on top. Raises SettingsError."""
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["ib_host"] = args.host
    if args.port:
        overrides["ib_port"] = args.port
    if args.client_id is not None:
        overrides["exit_manager_client_id"] = args.client_id
    if args.db:
        overrides["database_path"] = Path(args.db).expanduser().resolve()
    settings = load_settings(**overrides)
    check_trading_mode(settings, args.live)
    return settings


def exit_config_from_args(args: argparse.Namespace, settings: Settings) -> ExitConfig:
    """The exit rules' settings with the command line on top. Raises BadInput."""
    try:
        config = ExitConfig.from_settings(settings)
        if args.backstop_gap_pct is not None:
            config = replace(config, backstop_gap_pct=args.backstop_gap_pct)
        if args.tif:
            config = replace(config, protective_tif=args.tif)
    except ValueError as exc:
        raise cli.BadInput(str(exc)) from None
    if args.standby and args.once:
        raise cli.BadInput("--standby waits to take over a running exit manager: drop --once")
    return config


def instance_lock(settings: Settings) -> InstanceLock:
    """The one-exit-manager-per-database lock beside the database."""
    return InstanceLock(lock_path_for(settings.database_path, AGENT))


def refuse_second_instance(lock: InstanceLock) -> None:
    """Take `lock` now. Raises SetupError naming the running exit manager when it is held."""
    if not lock.try_acquire():
        holder = lock.holder_pid()
        raise cli.SetupError(
            f"another exit manager (pid {holder or 'unknown'}) already runs on this database "
            f"(lock {lock.path}); stop it first, or pass --standby to take over when it stops"
        )


class StandbyStopped(Exception):
    """A stop (Ctrl+C, termination) reached a standby that had not taken over."""


def wait_to_take_over(lock: InstanceLock) -> bool:
    """Block until this standby holds `lock` (True: take over) or is told to stop (False).

    Nothing is connected or written meanwhile: to IB and to the day trader's entry gate
    (the heartbeat row) a standby does not exist until it holds the lock."""

    def stop(_signum: int, _frame: object) -> None:
        raise StandbyStopped

    stops = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s]
    previous = {sig: signal.signal(sig, stop) for sig in stops}
    log.info("standby_waiting", pid=os.getpid(), lock=str(lock.path), holder_pid=lock.holder_pid())
    try:
        lock.wait()
    except StandbyStopped:
        log.info("standby_stopped", action="never took over; nothing was sent")
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.warning("standby_taking_over", pid=os.getpid(), lock=str(lock.path))
    return True


def manage_exits(args: argparse.Namespace, settings: Settings) -> int:
    """Protect and close positions until stopped (--once: one reconciliation)."""
    config = exit_config_from_args(args, settings)
    clock = get_clock(settings.clock_file) if settings.clock_file else get_clock()
    set_clock(clock)
    db = TradingDatabase(settings.database_path, clock=clock)
    db.schema_version()  # a database that cannot be used: one line, before connecting
    lock = instance_lock(settings)
    if not args.standby:
        refuse_second_instance(lock)  # before connecting: client id 10 is the running one's
    try:
        return asyncio.run(_run(settings, db, config, clock, args, lock))
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    # A settings or database error (a paper/live account mismatch at connect too) is exit
    # code 2, never retried.
    return cli.run_program(
        AGENT, build_parser(), manage_exits, argv, load=settings_from_args, console=True,
        setup_exit=2,
    )  # fmt: skip


async def _run(settings: Any, db: TradingDatabase, config: ExitConfig, clock: MarketClock,
               args: argparse.Namespace, lock: InstanceLock) -> int:  # fmt: skip
    session = BrokerSession(
        settings, settings.exit_manager_client_id, AGENT, retry_seconds=args.retry_seconds
    )
    manager = ExitManager(session, db, config, clock, stream_quotes=not args.once)
    # The loop is idle while a standby blocks here: nothing of ours is scheduled yet.
    if args.standby and not wait_to_take_over(lock):
        return 0
    if args.once:
        return await manager.run_once()
    install_stop_handlers(asyncio.get_running_loop(), manager.request_stop)
    return await manager.run()


if __name__ == "__main__":
    sys.exit(main())
