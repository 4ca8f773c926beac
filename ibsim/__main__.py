"""python -m ibsim: run the simulated IB gateway until interrupted.

    python -m ibsim --port 4002 --symbols 50 --seed 7 --speed 60 \
        --date 2026-11-24 --start 09:25 --clock-file logs/sim_clock.json --control-port 4100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import date, datetime, time

from core.shutdown import install_stop_handlers
from ibsim.config import ConfigError, GatewayConfig


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _time(text: str) -> time:
    try:
        return datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time (HH:MM, New York)") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ibsim",
        description="Simulated IB Gateway (TWS API server version 176) on 127.0.0.1.",
    )
    d = GatewayConfig()
    p.add_argument("--port", type=int, default=d.port, help="API port (0 = any free port)")
    p.add_argument("--account", default=d.account, help="paper account id")
    p.add_argument("--symbols", type=int, default=d.symbols, help="synthetic universe size")
    p.add_argument(
        "--symbol-names", default="", help="comma-separated tickers (overrides --symbols)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--replay",
        default=None,
        help="recorded bars: a CSV/Parquet file or a directory of them "
        "(columns symbol,time,open,high,low,close,volume[,prev_close]); the symbols are the data's",
    )
    p.add_argument(
        "--bar-seconds",
        type=int,
        default=None,
        help="the replay's bar size in seconds (default: the data's typical spacing)",
    )
    p.add_argument(
        "--spread",
        type=float,
        default=None,
        help="a fixed bid-ask spread in dollars for every symbol (default: from price and "
        "liquidity, about 0.01 on a liquid large cap; see ibsim.market.spread_ticks)",
    )
    p.add_argument(
        "--date",
        type=_date,
        default=None,
        help="trading date (default: the replay's day, else today or the next session)",
    )
    p.add_argument("--start", type=_time, default=d.start, help="simulated start time, New York")
    p.add_argument("--speed", type=float, default=d.speed, help="simulated seconds per second")
    p.add_argument(
        "--steps-per-second",
        type=float,
        default=d.steps_per_second,
        help="engine steps per real second; a step moves the market to the simulated now, "
        "crossing speed/steps simulated seconds (15 at --speed 300 and 20 steps): every one "
        "of those seconds is matched and streamed for symbols with orders or a position",
    )
    p.add_argument("--clock-file", default=None, help="publish the clock here (bots: CLOCK_FILE)")
    p.add_argument("--control-port", type=int, default=None, help="JSON/HTTP control port")
    p.add_argument(
        "--no-subscription",
        action="store_true",
        help="answer 354/162/420 like an unsubscribed account",
    )
    p.add_argument(
        "--delayed-lag",
        type=float,
        default=d.delayed_data_lag_s,
        help="simulated seconds delayed quotes lag the market (IB: 900)",
    )
    p.add_argument("--pacing", action="store_true", help="enforce historical data pacing (162)")
    p.add_argument("--allow-shorting", action="store_true", help="accept sells below zero shares")
    p.add_argument("--no-buying-power-check", action="store_true")
    p.add_argument("--cash", type=float, default=d.initial_cash, help="starting cash")
    p.add_argument("--commission-per-share", type=float, default=d.commission_per_share)
    p.add_argument("--commission-min", type=float, default=d.commission_min)
    p.add_argument("--slippage-ticks", type=int, default=d.slippage_ticks)
    p.add_argument("--partial-fills", action="store_true", help="fill at most the displayed size")
    p.add_argument("--master-client-id", type=int, default=None)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.error = _fail  # type: ignore[method-assign]
    return p


def _fail(message: str) -> None:
    print(f"ibsim: error: {message}", file=sys.stderr)
    sys.exit(2)


def config_from_args(argv: list[str] | None = None) -> tuple[GatewayConfig, str]:
    opts = build_parser().parse_args(argv)
    names = tuple(n.strip().upper() for n in opts.symbol_names.split(",") if n.strip()) or None
    try:
        config = GatewayConfig(
            port=opts.port,
            account=opts.account,
            symbols=opts.symbols,
            symbol_names=names,
            seed=opts.seed,
            replay_path=opts.replay,
            bar_seconds=opts.bar_seconds,
            spread=opts.spread,
            trading_date=opts.date,
            start=opts.start,
            speed=opts.speed,
            steps_per_second=opts.steps_per_second,
            clock_file=opts.clock_file,
            control_port=opts.control_port,
            market_data_subscribed=not opts.no_subscription,
            delayed_data_lag_s=opts.delayed_lag,
            pacing=opts.pacing,
            no_shorting=not opts.allow_shorting,
            check_buying_power=not opts.no_buying_power_check,
            initial_cash=opts.cash,
            commission_per_share=opts.commission_per_share,
            commission_min=opts.commission_min,
            slippage_ticks=opts.slippage_ticks,
            partial_fills=opts.partial_fills,
            master_client_id=opts.master_client_id,
        )
        config.resolved_date()
    except ConfigError as exc:
        _fail(str(exc))
    return config, opts.log_level


async def _serve(config: GatewayConfig, market) -> None:  # type: ignore[no-untyped-def]
    from ibsim.server import SimulatedGateway

    gateway = SimulatedGateway(config, market)
    await gateway.start()
    print(
        f"ibsim: listening on 127.0.0.1:{gateway.port} account {config.account} "
        f"date {gateway.trading_date} speed {config.speed:g}"
        + (f" control {gateway.control_port}" if gateway.control_port else ""),
        flush=True,
    )
    stop = asyncio.Event()
    install_stop_handlers(asyncio.get_running_loop(), stop.set)
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    config, level = config_from_args(argv)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ibsim.server import build_market

    try:  # before serving: a bad replay is one line, not a traceback from the event loop
        market = build_market(config)
    except ValueError as exc:
        _fail(str(exc))
    try:
        asyncio.run(_serve(config, market))
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{config.port}: {exc}")
    except ConfigError as exc:
        _fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
