"""The report's PNG charts, drawn from ``summary.json`` dicts.

Figures are built on matplotlib's object API with the Agg canvas, never through pyplot: no global
backend is switched and nothing opens a window, so a report can be drawn on a headless server or
from a notebook without side effects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ARMS = ("base_text", "slm_text", "slm_speech")
ARM_LABELS = {
    "base_text": "base LLM, text input",
    "slm_text": "speech LLM, text input",
    "slm_speech": "speech LLM, speech input",
}
COMPARISON_LABELS = {"forgetting": "forgetting", "gap": "modality gap"}
# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and in greyscale print
ARM_COLORS = {"base_text": "#0072B2", "slm_text": "#E69F00", "slm_speech": "#009E73"}
COMPARISON_COLORS = {"forgetting": "#D55E00", "gap": "#CC79A7"}
RUN_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")
SCALES = ("percent", "1-5")
DPI = 150


def slug(text: str) -> str:
    """A file-name-safe form of a task or breakdown name: ``voicebench/sd-qa:usa`` -> ``voicebench-sd-qa-usa``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "task"


def score_label(scale: str) -> str:
    return "score (%)" if scale == "percent" else "score (1–5 judge rating)"


def delta_label(scale: str) -> str:
    unit = "percentage points" if scale == "percent" else "points on the 1–5 scale"
    return f"Δ score ({unit})\nabove 0 = worse"


def plot_scores(tasks: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Grouped bars, one group per task and one bar per arm, with CI whiskers; one panel per scale."""
    panels = _by_scale(tasks)
    widest = max(len(group) for _, group in panels)
    fig = _figure(max(7.0, 2.2 + 1.5 * widest), 3.8 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (scale, group) in zip(axes, panels, strict=True):
        arms = [arm for arm in ARMS if any(arm in t["arms"] for t in group)]
        stats = [[t["arms"].get(arm, {}) for t in group] for arm in arms]
        _grouped_bars(
            ax,
            [_wrap(t["task"]) for t in group],
            [ARM_LABELS[arm] for arm in arms],
            [ARM_COLORS[arm] for arm in arms],
            [[s.get("score") for s in row] for row in stats],
            [[s.get("ci") for s in row] for row in stats],
            scale,
            bottom=0.0 if scale == "percent" else 1.0,
        )
        ax.set_ylabel(score_label(scale))
        if scale == "percent":
            ax.set_ylim(0, 110)
            ax.set_yticks(range(0, 101, 20))
        else:
            ax.set_ylim(1, 5.4)
            ax.set_yticks(range(1, 6))
        ax.set_title(f"Scores by arm ({'tasks scored in percent' if scale == 'percent' else 'judge-rated tasks, 1-5'})")
    _legend(fig, axes)
    fig.suptitle("Score per task and arm, with 95% bootstrap CIs", fontweight="bold")
    return _save(fig, path)


def plot_deltas(tasks: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Forgetting and gap per task with CI whiskers and a zero line; None when no task has either."""
    with_deltas = [t for t in tasks if any(name in t for name in COMPARISON_LABELS)]
    if not with_deltas:
        return None
    panels = _by_scale(with_deltas)
    widest = max(len(group) for _, group in panels)
    fig = _figure(max(7.0, 2.2 + 1.2 * widest), 3.8 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (scale, group) in zip(axes, panels, strict=True):
        names = [name for name in COMPARISON_LABELS if any(name in t for t in group)]
        stats = [[t.get(name, {}) for t in group] for name in names]
        _grouped_bars(
            ax,
            [_wrap(t["task"]) for t in group],
            [_comparison_legend(name) for name in names],
            [COMPARISON_COLORS[name] for name in names],
            [[s.get("delta") for s in row] for row in stats],
            [[s.get("ci") for s in row] for row in stats],
            scale,
            signed=True,
        )
        ax.margins(y=0.15)
        ax.axhline(0.0, color="black", linewidth=0.9)
        ax.set_ylabel(delta_label(scale))
        ax.set_title(f"Forgetting and modality gap ({'points' if scale == 'percent' else 'judge scale, 1-5'})")
    _legend(fig, axes)
    fig.suptitle("What the speech LLM loses, per task, with 95% bootstrap CIs", fontweight="bold")
    return _save(fig, path)


def plot_breakdown(task: Mapping[str, Any], key: str, path: Path) -> Path | None:
    """Bars per breakdown value and arm; None when the breakdown has no groups."""
    groups = task["breakdowns"].get(key) or {}
    if not groups:
        return None
    scale = task["scale"]
    arms = [arm for arm in ARMS if arm in task["arms"]]
    values = list(groups)
    labels = [f"{_wrap(v, 14)}\n(n={groups[v]['n']})" for v in values]
    fig = _figure(min(14.0, max(7.0, 2.6 + 0.45 * len(arms) * len(values))), 4.4)
    ax = fig.subplots()
    _grouped_bars(
        ax,
        labels,
        [ARM_LABELS[arm] for arm in arms],
        [ARM_COLORS[arm] for arm in arms],
        [[groups[v].get(arm) for v in values] for arm in arms],
        None,
        scale,
        bottom=0.0 if scale == "percent" else 1.0,
    )
    if len(values) > 6:
        for tick in ax.get_xticklabels():
            tick.set_rotation(35)
            tick.set_horizontalalignment("right")
    ax.set_ylabel(score_label(scale))
    ax.set_ylim(*((0, 110) if scale == "percent" else (1, 5.4)))
    ax.set_yticks(range(0, 101, 20) if scale == "percent" else range(1, 6))
    ax.set_xlabel(key)
    ax.set_title(f"{task['task']}: score by {key}", fontweight="bold")
    _legend(fig, [ax])
    return _save(fig, path)


def plot_compare(runs: Sequence[tuple[str, Mapping[str, Any]]], path: Path) -> Path:
    """One panel per task: forgetting and gap, one bar per run, with CI whiskers."""
    tasks = list(dict.fromkeys(t["task"] for _, summary in runs for t in summary["tasks"]))
    ncols = min(3, len(tasks)) or 1
    nrows = max(1, math.ceil(len(tasks) / ncols))
    fig = _figure(max(7.0, (1.6 + 0.9 * len(runs)) * ncols + 1.0), 3.6 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, tasks, strict=False):
        per_run = [next((t for t in summary["tasks"] if t["task"] == name), {}) for _, summary in runs]
        scale = next((t["scale"] for t in per_run if t), "percent")
        _grouped_bars(
            ax,
            [COMPARISON_LABELS[c] for c in COMPARISON_LABELS],
            [label for label, _ in runs],
            [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(runs))],
            [[t.get(c, {}).get("delta") for c in COMPARISON_LABELS] for t in per_run],
            [[t.get(c, {}).get("ci") for c in COMPARISON_LABELS] for t in per_run],
            scale,
            signed=True,
        )
        ax.margins(y=0.15)
        ax.axhline(0.0, color="black", linewidth=0.9)
        ax.set_ylabel(delta_label(scale))
        ax.set_title(name)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    _legend(fig, axes, title="run")
    fig.suptitle("Forgetting and modality gap per run, with 95% bootstrap CIs", fontweight="bold")
    return _save(fig, path)


def _grouped_bars(
    ax: Any,
    groups: Sequence[str],
    series: Sequence[str],
    colors: Sequence[str],
    heights: Sequence[Sequence[float | None]],
    cis: Sequence[Sequence[Sequence[float | None] | None]] | None,
    scale: str,
    bottom: float = 0.0,
    signed: bool = False,
) -> None:
    """Bars for ``series`` (legend entries) within each of ``groups`` (x ticks); None draws no bar."""
    x = np.arange(len(groups), dtype=float)
    width = 0.8 / max(1, len(series))
    digits = 1 if scale == "percent" else 2  # as in report.md's tables
    for j, (label, color) in enumerate(zip(series, colors, strict=True)):
        h = np.array([np.nan if v is None else v for v in heights[j]], dtype=float)
        offset = x + (j - (len(series) - 1) / 2) * width
        yerr = None
        if cis is not None:
            lo = np.array([np.nan if not c or c[0] is None else c[0] for c in cis[j]], dtype=float)
            hi = np.array([np.nan if not c or c[1] is None else c[1] for c in cis[j]], dtype=float)
            # a percentile interval can, in skewed samples, sit beside the mean; never draw negative whiskers
            yerr = np.vstack([np.maximum(h - lo, 0.0), np.maximum(hi - h, 0.0)])
        ax.bar(offset, h - bottom, width * 0.92, bottom=bottom, color=color, label=label, zorder=2)
        if yerr is not None and np.isfinite(h).any():
            ax.errorbar(offset, h, yerr=yerr, fmt="none", ecolor="#222222", elinewidth=1.1, capsize=3, zorder=3)
        # the value goes beyond the whisker's end, where neither the bar nor the whisker hides it
        ends = h if yerr is None else np.where(h >= bottom, h + yerr[1], h - yerr[0])
        for xi, v, end in zip(offset, h, ends, strict=True):
            if math.isnan(v):
                continue
            up = v >= bottom
            text = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
            ax.annotate(
                text.replace("-", "\u2212"),  # the minus sign the axis ticks use
                xy=(xi, end if math.isfinite(end) else v),
                xytext=(0, 2 if up else -2),
                textcoords="offset points",
                ha="center",
                va="bottom" if up else "top",
                fontsize=7.5,
            )
    ax.set_xticks(x, groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(fig: Any, axes: Sequence[Any], title: str | None = None) -> None:
    """One legend for the whole figure, below the panels, so that no panel is narrowed or covered."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        ncols=min(3, len(entries)),
        frameon=False,
        title=title,
    )


def _by_scale(tasks: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    panels = [(scale, [t for t in tasks if t["scale"] == scale]) for scale in SCALES]
    return [(scale, group) for scale, group in panels if group]


def _comparison_legend(name: str) -> str:
    return "forgetting (base_text − slm_text)" if name == "forgetting" else "modality gap (slm_text − slm_speech)"


def _wrap(label: str, width: int = 16) -> str:
    """Break long task names after '/' or ':' so that tick labels do not collide."""
    if len(label) <= width:
        return label
    lines, line = [], ""
    for part in re.split(r"(?<=[/:])", label):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = part
        else:
            line += part
    lines.append(line)
    return "\n".join(lines)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
