"""The parameter study after the close: Optuna over the recorded days, scored walk-forward.

    plan = WalkForwardPlan(train_days=10, test_days=5)
    result = study_parameters(days, BacktestConfig.from_settings(settings), plan,
                              StudyOptions(storage="sqlite:///improve_study.db", trials=100))
    result.verdict.recommend        # True only when the tuned settings won out of sample
    result.proposal                 # {"PROFIT_TARGET_PCT": "3.1", ...}: the .env change

Walk-forward: folds are anchored on the first day, fold k tunes on days [kT, kT + W) and is
scored on the T days after them, never on the days it was tuned on. The out-of-sample figure
is the tuned settings of each fold over its test days, next to the current settings over the
same days; the proposal is tuned on the latest W days and is recommended only when the
walk-forward says tuning beat the current settings (paired per-day differences, t >= 2, and
enough trades behind both figures). Each fold's study is persisted under its train dates, so
the next evening tops up the folds it shares with tonight and starts new ones from the best
settings found so far.

Trials run in `jobs` processes against the one storage (SQLite by default; a PostgreSQL URL
lets several machines join one study through Optuna's RDB storage). Memory is bounded by the
days each process holds; a trial keeps only its score and trade count.
"""

from __future__ import annotations

import dataclasses
import math
import time as wall
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Any

from sim.backtest import BacktestConfig, BacktestResult, run_backtest
from sim.days import TradingDay

STUDY_VERSION = "v1"  # part of every study's name: a changed search space starts afresh
MIN_TRADES = 30  # fewer trades behind a figure than this: it means little
MIN_T_STAT = 2.0  # paired per-day t of tuned minus current out of sample, to recommend


@dataclass(frozen=True)
class Parameter:
    """One studied setting: its BacktestConfig field, .env key and grid."""

    field: str
    env_key: str
    low: float
    high: float
    step: float
    integer: bool = False

    def env_value(self, value: float) -> str:
        return str(int(value)) if self.integer else f"{value:g}"

    def clamp(self, value: float) -> float:
        """`value` on this parameter's grid, within its range (a trial Optuna accepts)."""
        steps = round((min(max(value, self.low), self.high) - self.low) / self.step)
        snapped = self.low + steps * self.step
        return round(snapped) if self.integer else round(snapped, 6)


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("profit_target_pct", "PROFIT_TARGET_PCT", 0.5, 6.0, 0.1),
    Parameter("stop_loss_pct", "STOP_LOSS_PCT", 0.3, 4.0, 0.1),
    Parameter("rsi_max", "ENTRY_RSI_MAX", 40.0, 95.0, 1.0),
    Parameter("atr_pct_min", "ENTRY_ATR_PCT_MIN", 0.0, 2.0, 0.05),
    Parameter("gap_min_pct", "ENTRY_GAP_MIN_PCT", 1.0, 20.0, 0.5),
    Parameter("entry_cutoff_minutes", "ENTRY_CUTOFF_MINUTES", 15.0, 180.0, 5.0),
    Parameter("max_open_positions", "MAX_OPEN_POSITIONS", 1, 10, 1, integer=True),
)
PARAMETER_BY_FIELD = {p.field: p for p in PARAMETERS}


def current_params(
    config: BacktestConfig, space: Sequence[Parameter] = PARAMETERS
) -> dict[str, float]:
    """The studied values `config` trades with (the entry cutoff resolved to its minutes)."""
    values: dict[str, float] = {}
    for p in space:
        value = getattr(config, p.field)
        if p.field == "entry_cutoff_minutes" and value is None:
            value = config.eod_flatten_minutes
        values[p.field] = value
    return values


def config_with(base: BacktestConfig, params: Mapping[str, float]) -> BacktestConfig:
    """`base` trading with `params`; an entry cutoff inside the EOD flatten is the flatten's."""
    changes = dict(params)
    if "entry_cutoff_minutes" in changes:
        changes["entry_cutoff_minutes"] = max(
            float(changes["entry_cutoff_minutes"]), base.eod_flatten_minutes
        )
    return dataclasses.replace(base, **changes)


# -- walk-forward ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WalkForwardPlan:
    train_days: int = 10
    test_days: int = 5

    def __post_init__(self) -> None:
        if self.train_days < 1 or self.test_days < 1:
            raise ValueError("train_days and test_days must be >= 1")

    @property
    def days_needed(self) -> int:
        return self.train_days + self.test_days


@dataclass(frozen=True)
class Fold:
    train: tuple[date, ...]
    test: tuple[date, ...]


def walk_forward_folds(dates: Sequence[date], plan: WalkForwardPlan) -> list[Fold]:
    """Folds anchored on the first date: train [kT, kT+W), test the next T (the last fold's
    test may be shorter). A date is never in the test of the fold that trained on it."""
    ordered = sorted(set(dates))
    folds = []
    start = 0
    while start + plan.train_days < len(ordered):
        train = ordered[start : start + plan.train_days]
        test = ordered[start + plan.train_days : start + plan.days_needed]
        folds.append(Fold(tuple(train), tuple(test)))
        start += plan.test_days
    return folds


def study_name(prefix: str, train: Sequence[date]) -> str:
    return f"{prefix}:{STUDY_VERSION}:train {train[0]}..{train[-1]}"


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DayFigure:
    trading_date: str
    net_pnl: float
    trades: int


def day_figures(result: BacktestResult) -> list[DayFigure]:
    return [DayFigure(d.trading_date, d.net_pnl, len(d.journal)) for d in result.days]


@dataclass(frozen=True)
class Figure:
    """A set of days' figure: net P&L, the trades behind it, the days."""

    days: tuple[DayFigure, ...]

    @property
    def net_pnl(self) -> float:
        return sum(d.net_pnl for d in self.days)

    @property
    def trades(self) -> int:
        return sum(d.trades for d in self.days)

    def too_few(self, min_trades: int) -> bool:
        return self.trades < min_trades


@dataclass(frozen=True)
class Verdict:
    recommend: bool
    why: str
    t_stat: float | None
    mean_daily_gain: float | None


def judge(tuned: Figure, current: Figure, min_trades: int = MIN_TRADES) -> Verdict:
    """Pure: whether the tuned settings beat the current ones out of sample, day by day.

    Recommends only when both figures rest on at least `min_trades` trades, the tuned
    settings earned more, and the paired per-day differences give t >= MIN_T_STAT (in-sample
    luck does not survive days it never saw)."""
    diffs = [t.net_pnl - c.net_pnl for t, c in zip(tuned.days, current.days, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n if n else None
    t_stat = None
    if n >= 2 and mean is not None:
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        t_stat = math.inf if sd == 0 and mean > 0 else (mean / (sd / math.sqrt(n)) if sd else 0.0)
    if not n:
        return Verdict(False, "no out-of-sample day", None, None)
    if tuned.too_few(min_trades) or current.too_few(min_trades):
        return Verdict(
            False,
            f"too few trades out of sample to judge (tuned {tuned.trades}, current "
            f"{current.trades}; at least {min_trades} each): keep the current settings",
            t_stat,
            mean,
        )
    if mean is None or mean <= 0:
        return Verdict(
            False, "tuning did not beat the current settings out of sample", t_stat, mean
        )
    if t_stat is None or t_stat < MIN_T_STAT:
        shown = "-" if t_stat is None else f"{t_stat:.2f}"
        return Verdict(
            False,
            f"the out-of-sample gain is within day-to-day noise (t = {shown} < {MIN_T_STAT:g}): "
            "keep the current settings",
            t_stat,
            mean,
        )
    return Verdict(True, f"tuned settings won out of sample (t = {t_stat:.2f})", t_stat, mean)


@dataclass(frozen=True)
class FoldResult:
    fold: Fold
    study: str
    trials: int  # completed trials in its study
    best_params: dict[str, float]
    best_in_sample: float | None  # net P&L of the best trial on the train days
    current_in_sample: float
    tuned_test: Figure
    current_test: Figure


@dataclass(frozen=True)
class StudyResult:
    current: dict[str, float]
    folds: tuple[FoldResult, ...]
    proposal_study: str | None
    proposal_params: dict[str, float]  # tuned on the latest train window
    proposal_in_sample: float | None
    current_in_sample: float | None
    verdict: Verdict
    trials_run: int  # tonight's trials
    trials_wanted: int
    seconds: float
    missing: tuple[str, ...]  # one line each: what could not be done and why

    @property
    def tuned_oos(self) -> Figure:
        return Figure(tuple(d for f in self.folds for d in f.tuned_test.days))

    @property
    def current_oos(self) -> Figure:
        return Figure(tuple(d for f in self.folds for d in f.current_test.days))

    @property
    def proposal(self) -> dict[str, str]:
        """The .env change: the keys whose tuned value differs, when recommended; else {}."""
        if not self.verdict.recommend:
            return {}
        return proposed_env(self.current, self.proposal_params)


def proposed_env(current: Mapping[str, float], tuned: Mapping[str, float]) -> dict[str, str]:
    """Pure: {ENV_KEY: value} for each studied setting whose tuned value differs."""
    changes = {}
    for name, value in tuned.items():
        p = PARAMETER_BY_FIELD[name]
        if p.env_value(value) != p.env_value(current[name]):
            changes[p.env_key] = p.env_value(value)
    return changes


# -- the study ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyOptions:
    storage: str  # an SQLAlchemy URL: sqlite:///file.db or postgresql://...
    trials: int = 100  # per study (fold or proposal), counted with earlier evenings'
    jobs: int = 1  # processes running trials at once
    time_budget_s: float | None = None  # the whole study's wall time
    seed: int = 0
    prefix: str = "improve"
    min_trades: int = MIN_TRADES
    space: tuple[Parameter, ...] = PARAMETERS


def open_storage(url: str) -> Any:
    """Optuna's RDB storage for `url` (SQLite waits for a busy file instead of failing)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def _suggest(trial: Any, space: Sequence[Parameter]) -> dict[str, float]:
    values: dict[str, float] = {}
    for p in space:
        if p.integer:
            values[p.field] = trial.suggest_int(p.field, int(p.low), int(p.high), step=int(p.step))
        else:
            values[p.field] = trial.suggest_float(p.field, p.low, p.high, step=p.step)
    return values


def _evaluate(
    days: Sequence[TradingDay], base: BacktestConfig, params: Mapping[str, float]
) -> BacktestResult:
    return run_backtest(days, config_with(base, params))


# Set in each worker process once (the days are not sent with every task).
_WORKER: dict[str, Any] = {}


def _worker_init(days: Sequence[TradingDay], base: BacktestConfig) -> None:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    _WORKER["days"] = {d.trading_date: d for d in days}
    _WORKER["base"] = base


def _run_trials(
    storage: Any,
    name: str,
    train: tuple[date, ...],
    space: tuple[Parameter, ...],
    n_trials: int,
    deadline: float,
    seed: int,
    on_trial: Callable[[], None] | None = None,
) -> int:
    """In a worker (or here, for one job): run up to `n_trials` trials of study `name` until
    `deadline` (epoch) in `storage` (a URL, or the open storage); returns how many completed."""
    import optuna

    days = [_WORKER["days"][d] for d in train]
    base: BacktestConfig = _WORKER["base"]

    def objective(trial: Any) -> float:
        result = _evaluate(days, base, _suggest(trial, space))
        trial.set_user_attr("trades", result.trades)
        return result.net_pnl

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, n_trials // 2)))
    if isinstance(storage, str):
        storage = open_storage(storage)
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    done = [0]  # this process's trials (others may run the same study meanwhile)

    def finished(_study: Any, trial: Any) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            done[0] += 1
            if on_trial is not None:
                on_trial()

    timeout = deadline - wall.time()
    if timeout > 0 and n_trials > 0:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[finished])
    return done[0]


def _completed(study: Any) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _previous_best(storage: Any, prefix: str, exclude: str) -> dict[str, float] | None:
    """The best settings of the newest earlier study under `prefix`: tonight starts there."""
    import optuna

    names = sorted(
        s.study_name
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if s.study_name.startswith(f"{prefix}:{STUDY_VERSION}:") and s.study_name != exclude
    )
    for name in reversed(names):
        study = optuna.load_study(study_name=name, storage=storage)
        try:
            return dict(study.best_params)
        except ValueError:  # no completed trial
            continue
    return None


class _Runner:
    """Runs each study's trials in `jobs` processes (or here, for one job)."""

    def __init__(
        self,
        days: Sequence[TradingDay],
        base: BacktestConfig,
        options: StudyOptions,
        on_trials: Callable[[int], None] | None,
        on_planned: Callable[[int], None] | None = None,
    ) -> None:
        self.options = options
        self.on_trials = on_trials or (lambda n: None)
        self.on_planned = on_planned or (lambda n: None)
        self.storage = open_storage(options.storage)
        budget = options.time_budget_s
        self.deadline = wall.time() + budget if budget is not None else math.inf
        self.pool: ProcessPoolExecutor | None = None
        if options.jobs > 1:
            self.pool = ProcessPoolExecutor(
                options.jobs, initializer=_worker_init, initargs=(list(days), base)
            )
        _worker_init(days, base)  # the queued trials run here
        self.ran = 0
        self.wanted = 0

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def study(self, name: str, train: tuple[date, ...], current: Mapping[str, float]) -> Any:
        """Study `name` topped up to `trials` completed trials (within the time budget)."""
        import optuna

        space = self.options.space
        study = optuna.create_study(
            study_name=name, storage=self.storage, direction="maximize", load_if_exists=True
        )
        if not study.trials:
            # The current settings first (the baseline in sample), then the best found so far.
            study.enqueue_trial({p.field: p.clamp(current[p.field]) for p in space})
            earlier = _previous_best(self.storage, self.options.prefix, name)
            if earlier and set(earlier) == {p.field for p in space}:
                study.enqueue_trial(earlier, skip_if_exists=True)
        missing = max(0, self.options.trials - _completed(study))
        self.wanted += missing
        self.on_planned(missing)
        if missing == 0 or wall.time() >= self.deadline:
            return study
        seed = self.options.seed + len(study.trials)
        deadline = self.deadline if math.isfinite(self.deadline) else wall.time() + 10 * 365 * 86400
        if self.pool is None:
            done = self._here(name, train, missing, deadline, seed)
        else:
            # The queued trials (current settings, last best) run here first: two processes
            # taking one queued trial from SQLite at once would both run it and one would fail.
            waiting = len(
                study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
            )
            done = self._here(name, train, min(waiting, missing), deadline, seed)
            if missing > done:
                done += self._in_pool(name, train, missing - done, deadline, seed)
        self.ran += done
        return optuna.load_study(study_name=name, storage=self.storage)

    def _here(self, name: str, train: tuple[date, ...], n: int, deadline: float, seed: int) -> int:
        return _run_trials(self.storage, name, train, self.options.space, n, deadline,
                           seed, on_trial=lambda: self.on_trials(1))  # fmt: skip

    def _in_pool(
        self, name: str, train: tuple[date, ...], n: int, deadline: float, seed: int
    ) -> int:
        assert self.pool is not None
        jobs = self.options.jobs
        shares = [n // jobs + (1 if i < n % jobs else 0) for i in range(jobs)]
        futures = [
            self.pool.submit(
                _run_trials,
                self.options.storage,
                name,
                train,
                self.options.space,
                share,
                deadline,
                seed + i,
            )
            for i, share in enumerate(shares)
            if share
        ]
        done = 0
        import optuna

        watched = optuna.load_study(study_name=name, storage=self.storage)
        start = _completed(watched)
        shown = 0
        while not all(f.done() for f in futures):
            wall.sleep(0.5)
            now = _completed(watched) - start
            if now > shown:
                self.on_trials(now - shown)
                shown = now
        done = sum(f.result() for f in futures)
        if done > shown:
            self.on_trials(done - shown)
        return done


def _best(study: Any, fallback: Mapping[str, float]) -> tuple[dict[str, float], float | None]:
    try:
        trial = study.best_trial
    except ValueError:
        return dict(fallback), None
    return dict(trial.params), float(trial.value)


def study_parameters(
    days: Sequence[TradingDay],
    base: BacktestConfig,
    plan: WalkForwardPlan,
    options: StudyOptions,
    *,
    on_trials: Callable[[int], None] | None = None,
    on_planned: Callable[[int], None] | None = None,
) -> StudyResult:
    """Tune `options.space` over `days` walk-forward and propose settings for tomorrow.

    With fewer days than `plan.days_needed` nothing is tuned: the result says so in
    `missing` and carries only the current settings. `on_planned(n)`: n more trials are to
    run tonight (a study's top-up); `on_trials(n)`: n more have completed. Raises ValueError on a bad storage URL
    (optuna/SQLAlchemy's message)."""
    started = wall.perf_counter()
    ordered = sorted(days, key=lambda d: d.trading_date)
    by_date = {d.trading_date: d for d in ordered}
    current = current_params(base, options.space)
    folds = walk_forward_folds(list(by_date), plan)
    missing: list[str] = []
    if not folds:
        missing.append(
            f"only {len(by_date)} recorded day(s); walk-forward needs {plan.days_needed} "
            f"({plan.train_days} to tune on, {plan.test_days} to score on): no study tonight"
        )
        return StudyResult(current, (), None, dict(current), None, None,
                           Verdict(False, missing[0], None, None), 0, 0,
                           wall.perf_counter() - started, tuple(missing))  # fmt: skip
    runner = _Runner(ordered, base, options, on_trials, on_planned)
    results = []
    try:
        for fold in folds:
            name = study_name(options.prefix, fold.train)
            study = runner.study(name, fold.train, current)
            params, best_value = _best(study, current)
            train_days = [by_date[d] for d in fold.train]
            test_days = [by_date[d] for d in fold.test]
            results.append(
                FoldResult(
                    fold=fold,
                    study=name,
                    trials=_completed(study),
                    best_params=params,
                    best_in_sample=best_value,
                    current_in_sample=_evaluate(train_days, base, current).net_pnl,
                    tuned_test=Figure(tuple(day_figures(_evaluate(test_days, base, params)))),
                    current_test=Figure(tuple(day_figures(_evaluate(test_days, base, current)))),
                )
            )
        latest = tuple(sorted(by_date)[-plan.train_days :])
        proposal_name = study_name(options.prefix, latest)
        proposal_study = runner.study(proposal_name, latest, current)
        proposal_params, proposal_value = _best(proposal_study, current)
        current_in_sample = _evaluate([by_date[d] for d in latest], base, current).net_pnl
    finally:
        runner.close()
    if runner.ran < runner.wanted:
        missing.append(
            f"the time budget ran out: {runner.ran} of {runner.wanted} trials ran tonight; "
            "the next run continues the studies"
        )
    tuned = Figure(tuple(d for f in results for d in f.tuned_test.days))
    now_figure = Figure(tuple(d for f in results for d in f.current_test.days))
    return StudyResult(
        current=current,
        folds=tuple(results),
        proposal_study=proposal_name,
        proposal_params={k: proposal_params.get(k, v) for k, v in current.items()},
        proposal_in_sample=proposal_value,
        current_in_sample=current_in_sample,
        verdict=judge(tuned, now_figure, options.min_trades),
        trials_run=runner.ran,
        trials_wanted=runner.wanted,
        seconds=wall.perf_counter() - started,
        missing=tuple(missing),
    )


def study_trials(storage_url: str, name: str) -> list[tuple[dict[str, float], float]]:
    """The completed trials of study `name`: (params, net P&L) each, for the report's plots."""
    import optuna

    study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    return [
        (dict(t.params), float(t.value))
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None
    ]


def parameter_importance(storage_url: str, name: str) -> dict[str, float]:
    """Optuna's parameter importances for study `name` ({} with too few varied trials)."""
    import optuna

    study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
