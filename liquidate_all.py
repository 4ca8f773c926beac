"""Emergency flatten: cancel every order, sell every broker position, verify flat.

    python liquidate_all.py --dry-run        # show what it would do, change nothing
    python liquidate_all.py                  # asks for confirmation
    python liquidate_all.py --yes --emergency
    python liquidate_all.py --resume         # lift the entry halt a liquidation left

Steps (failure mode 2): halt new entries first (the database's kill-switch flag, unless
--keep-entries: the day trader's entry guard reads it in the transaction that writes an entry
intent, so no entry can be sent after it); then rounds until IB reports the account flat or
--flat-timeout passes: reqGlobalCancel (every client's orders, protective stops included),
re-read IB's positions, and one marketable order per position (IB is the truth, not the
database rows), each through the intent protocol; wait for the fills and record them and the
closes in the database (reason MANUAL, or EMERGENCY). A position that appears mid-way (an
entry written just before the halt) is sold in the next round. It never sells more than the
position IB reports, never sells from zero, and never plans a round while one of its own orders
may still fill, so it cannot open a short. Entries stay halted until `--resume`.
Exit code 0 when the account is flat, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from core import cli
from core.cli import BadInput
from core.cli import ProgramError as ToolError
from core.clock import get_clock
from core.logs import get_logger
from core.settings import Settings
from ib import liquidation
from ib.liquidation import (
    CANCEL_CONFIRM_S,
    FlattenResult,
    FlattenStep,
    broker_positions,
    cancel_everything,
    execute,
    flatten_order,
    flatten_until_flat,
    plan_flatten,
    record_commissions,
)
from ib_tools import add_connection_args, add_db_arg, open_database, tool_session
from observability import KILL_SWITCH_FLAG, RESUME_ENTRIES, TradingDatabase

TOOL = liquidation.AGENT
log = get_logger(TOOL)
# What tests and scripts reach through this module (the work at IB is ib.liquidation's).
__all__ = [
    "TOOL",
    "FlattenResult",
    "FlattenStep",
    "ToolError",
    "execute",
    "flatten_order",
    "halt_new_entries",
    "main",
    "plan_flatten",
]


def halt_new_entries(db: TradingDatabase, reason: str) -> list[str]:
    """Set the kill-switch flag; returns the orderRefs of entries written before it.

    Those few may still reach IB (their program was between writing the intent and sending
    the order); the flatten loop waits for them. No entry can be written after the flag.
    """
    stamp = db.clock.now().strftime("%Y-%m-%d %H:%M:%S")
    in_flight = db.halt_entries(f"{reason} by {TOOL} at {stamp} New York")
    refs = [intent["order_ref"] for intent in in_flight]
    log.warning("entries_halted", reason=reason, entries_in_flight=refs, lift=RESUME_ENTRIES)
    return refs


def resume(args: argparse.Namespace, settings: Settings) -> int:
    """`--resume`: lift the entry halt (the database's kill-switch flag); no gateway needed."""
    clashing = [f for f in ("yes", "dry_run", "emergency", "keep_entries") if getattr(args, f)]
    if clashing:
        raise BadInput(
            f"--resume only lifts the entry halt; drop --{clashing[0].replace('_', '-')}"
        )
    db = open_database(args, settings)
    was = db.resume_entries()
    if was is None:
        print(f"entries were not halted (no database flag {KILL_SWITCH_FLAG})")
    else:
        log.warning("entries_resumed", was=was)
        print(f"entries resumed: database flag {KILL_SWITCH_FLAG} cleared (was: {was})")
    if settings.kill_switch_file.exists():
        print(
            f"note: the kill-switch file {settings.kill_switch_file} still halts entries; "
            "delete it to allow entries"
        )
    return 0


def confirm(steps: list[FlattenStep]) -> bool:
    try:
        answer = input(f"Cancel ALL orders and flatten {len(steps)} position(s)? Type YES: ")
    except EOFError:
        return False
    return answer.strip() == "YES"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        description="Cancel every order and flatten every IB position (emergency)."
    )
    add_connection_args(parser, TOOL)
    add_db_arg(parser)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument(
        "--emergency", action="store_true", help="record closes as EMERGENCY (default MANUAL)"
    )
    parser.add_argument(
        "--keep-entries",
        action="store_true",
        help="do not halt new entries (the day trader may enter while this flattens)",
    )
    cli.add_seconds_arg(parser, "--fill-wait", 30.0, "time to wait for fills")
    cli.add_seconds_arg(
        parser, "--flat-timeout", 90.0, "cancel/sell rounds until IB reports the account flat"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="only lift the entry halt a liquidation set (database flag); sends nothing",
    )
    return parser


def liquidate(args: argparse.Namespace, settings: Settings) -> int:
    if args.resume:
        return resume(args, settings)
    with tool_session(args, TOOL, settings=settings) as session:
        db, ib, account = session.db, session.ib, session.account
        assert db is not None
        clock = get_clock()
        reason = "EMERGENCY" if args.emergency else "MANUAL"
        steps = liquidation.plan(ib, account)
        working = liquidation.working_orders(ib)
        print(f"account {account}: {len(steps)} position(s), {working} working order(s)")
        plan = [] if args.keep_entries else [f"halt new entries (database flag {KILL_SWITCH_FLAG})"]
        plan.append("reqGlobalCancel (every client's orders)")
        plan += [step.describe() for step in steps]
        plan.append(f"re-read IB's positions, repeat until flat (at most {args.flat_timeout:g} s)")
        for number, line in enumerate(plan, start=1):
            print(f"  {number}. {line}")
        if args.dry_run:
            print("dry run: nothing sent")
            return 0
        if not args.yes and not confirm(steps):
            print("not confirmed: nothing sent")
            return 1
        log.info("liquidation_started", account=account, reason=reason, positions=len(steps))
        record_commissions(ib, db)
        in_flight: list[str] = []
        if not args.keep_entries:
            in_flight = halt_new_entries(db, reason)
            print(f"new entries halted (database flag {KILL_SWITCH_FLAG}); lift: {RESUME_ENTRIES}")
        results, remaining = flatten_until_flat(
            ib,
            db,
            account,
            reason,
            clock,
            fill_wait_s=args.fill_wait,
            timeout_s=args.flat_timeout,
            in_flight=in_flight,
        )
        for result in results:
            status = result.error or f"filled {result.filled:g} @ {result.avg_price:.4f}"
            print(f"  {result.step.describe()}: {status}")
        if not args.keep_entries:
            print(f"new entries stay halted until: {RESUME_ENTRIES}")
        # Anything a bot re-placed while we sold has nothing left to protect.
        cancel_everything(ib, wait_s=CANCEL_CONFIRM_S)
        remaining = remaining or broker_positions(ib, account)
        if remaining:
            print(f"NOT FLAT: {remaining}", file=sys.stderr)
            log.critical("liquidation_incomplete", remaining=remaining)
            return 1
        stale_rows = [row["symbol"] for row in db.get_active_positions()]
        if stale_rows:
            print(
                f"database rows without a broker position (the exit manager reconciles): {stale_rows}"
            )
        print(f"flat: account {account} holds no positions")
        log.info("liquidation_done", account=account, reason=reason, orders=len(results))
        return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_program(TOOL, build_parser(), liquidate, argv)


if __name__ == "__main__":
    sys.exit(main())
