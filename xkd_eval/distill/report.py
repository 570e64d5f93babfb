"""The before/after report of a distillation: how much forgetting and the gap shrank, per task, paired
over the same items, with training curves per channel."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xkd_eval.io import atomic_write_text

NON_CURVES = {"step", "lr", "seconds", "tokens", "grad_norm", "epoch"}


def _per_item(run_dir: Path):
    import pandas as pd

    items = pd.read_parquet(run_dir / "items.parquet")
    items = items[items["error"].isna()]
    items = items.assign(value=items["score"].astype(float).fillna(0.0))
    return items.pivot_table(index=["task", "item_id"], columns="arm", values="value", aggfunc="first")


def shrinkage(before_dir: str | Path, after_dir: str | Path, *, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Per task: forgetting and gap before and after, and how much each shrank (before − after; > 0 =
    better), with a paired-bootstrap 95% CI and a Wilcoxon p over the items both runs answered in every
    arm. The base arm (the teacher) is the same model in both runs, so only the student's arms move."""
    import numpy as np

    from xkd_eval.analysis.stats import paired_bootstrap_ci, wilcoxon_p

    before, after = _per_item(Path(before_dir)), _per_item(Path(after_dir))
    summary_before = json.loads((Path(before_dir) / "summary.json").read_text())
    scales = {t["task"]: (100.0 if t["scale"] == "percent" else 1.0) for t in summary_before["tasks"]}
    out: dict[str, Any] = {}
    for task in sorted(set(before.index.get_level_values(0)) & set(after.index.get_level_values(0))):
        b, a = before.loc[task], after.loc[task]
        common = b.dropna().index.intersection(a.dropna().index)
        b, a = b.loc[common], a.loc[common]
        scale = scales.get(task, 1.0)
        entry: dict[str, Any] = {"n": int(len(common))}
        pairs = {"forgetting": ("base_text", "slm_text"), "gap": ("slm_text", "slm_speech")}
        for name, (ref, other) in pairs.items():
            if ref not in b or other not in b or ref not in a or other not in a or not len(common):
                continue
            delta_before = scale * (b[ref].to_numpy() - b[other].to_numpy())
            delta_after = scale * (a[ref].to_numpy() - a[other].to_numpy())
            lo, hi = paired_bootstrap_ci(delta_before, delta_after, seed=seed, n_boot=n_boot)
            entry[name] = {
                "before": float(np.mean(delta_before)),
                "after": float(np.mean(delta_after)),
                "shrank_by": float(np.mean(delta_before - delta_after)),
                "ci": [lo, hi],
                "p_value": wilcoxon_p(delta_before, delta_after),
            }
        if "slm_speech" in b and "slm_speech" in a and len(common):
            entry["speech_score"] = {
                "before": float(scale * b["slm_speech"].mean()),
                "after": float(scale * a["slm_speech"].mean()),
            }
        out[task] = entry
    return out


def plot_training_curves(training: Mapping[str, Any], path: Path) -> Path | None:
    """Loss curves per channel (every numeric series of the training log except bookkeeping)."""
    from matplotlib.figure import Figure

    log = training.get("log") or training.get("history") or []
    validation = training.get("validation") or []
    series = sorted({k for row in log for k, v in row.items() if k not in NON_CURVES and isinstance(v, int | float)})
    if not series:
        return None
    fig = Figure(figsize=(9, 4.5), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for key in series:
        points = [(row["step"], row[key]) for row in log if isinstance(row.get(key), int | float)]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key, linewidth=1.2)
    for key in sorted({k for row in validation for k in row if k not in NON_CURVES}):
        points = [(row["step"], row[key]) for row in validation if isinstance(row.get(key), int | float)]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o--", label=f"held-out {key}", linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Distillation: training loss per channel")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_distill_report(out_dir: str | Path) -> Path:
    """``out_dir`` holds ``before/`` and ``after/`` (measurement runs) and ``training.json``."""
    from xkd_eval.report import compare_runs

    out = Path(out_dir)
    compare = compare_runs([out / "before", out / "after"], out / "compare")
    training = json.loads((out / "training.json").read_text()) if (out / "training.json").is_file() else {}
    curves = plot_training_curves(training, out / "training_curves.png") if training else None
    shrank = shrinkage(out / "before", out / "after")
    atomic_write_text(out / "shrinkage.json", json.dumps(shrank, indent=2))

    def ci(entry) -> str:
        return f"[{entry['ci'][0]:+.1f}, {entry['ci'][1]:+.1f}]"

    lines = [
        "# Cross-modal distillation: before and after",
        "",
        f"Teacher `{training.get('teacher', '?')}`, student `{training.get('student', '?')}`. "
        "Forgetting = base_text − slm_text, gap = slm_text − slm_speech (> 0 = worse); *shrank by* = "
        "before − after over the same items, with a paired-bootstrap 95% CI and a Wilcoxon p.",
        "",
        "| task | n | forgetting before → after | shrank by [95% CI] | gap before → after | shrank by [95% CI] "
        "| speech score before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, entry in shrank.items():
        f, g, s = entry.get("forgetting"), entry.get("gap"), entry.get("speech_score")
        cells = [
            f"{f['before']:+.1f} → {f['after']:+.1f}" if f else "—",
            f"{f['shrank_by']:+.1f} {ci(f)}, p {f['p_value']:.3g}" if f else "—",
            f"{g['before']:+.1f} → {g['after']:+.1f}" if g else "—",
            f"{g['shrank_by']:+.1f} {ci(g)}, p {g['p_value']:.3g}" if g else "—",
            f"{s['before']:.1f} → {s['after']:.1f}" if s else "—",
        ]
        lines.append(f"| `{task}` | {entry['n']} | " + " | ".join(cells) + " |")
    lines += ["", f"Side by side, with every arm's CI: [compare/report.md]({compare.relative_to(out)})", ""]
    if curves:
        lines += ["## Training", "", f"![training curves]({curves.name})", ""]
    for key in ("steps", "wall_time_s", "config"):
        if key in training:
            value = json.dumps(training[key]) if isinstance(training[key], dict) else training[key]
            lines.append(f"- {key}: {value}")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
