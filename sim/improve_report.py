"""What the improvement cycle writes: one Markdown report, its PNGs and the proposed .env change.

out/report.md        live vs model, the walk-forward study, the verdict, the proposal
out/equity.png       out-of-sample equity, current settings vs tuned
out/importance.png   Optuna's parameter importances (the latest window's study)
out/heatmap.png      net P&L over target x stop (the latest window's trials)
out/proposed.env     the keys to change (empty when the verdict is keep): --apply reads it
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sim.improve import PARAMETER_BY_FIELD, StudyResult
from sim.live_vs_model import DayComparison, render_comparison

PROPOSAL_FILE = "proposed.env"
REPORT_FILE = "report.md"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:+,.2f}"


def _trades(count: int, min_trades: int) -> str:
    warn = f" ⚠ too few to mean anything (< {min_trades})" if count < min_trades else ""
    return f"{count} trades{warn}"


def render_study(study: StudyResult, min_trades: int) -> str:
    lines = ["## Parameter study (walk-forward)", ""]
    if not study.folds:
        return "\n".join([*lines, "No study: " + "; ".join(study.missing), ""])
    tuned, current = study.tuned_oos, study.current_oos
    lines += [
        f"{len(study.folds)} fold(s); out of sample = days no fold was tuned on "
        f"({len(current.days)} days). Tonight: {study.trials_run} trials in "
        f"{study.seconds:.0f} s.",
        "",
        "| out of sample | net P&L | trades |",
        "|---|---|---|",
        f"| current settings | {_money(current.net_pnl)} | {_trades(current.trades, min_trades)} |",
        f"| tuned each fold | {_money(tuned.net_pnl)} | {_trades(tuned.trades, min_trades)} |",
        "",
        f"**Verdict:** {study.verdict.why}.",
        "",
        "| fold: tuned on | scored on | trials | best in sample | current in sample "
        "| tuned out of sample | current out of sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in study.folds:
        lines.append(
            f"| {f.fold.train[0]}..{f.fold.train[-1]} | {f.fold.test[0]}..{f.fold.test[-1]} | "
            f"{f.trials} | {_money(f.best_in_sample)} | {_money(f.current_in_sample)} | "
            f"{_money(f.tuned_test.net_pnl)} ({f.tuned_test.trades}) | "
            f"{_money(f.current_test.net_pnl)} ({f.current_test.trades}) |"
        )
    lines += [
        "",
        f"Latest window's study ({study.proposal_study}): best in sample "
        f"{_money(study.proposal_in_sample)} vs current {_money(study.current_in_sample)} "
        "(in sample: not evidence on its own).",
        "",
        "| setting | current | tuned on the latest window |",
        "|---|---|---|",
    ]
    for name, value in study.current.items():
        p = PARAMETER_BY_FIELD[name]
        tuned_value = study.proposal_params.get(name, value)
        lines.append(f"| {p.env_key} | {p.env_value(value)} | {p.env_value(tuned_value)} |")
    lines.append("")
    return "\n".join(lines)


def render_proposal(proposal: Mapping[str, str]) -> str:
    if not proposal:
        return "## Proposed .env change\n\nNone: keep the current settings.\n"
    body = "\n".join(f"{k}={v}" for k, v in proposal.items())
    return (
        "## Proposed .env change\n\n```\n"
        + body
        + "\n```\n\nApply with `python improve.py --apply` (asks first; the old .env is backed up).\n"
    )


def render_report(
    trading_date: str,
    study: StudyResult | None,
    comparison: DayComparison | None,
    notes: Sequence[str],
    images: Sequence[str],
    min_trades: int,
) -> str:
    lines = [f"# Improvement cycle, {trading_date}", ""]
    if notes:
        lines += ["**Missing:**", "", *[f"- {n}" for n in notes], ""]
    if comparison is not None:
        lines.append(render_comparison(comparison))
    if study is not None:
        lines.append(render_study(study, min_trades))
        lines.append(render_proposal(study.proposal))
    lines += [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def equity_figure(study: StudyResult):  # type: ignore[no-untyped-def]
    """Out-of-sample equity, day by day: current settings vs tuned each fold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    axis = fig.subplots()
    for label, figure in (
        ("current", study.current_oos),
        ("tuned (walk-forward)", study.tuned_oos),
    ):
        total, curve = 0.0, [0.0]
        for day in figure.days:
            total += day.net_pnl
            curve.append(total)
        axis.plot(range(len(curve)), curve, marker="o", label=f"{label}: {figure.trades} trades")
    axis.set_xlabel("out-of-sample day")
    axis.set_ylabel("net P&L, USD")
    axis.set_title("out of sample: current vs tuned")
    axis.legend()
    axis.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def importance_figure(importances: Mapping[str, float]):  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    axis = fig.subplots()
    names = [PARAMETER_BY_FIELD[n].env_key for n in importances]
    axis.barh(names[::-1], list(importances.values())[::-1], color="tab:green")
    axis.set_xlabel("importance (Optuna)")
    axis.set_title("parameter importance, latest window")
    fig.tight_layout()
    return fig


def heatmap_figure(trials: Sequence[tuple[Mapping[str, float], float]], bins: int = 8):  # type: ignore[no-untyped-def]
    """Mean net P&L of the trials per target x stop cell (empty cells blank)."""
    import numpy as np
    from matplotlib.figure import Figure

    target = PARAMETER_BY_FIELD["profit_target_pct"]
    stop = PARAMETER_BY_FIELD["stop_loss_pct"]
    x = np.array([p["profit_target_pct"] for p, _ in trials])
    y = np.array([p["stop_loss_pct"] for p, _ in trials])
    v = np.array([value for _, value in trials])
    edges_x = np.linspace(target.low, target.high, bins + 1)
    edges_y = np.linspace(stop.low, stop.high, bins + 1)
    sums, _, _ = np.histogram2d(x, y, [edges_x, edges_y], weights=v)
    counts, _, _ = np.histogram2d(x, y, [edges_x, edges_y])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
    fig = Figure(figsize=(6, 5))
    axis = fig.subplots()
    image = axis.imshow(mean.T, origin="lower", aspect="auto", cmap="RdYlGn",
                        extent=(target.low, target.high, stop.low, stop.high))  # fmt: skip
    fig.colorbar(image, ax=axis, label="mean net P&L, USD")
    axis.set_xlabel("PROFIT_TARGET_PCT")
    axis.set_ylabel("STOP_LOSS_PCT")
    axis.set_title(f"target x stop, {len(trials)} trials")
    fig.tight_layout()
    return fig


def write_proposal(out: Path, proposal: Mapping[str, str]) -> Path:
    path = out / PROPOSAL_FILE
    header = "# Proposed by improve.py; apply with: python improve.py --apply\n"
    path.write_text(header + "".join(f"{k}={v}\n" for k, v in proposal.items()), encoding="utf-8")
    return path


def read_proposal(path: Path) -> dict[str, str]:
    """The KEY=value lines of a proposal file. Raises OSError when it cannot be read."""
    changes = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text and not text.startswith("#") and "=" in text:
            key, value = text.split("=", 1)
            changes[key.strip()] = value.strip()
    return changes
