"""The order engine: accepts, modifies, cancels and matches orders for the shared account.

It owns every order of every client and emits IB's events through a `Router`: order events
only to the client that placed the order (and the master client), positions to position
subscribers, portfolio and account values to account subscribers.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ibsim import messages as msg
from ibsim.account import Account
from ibsim.orders import (
    ORDER_TYPES,
    STOP_TYPES,
    TIFS,
    Execution,
    OrderState,
    SimOrder,
    available_size,
    commission_for,
    fill_price,
    is_triggered,
    update_trail,
)
from ibsim.requests import ExecutionsRequest, OrderRequest, RequestError

log = logging.getLogger("ibsim.engine")

# permIds are unique in the process, and across process restarts in practice (time based).
_PERM_IDS = itertools.count(1_000_000_000 + (int(time.time()) % 1_000_000) * 1000)
# Order ids never go backwards for an account within the process (gateway restarts included).
_ORDER_ID_FLOOR: dict[str, int] = {}


class Router(Protocol):
    def to_order_owner(self, client_id: int, data: bytes) -> None: ...

    def to_position_subscribers(self, data: bytes) -> None: ...

    def to_account_subscribers(self, data: bytes) -> None: ...


class MarketView(Protocol):
    """What the engine needs from ibsim.market.Market."""

    def quote(self, symbol: str): ...  # type: ignore[no-untyped-def]


@dataclass(frozen=True)
class EngineOptions:
    account_id: str
    no_shorting: bool = True
    check_buying_power: bool = True
    commission_per_share: float = 0.005
    commission_min: float = 1.0
    slippage_ticks: int = 0
    partial_fills: bool = False


@dataclass(frozen=True)
class TradingHours:
    """Epochs of the simulated day: extended hours [pre_open, post_close), RTH [open, close)."""

    pre_open: float
    open: float
    close: float
    post_close: float


class OrderEngine:
    def __init__(
        self,
        options: EngineOptions,
        account: Account,
        market: MarketView,
        symbols: dict,  # symbol -> SymbolSpec
        hours: TradingHours,
        router: Router,
        first_order_id: int = 1,
    ) -> None:
        self.options = options
        self.account = account
        self.market = market
        self.symbols = symbols
        self.hours = hours
        self.router = router
        self.orders: dict[tuple[int, int], SimOrder] = {}
        self.working: dict[str, list[SimOrder]] = {}
        self._exec_seq = itertools.count(1)
        floor = _ORDER_ID_FLOOR.get(options.account_id, 0)
        self._next_order_id = max(first_order_id, floor)
        self.reject_next: list[tuple[int | None, str]] = []  # fault hook: (client_id, reason)
        # Fault hook: the next modification (of that client) is refused; the order keeps working.
        self.refuse_next_modification: list[tuple[int | None, str]] = []
        # Fault hook (hold_cancels): client ids whose cancels wait (None: every client), and
        # the orders waiting in PENDING_CANCEL until release_cancels.
        self.hold_cancels_of: set[int | None] = set()
        self.held_cancels: list[SimOrder] = []
        # The quote being matched per symbol while a step walks the seconds it crosses (the
        # market itself is still at the step's start); set and cleared by the server's step.
        self.path_quotes: dict[str, object] = {}

    # -- ids ------------------------------------------------------------------------
    def next_valid_id(self) -> int:
        """A fresh id above every id issued or used; strictly increasing between calls."""
        issued = self._next_order_id
        self._bump_ids(issued + 1)
        return issued

    def _bump_ids(self, value: int) -> None:
        self._next_order_id = max(self._next_order_id, value)
        key = self.options.account_id
        _ORDER_ID_FLOOR[key] = max(_ORDER_ID_FLOOR.get(key, 0), self._next_order_id)

    # -- queries --------------------------------------------------------------------
    def open_orders(self, client_id: int | None = None) -> list[SimOrder]:
        return [
            o
            for o in self.orders.values()
            if not o.state.is_done
            and o.state is not OrderState.HELD
            and (client_id is None or o.client_id == client_id)
        ]

    def completed_orders(self) -> list[SimOrder]:
        done = [o for o in self.orders.values() if o.state.is_done]
        return sorted(done, key=lambda o: o.completed_time or 0.0)

    def executions(self, req: ExecutionsRequest, client_id: int | None) -> list[Execution]:
        """Executions matching IB's ExecutionFilter; `client_id` None means every client."""
        since = _parse_filter_time(req.time)
        side = {"BUY": "BOT", "SELL": "SLD"}.get(req.side.upper(), req.side.upper())
        out = []
        for e in self.account.executions:
            if client_id is not None and e.client_id != client_id:
                continue
            if req.client_id and e.client_id != req.client_id:
                continue
            if req.account and req.account != e.account:
                continue
            if req.symbol and req.symbol.upper() != e.symbol:
                continue
            if req.sec_type and req.sec_type.upper() != "STK":
                continue
            if side and side != e.side:
                continue
            if since is not None and e.time < since:
                continue
            out.append(e)
        return out

    # -- placing --------------------------------------------------------------------
    def place(self, client_id: int, req: OrderRequest, now: float) -> None:
        """New order or modification. Raises RequestError when IB would reject it."""
        self._validate(req)
        self._bump_ids(req.order_id + 1)
        existing = self.orders.get((client_id, req.order_id))
        if existing is not None:
            self._modify(existing, req, now)
            return
        spec = self.symbols[_symbol_of(req, self.symbols)]
        order = SimOrder(
            order_id=req.order_id,
            client_id=client_id,
            perm_id=next(_PERM_IDS),
            account=self.options.account_id,
            symbol=spec.symbol,
            con_id=spec.con_id,
            exchange=req.contract.exchange or "SMART",
            action=req.action,
            total_qty=req.total_qty,
            order_type=req.order_type,
            lmt_price=req.lmt_price,
            aux_price=req.aux_price,
            tif=req.tif,
            oca_group=req.oca_group,
            oca_type=req.oca_type,
            order_ref=req.order_ref,
            transmit=req.transmit,
            parent_id=req.parent_id,
            outside_rth=req.outside_rth,
            trail_stop_price=req.trail_stop_price,
            trailing_percent=req.trailing_percent,
        )
        order.log.append(_entry(now, OrderState.HELD, "received"))
        parent = None
        if order.parent_id:
            parent = self.orders.get((client_id, order.parent_id))
            if parent is None or parent.state.is_done:
                raise RequestError(
                    order.order_id, 135, f"Can't find order with id ={order.parent_id}"
                )
        self._check_reject_fault(order)
        self._check_risk(order, parent)
        self.orders[(client_id, order.order_id)] = order
        if not order.transmit:
            return  # held until a transmitted order of its bracket arrives
        group = [order]
        if parent is not None:
            group = [parent, *self._held_children(parent), order]
        else:
            group += self._held_children(order)
        for member in dict.fromkeys(group):
            if member.state is OrderState.HELD:
                self._transmit(member, now)

    def what_if_margin(self, req: OrderRequest) -> float:
        spec = self.symbols[_symbol_of(req, self.symbols)]
        quote = self.market.quote(spec.symbol)
        return round(req.total_qty * (req.lmt_price or quote.ask or quote.last), 2)

    def _validate(self, req: OrderRequest) -> None:
        oid = req.order_id
        if not 0 < oid < 2**31 - 1:
            raise RequestError(oid, 103, "Duplicate order id")
        if req.action not in {"BUY", "SELL"}:
            raise RequestError(oid, 321, f"Error validating request: invalid action {req.action!r}")
        if req.order_type not in ORDER_TYPES:
            raise RequestError(oid, 387, f"Unsupported order type {req.order_type!r}")
        if req.tif not in TIFS:
            raise RequestError(oid, 321, f"Error validating request: invalid tif {req.tif!r}")
        if not 0 < req.total_qty < 10_000_000:
            raise RequestError(oid, 434, "The order size cannot be zero")
        for price in (req.lmt_price, req.aux_price):
            if price is not None and not 0 <= price < 1_000_000:
                raise RequestError(oid, 321, f"Error validating request: bad price {price}")
        if req.order_type in {"LMT", "STP LMT"} and not req.lmt_price:
            raise RequestError(oid, 321, "Error validating request: limit price missing")
        if req.order_type in {"STP", "STP LMT"} and not req.aux_price:
            raise RequestError(oid, 321, "Error validating request: stop price missing")
        if req.order_type == "TRAIL" and not (req.aux_price or req.trailing_percent):
            raise RequestError(oid, 321, "Error validating request: trailing amount missing")
        if req.account and req.account != self.options.account_id:
            raise RequestError(oid, 321, f"Error validating request: unknown account {req.account}")
        _symbol_of(req, self.symbols)

    def _check_reject_fault(self, order: SimOrder) -> None:
        for i, (client_id, reason) in enumerate(self.reject_next):
            if client_id is None or client_id == order.client_id:
                del self.reject_next[i]
                raise RequestError(order.order_id, 201, f"Order rejected - reason:{reason}")

    def _check_risk(self, order: SimOrder, parent: SimOrder | None) -> None:
        """Cash account rules: no short sales, no buying beyond cash."""
        position = self.account.position(order.symbol)
        if parent is not None and parent.symbol == order.symbol:
            position += parent.remaining if parent.is_buy else -parent.remaining
        if not order.is_buy and self.options.no_shorting and position - order.total_qty < -1e-9:
            raise RequestError(
                order.order_id,
                201,
                "Order rejected - reason:Short sale is not allowed in this cash account "
                f"(position {position:g}, sell {order.total_qty:g})",
            )
        if order.is_buy and self.options.check_buying_power and not order.parent_id:
            quote = self.market.quote(order.symbol)
            price = order.lmt_price or quote.ask or quote.last
            if order.total_qty * price > self.account.cash + 1e-6:
                raise RequestError(
                    order.order_id,
                    201,
                    f"Order rejected - reason:Insufficient cash ({self.account.cash:.2f}) "
                    f"for {order.total_qty:g} x {price:.2f}",
                )

    def _held_children(self, parent: SimOrder) -> list[SimOrder]:
        return [
            o
            for o in self.orders.values()
            if o.client_id == parent.client_id
            and o.parent_id == parent.order_id
            and o.state is OrderState.HELD
        ]

    def _transmit(self, order: SimOrder, now: float) -> None:
        quote = self.market.quote(order.symbol)
        if order.order_type == "TRAIL":
            update_trail(order, quote.last, self.symbols[order.symbol].min_tick)
        order.move_to(self._resting_state(order, now), now, "transmitted")
        self.working.setdefault(order.symbol, []).append(order)
        self._send_order(order)
        self.match_order(order, quote, now, first_look=True)

    def _resting_state(self, order: SimOrder, now: float) -> OrderState:
        waiting = order.order_type in STOP_TYPES and not order.triggered
        if waiting or self._waiting_for_parent(order) or not self._in_hours(order, now):
            return OrderState.PRE_SUBMITTED
        return OrderState.SUBMITTED

    def _modify(self, order: SimOrder, req: OrderRequest, now: float) -> None:
        for i, (client_id, reason) in enumerate(self.refuse_next_modification):
            if client_id is None or client_id == order.client_id:
                del self.refuse_next_modification[i]
                raise RequestError(req.order_id, 201, f"Order rejected - reason:{reason}")
        if order.state is OrderState.FILLED:
            raise RequestError(req.order_id, 104, "Cannot modify a filled order")
        if order.state.is_done:
            raise RequestError(req.order_id, 103, "Duplicate order id")
        if req.total_qty < order.filled:
            raise RequestError(req.order_id, 321, "Error validating request: qty below filled")
        if req.order_type != order.order_type:
            raise RequestError(req.order_id, 329, "Order modify failed. Cannot change order type")
        order.total_qty = req.total_qty
        order.lmt_price = req.lmt_price
        order.aux_price = req.aux_price
        order.tif = req.tif
        order.outside_rth = req.outside_rth
        order.order_ref = req.order_ref or order.order_ref
        if req.trail_stop_price is not None:
            order.trail_stop_price = req.trail_stop_price
        order.trailing_percent = req.trailing_percent
        if order.state is OrderState.HELD:
            if req.transmit:
                self._transmit(order, now)
            return
        order.resting = False  # a replaced order arrives anew: marketable, it takes the touch
        order.log.append(_entry(now, order.state, "modified"))
        self._send_order(order)
        self.match_order(order, self.market.quote(order.symbol), now)

    # -- cancelling -------------------------------------------------------------------
    def cancel(self, client_id: int, order_id: int, now: float) -> None:
        """Client cancel. Raises RequestError (10147 unknown, 10148 already done)."""
        order = self.orders.get((client_id, order_id))
        if order is None:
            raise RequestError(
                order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found."
            )
        if order.state.is_done:
            raise _not_cancellable(order)
        if order.state is not OrderState.HELD and self._holds_cancels_of(client_id):
            if order.state is not OrderState.PENDING_CANCEL:
                order.move_to(OrderState.PENDING_CANCEL, now, "cancel held")
                self.held_cancels.append(order)
            self.router.to_order_owner(order.client_id, msg.order_status(order))
            return
        self._cancel(order, now, "cancelled by client", notify_202=True)

    def _holds_cancels_of(self, client_id: int) -> bool:
        return None in self.hold_cancels_of or client_id in self.hold_cancels_of

    def release_cancels(self, now: float) -> int:
        """End the cancel hold: apply every held cancel (Cancelled + 202); one whose order
        filled meanwhile is refused with 10148, as IB refuses a cancel that comes too late.
        Returns how many orders were cancelled."""
        self.hold_cancels_of.clear()
        held, self.held_cancels = self.held_cancels, []
        cancelled = 0
        for order in held:
            if order.state.is_done:
                refused = _not_cancellable(order)
                self.router.to_order_owner(
                    order.client_id, msg.error(refused.req_id, refused.code, refused.text)
                )
                continue
            self._cancel(order, now, "held cancel released", notify_202=True)
            cancelled += 1
        return cancelled

    def global_cancel(self, now: float) -> int:
        live = [o for o in self.orders.values() if not o.state.is_done]
        for order in live:
            if not order.state.is_done:
                self._cancel(order, now, "global cancel", notify_202=True)
        return len(live)

    def _cancel(self, order: SimOrder, now: float, why: str, notify_202: bool = False) -> None:
        order.move_to(OrderState.CANCELLED, now, why)
        self._unwork(order)
        self.router.to_order_owner(order.client_id, msg.order_status(order))
        if notify_202:
            self.router.to_order_owner(
                order.client_id, msg.error(order.order_id, 202, "Order Canceled - reason:")
            )
        for child in self._children(order):
            if not child.state.is_done:
                self._cancel(child, now, "parent cancelled", notify_202)

    def _unwork(self, order: SimOrder) -> None:
        book = self.working.get(order.symbol)
        if book and order in book:
            book.remove(order)

    def expire(self, now: float) -> None:
        """DAY orders end at the close (extended-hours ones at 20:00); IOC never rests."""
        for book in list(self.working.values()):
            for order in list(book):
                if order.tif != "DAY" or order.state.is_done:
                    continue
                end = self.hours.post_close if order.outside_rth else self.hours.close
                if now >= end:
                    self._cancel(order, now, "day order expired")

    # -- matching ----------------------------------------------------------------------
    def on_quote(self, quote, now: float) -> None:  # type: ignore[no-untyped-def]
        for order in list(self.working.get(quote.symbol, ())):
            if not order.state.is_done:
                self.match_order(order, quote, now)

    def match_order(self, order: SimOrder, quote, now: float, first_look: bool = False) -> None:  # type: ignore[no-untyped-def]
        if order.state.is_done or order.state is OrderState.HELD:
            return
        if self._waiting_for_parent(order) or not self._in_hours(order, now):
            if order.tif == "IOC" and first_look:
                self._cancel(order, now, "IOC not marketable")
            return
        if order.order_type == "TRAIL":
            update_trail(order, quote.last, self.symbols[order.symbol].min_tick)
        if order.order_type in STOP_TYPES and not order.triggered:
            if not is_triggered(order, quote.last):
                if order.tif == "IOC" and first_look:
                    self._cancel(order, now, "IOC stop not triggered")
                return
            order.triggered = True
        if order.state is OrderState.PRE_SUBMITTED:
            order.move_to(OrderState.SUBMITTED, now, "working")
            self.router.to_order_owner(order.client_id, msg.order_status(order))
        tick = self.symbols[order.symbol].min_tick
        price = fill_price(order, quote, tick, self.options.slippage_ticks)
        if price is not None:
            qty = order.remaining
            if self.options.partial_fills:
                qty = min(qty, available_size(order, quote))
            self._fill(order, qty, price, now)
        order.resting = True  # looked at while working: from now on it rests in the book
        if order.tif == "IOC" and not order.state.is_done:
            self._cancel(order, now, "IOC remainder")

    def _waiting_for_parent(self, order: SimOrder) -> bool:
        if not order.parent_id:
            return False
        parent = self.orders.get((order.client_id, order.parent_id))
        return parent is not None and parent.state is not OrderState.FILLED

    def _in_hours(self, order: SimOrder, now: float) -> bool:
        h = self.hours
        if order.outside_rth:
            return h.pre_open <= now < h.post_close
        return h.open <= now < h.close

    def _fill(self, order: SimOrder, qty: float, price: float, now: float) -> None:
        position = self.account.position(order.symbol)
        if not order.is_buy and self.options.no_shorting and position - qty < -1e-9:
            order.move_to(OrderState.REJECTED, now, "short sale rejected at fill")
            self._unwork(order)
            owner = order.client_id
            text = (
                "Order rejected - reason:Short sale is not allowed in this cash account "
                f"(position {position:g}, sell {qty:g})"
            )
            self.router.to_order_owner(owner, msg.error(order.order_id, 201, text))
            self.router.to_order_owner(owner, msg.order_status(order))
            return
        order.apply_fill(qty, price)
        total_commission = commission_for(
            order.filled,
            order.filled * order.avg_fill_price,
            self.options.commission_per_share,
            self.options.commission_min,
        )
        commission = round(total_commission - order.commission_paid, 4)
        order.commission_paid = total_commission
        spec = self.symbols[order.symbol]
        realized = self.account.apply_fill(
            order.symbol, spec.con_id, order.is_buy, qty, price, commission
        )
        execution = Execution(
            exec_id=f"{order.perm_id:08x}.{next(self._exec_seq):08x}.01.01",
            time=now,
            order_id=order.order_id,
            client_id=order.client_id,
            perm_id=order.perm_id,
            account=order.account,
            symbol=order.symbol,
            con_id=order.con_id,
            side="BOT" if order.is_buy else "SLD",
            shares=qty,
            price=price,
            cum_qty=order.filled,
            avg_price=round(order.avg_fill_price, 6),
            order_ref=order.order_ref,
            commission=commission,
            realized_pnl=realized,
        )
        self.account.executions.append(execution)
        done = order.remaining <= 1e-9
        # A fill during a held cancel leaves the rest waiting for the cancel.
        pending = order.state is OrderState.PENDING_CANCEL
        working = OrderState.PENDING_CANCEL if pending else OrderState.SUBMITTED
        order.move_to(OrderState.FILLED if done else working, now, f"fill {qty:g}@{price}")
        if done:
            self._unwork(order)
        owner = order.client_id
        self.router.to_order_owner(owner, msg.exec_details(-1, execution))
        self.router.to_order_owner(owner, msg.order_status(order))
        self.router.to_order_owner(owner, msg.open_order(order))
        self.router.to_order_owner(owner, msg.commission_report(execution))
        self.publish_position(order.symbol)
        self._after_fill(order, qty, now)

    def _after_fill(self, order: SimOrder, qty: float, now: float) -> None:
        """OCA groups and bracket siblings: ocaType 1 cancels the rest, 2/3 reduce them."""
        siblings: list[SimOrder] = []
        if order.oca_group:
            siblings += [
                o
                for o in self.orders.values()
                if o is not order and o.oca_group == order.oca_group and not o.state.is_done
            ]
        if order.parent_id:
            siblings += [
                o
                for o in self._children_of(order.client_id, order.parent_id)
                if o is not order and not o.state.is_done
            ]
        # ocaType 1 (and IB's default 0) cancels the rest; 2/3 and bracket siblings reduce.
        cancel_rest = bool(order.oca_group) and order.oca_type in (0, 1)
        for sibling in dict.fromkeys(siblings):
            if sibling.state.is_done:
                continue
            if cancel_rest:
                self._cancel(sibling, now, f"OCA: order {order.order_id} filled")
                continue
            sibling.total_qty = max(sibling.filled, sibling.total_qty - qty)
            if sibling.remaining <= 1e-9:
                self._cancel(sibling, now, f"OCA: reduced to zero by {order.order_id}")
            else:
                self.router.to_order_owner(sibling.client_id, msg.open_order(sibling))
                self.router.to_order_owner(sibling.client_id, msg.order_status(sibling))
        if order.state is OrderState.FILLED:
            quote = self.path_quotes.get(order.symbol) or self.market.quote(order.symbol)
            for child in self._children(order):
                if child.state is not OrderState.HELD:
                    self.match_order(child, quote, now)

    def _children(self, order: SimOrder) -> list[SimOrder]:
        return self._children_of(order.client_id, order.order_id)

    def _children_of(self, client_id: int, parent_id: int) -> list[SimOrder]:
        return [
            o for o in self.orders.values() if o.client_id == client_id and o.parent_id == parent_id
        ]

    # -- events --------------------------------------------------------------------------
    def _send_order(self, order: SimOrder) -> None:
        self.router.to_order_owner(order.client_id, msg.open_order(order))
        self.router.to_order_owner(order.client_id, msg.order_status(order))

    def publish_position(self, symbol: str) -> None:
        spec = self.symbols[symbol]
        row = self.account.positions.get(symbol)
        qty = row.quantity if row else 0.0
        avg = row.avg_cost if row else 0.0
        realized = row.realized_pnl if row else 0.0
        acct = self.options.account_id
        self.router.to_position_subscribers(msg.position(acct, spec, qty, avg))
        last = self._mark(symbol)
        self.router.to_account_subscribers(msg.portfolio(spec, qty, last, avg, realized, acct))
        for key, value in self.account_values():
            currency = "" if key == "AccountType" else "USD"
            self.router.to_account_subscribers(msg.account_value(key, value, currency, acct))

    def portfolio_messages(self) -> Iterable[bytes]:
        acct = self.options.account_id
        for row in self.account.positions.values():
            if row.quantity:
                spec = self.symbols[row.symbol]
                yield msg.portfolio(
                    spec, row.quantity, self._mark(row.symbol), row.avg_cost, row.realized_pnl, acct
                )

    def _mark(self, symbol: str) -> float:
        quote = self.market.quote(symbol)
        return quote.last or (quote.bid + quote.ask) / 2

    def account_values(self) -> list[tuple[str, str]]:
        acct = self.account
        gross = sum(abs(r.quantity) * self._mark(r.symbol) for r in acct.positions.values())
        market_value = sum(r.quantity * self._mark(r.symbol) for r in acct.positions.values())
        unrealized = sum(
            (self._mark(r.symbol) - r.avg_cost) * r.quantity for r in acct.positions.values()
        )
        net = acct.cash + market_value
        values = {
            "AccountType": "INDIVIDUAL",
            "NetLiquidation": net,
            "TotalCashValue": acct.cash,
            "CashBalance": acct.cash,
            "SettledCash": acct.cash,
            "AvailableFunds": acct.cash,
            "BuyingPower": max(0.0, acct.cash),
            "ExcessLiquidity": acct.cash,
            "EquityWithLoanValue": net,
            "GrossPositionValue": gross,
            "StockMarketValue": market_value,
            "RealizedPnL": acct.realized_pnl,
            "UnrealizedPnL": unrealized,
            "InitMarginReq": 0.0,
            "MaintMarginReq": 0.0,
        }
        return [(k, v if isinstance(v, str) else f"{v:.2f}") for k, v in values.items()]

    def state_json(self) -> dict[str, object]:
        return {
            "account": self.options.account_id,
            "cash": round(self.account.cash, 4),
            "realized_pnl": round(self.account.realized_pnl, 4),
            "commissions": round(self.account.commissions, 4),
            "positions": self.account.positions_json(),
            "open_orders": [_order_json(o) for o in self.open_orders()],
            "completed_orders": [_order_json(o) for o in self.completed_orders()],
            "executions": self.account.executions_json(),
            "next_order_id": self._next_order_id,
        }


def _order_json(o: SimOrder) -> dict[str, object]:
    return {
        "order_id": o.order_id,
        "client_id": o.client_id,
        "perm_id": o.perm_id,
        "symbol": o.symbol,
        "action": o.action,
        "quantity": o.total_qty,
        "order_type": o.order_type,
        "lmt_price": o.lmt_price,
        "aux_price": o.aux_price,
        "trail_stop_price": o.trail_stop_price,
        "tif": o.tif,
        "oca_group": o.oca_group,
        "parent_id": o.parent_id,
        "order_ref": o.order_ref,
        "status": o.state.ib_status,
        "state": o.state.name,
        "filled": o.filled,
        "avg_fill_price": o.avg_fill_price,
        "received_time": o.log[0].time if o.log else None,  # simulated time it arrived
        "completed_time": o.completed_time,
    }


def _not_cancellable(order: SimOrder) -> RequestError:
    return RequestError(
        order.order_id,
        10148,
        f"OrderId {order.order_id} that needs to be cancelled cannot be cancelled, "
        f"state: {order.state.ib_status}.",
    )


def _entry(now: float, state: OrderState, note: str):  # type: ignore[no-untyped-def]
    from ibsim.orders import OrderLogEntry

    return OrderLogEntry(now, state, note)


def _symbol_of(req: OrderRequest, symbols: dict) -> str:
    c = req.contract
    if c.sec_type not in ("", "STK") or c.currency not in ("", "USD"):
        raise RequestError(
            req.order_id, 200, "No security definition has been found for the request"
        )
    if c.con_id:
        for spec in symbols.values():
            if spec.con_id == c.con_id:
                return spec.symbol
    elif c.symbol.upper() in symbols:
        return c.symbol.upper()
    raise RequestError(req.order_id, 200, "No security definition has been found for the request")


def _parse_filter_time(text: str) -> float | None:
    """ExecutionFilter.time: 'yyyymmdd hh:mm:ss' (New York) or 'yyyymmdd-hh:mm:ss' (UTC)."""
    from datetime import UTC, datetime

    from core.clock import NEW_YORK

    text = text.strip()
    if not text:
        return None
    try:
        if "-" in text:
            return datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC).timestamp()
        parts = text.split(" ")
        stamp = datetime.strptime(" ".join(parts[:2]), "%Y%m%d %H:%M:%S")
        return stamp.replace(tzinfo=NEW_YORK).timestamp()
    except ValueError:
        return None
