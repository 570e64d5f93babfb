"""The before/after report of a distillation: how much forgetting and the gap shrank, per task, paired
over the same items, with training curves per channel."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.io import atomic_write_text

CHANNEL_NAMES = {"tt": "T→T", "st": "S→T"}
CHANNEL_COLORS = {"tt": "tab:blue", "st": "tab:orange"}
RETENTION_MARGIN = 5.0  # points: listening "held" unless the CI admits a drop larger than this


def settings_differences(before: Mapping[str, Any], after: Mapping[str, Any], *, generation: bool = True) -> list[str]:
    """What two runs' summaries say they were measured with, where it differs: the generation settings
    (unless ``generation`` is False: nothing compared was generated), the MCQ mode and the scoring
    compatibility (a run's summary without settings checks nothing)."""
    if "settings" not in before or "settings" not in after:
        return []
    said_before, said_after = before["settings"] or {}, after["settings"] or {}
    generated_before, generated_after = said_before.get("generation") or {}, said_after.get("generation") or {}
    fields = [
        (f"generation {k}", generated_before.get(k), generated_after.get(k))
        for k in (sorted(set(generated_before) | set(generated_after)) if generation else ())
    ]
    fields += [(k, said_before.get(k), said_after.get(k)) for k in ("mcq_mode", "compat")]
    return [f"{name}: {b!r} before, {a!r} after" for name, b, a in fields if b != a]


def _generated_tasks(summary: Mapping[str, Any]) -> set[str]:
    """Tasks whose answers were generated (not MCQ options ranked by log-likelihood): the ones the
    generation settings act on."""
    return {t["task"] for t in summary["tasks"] if t.get("mcq_mode") not in ("letter", "cloze")}


def _per_item(run_dir: Path):
    import pandas as pd

    items = pd.read_parquet(run_dir / "items.parquet")
    items = items[items["error"].isna()]
    items = items.assign(value=items["score"].astype(float).fillna(0.0))
    return items.pivot_table(index=["task", "item_id"], columns="arm", values="value", aggfunc="first")


def shrinkage(before_dir: str | Path, after_dir: str | Path, *, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Per task: forgetting and gap before and after, and how much each shrank (before − after; > 0 =
    better), with a paired-bootstrap 95% CI, a Wilcoxon p and the change these items can resolve
    (``resolution``: 80% power) over the items both runs answered in every arm. The base arm (the
    teacher) is the same model in both runs, so only the student's arms move."""
    import numpy as np

    from xkd_eval.analysis.stats import paired_bootstrap_ci, resolution, wilcoxon_p

    summary_before = json.loads((Path(before_dir) / "summary.json").read_text())
    summary_after = json.loads((Path(after_dir) / "summary.json").read_text())
    before, after = _per_item(Path(before_dir)), _per_item(Path(after_dir))
    shared_tasks = set(before.index.get_level_values(0)) & set(after.index.get_level_values(0))
    generated = shared_tasks & (_generated_tasks(summary_before) | _generated_tasks(summary_after))
    differ = settings_differences(summary_before, summary_after, generation=bool(generated))
    if differ:
        raise XkdError(
            f"{before_dir} and {after_dir} were measured with different settings ({'; '.join(differ)}): a "
            "paired comparison needs the same ones; measure the student again with the before run's (e.g. "
            "--max-new-tokens as in its summary.json)"
        )
    scales = {t["task"]: (100.0 if t["scale"] == "percent" else 1.0) for t in summary_before["tasks"]}
    out: dict[str, Any] = {}
    for task in sorted(shared_tasks):
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
                "resolution": resolution(delta_before - delta_after),
            }
        # each of the student's arms on its own: "retained" when its score did not drop
        for name, arm in (("text_score", "slm_text"), ("speech_score", "slm_speech")):
            if arm not in b or arm not in a or not len(common):
                continue
            before_arm, after_arm = scale * b[arm].to_numpy(), scale * a[arm].to_numpy()
            change = after_arm - before_arm
            lo, hi = paired_bootstrap_ci(after_arm, before_arm, seed=seed, n_boot=n_boot)
            entry[name] = {
                "before": float(before_arm.mean()),
                "after": float(after_arm.mean()),
                "change": float(change.mean()),
                "ci": [lo, hi],
                "p_value": wilcoxon_p(after_arm, before_arm),
                "resolution": resolution(change),
            }
            if name == "speech_score" and change.mean() > -RETENTION_MARGIN:
                # retention "held" asks the CI to rule out a drop past the margin: the items that would, at
                # 80% power, were the change seen the true one
                entry[name]["items_to_rule_out_margin"] = resolution(change + RETENTION_MARGIN)["items_needed"]
        out[task] = entry
    return out


def plot_training_curves(training: Mapping[str, Any], path: Path) -> Path | None:
    """Left: the training loss per channel and part (CE, KD), per step; right: the held-out losses per
    channel at each validation. Reads ``training.json`` as ``distill`` writes it (``curves``, ``validation``)."""
    from matplotlib.figure import Figure

    curves = {k: v for k, v in (training.get("curves") or {}).items() if k != "loss" and v}
    validation = training.get("validation") or []
    held_out = sorted({k for row in validation for k in row if k.startswith("val_") and k.endswith("_loss")})
    if not curves and not held_out:
        return None
    fig = Figure(figsize=(11, 4.2), dpi=120)
    train_ax, val_ax = fig.subplots(1, 2)
    for key, points in sorted(curves.items()):
        channel, part = key.split("_", 1)
        style = "-" if part == "ce" else "--"
        label = f"{CHANNEL_NAMES.get(channel, channel)} {part.upper()}"
        color = CHANNEL_COLORS.get(channel)
        train_ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label, color=color, linewidth=1.1)
    train_ax.set(xlabel="optimizer step", ylabel="loss per response token", title="Training loss per channel")
    # the weighted total is a multiple of the channels' scale (st_weight 4: four times): its own axis keeps
    # the channels' curves readable
    own_axis = "val_loss" in held_out and len(held_out) > 1
    total_ax = val_ax.twinx() if own_axis else val_ax
    for key in held_out:
        points = [(row["step"], row[key]) for row in validation if isinstance(row.get(key), int | float)]
        channel = key[len("val_") : -len("_loss")]
        if key == "val_loss":
            ax, style, label = total_ax, "s--", "total, weighted" + (" (right axis)" if own_axis else "")
        else:
            ax, style, label = val_ax, "o-", CHANNEL_NAMES.get(channel, channel)
        color = CHANNEL_COLORS.get(channel, "0.4")
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label, color=color, linewidth=1.1)
    val_ax.set(xlabel="optimizer step", ylabel="CE + λ·KD per response token", title="Held-out loss per channel")
    if own_axis:
        total_ax.set_ylabel("weighted total of the channels")
    lines = val_ax.lines + (total_ax.lines if own_axis else [])
    for ax, shown in ((train_ax, train_ax.lines), (val_ax, lines)):
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(shown, [line.get_label() for line in shown], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_arms(before: Mapping[str, Any], after: Mapping[str, Any], path: Path) -> Path | None:
    """Per task, each arm's score before and after (grouped bars, 95% CI whiskers), from the two summaries."""
    import numpy as np
    from matplotlib.figure import Figure

    after_tasks = {t["task"]: t for t in after.get("tasks", [])}
    tasks = [t for t in before.get("tasks", []) if t["task"] in after_tasks]
    if not tasks:
        return None
    arms = ("base_text", "slm_text", "slm_speech")
    fig = Figure(figsize=(4.2 * len(tasks), 4.2), dpi=120)
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    for ax, task in zip(axes, tasks, strict=True):
        x = np.arange(len(arms))
        for offset, (label, summary, color) in zip(
            (-0.2, 0.2), (("before", task, "tab:blue"), ("after", after_tasks[task["task"]], "tab:orange")), strict=True
        ):
            blocks = [summary.get("arms", {}).get(arm) or {} for arm in arms]
            scores = np.array([b.get("score", np.nan) for b in blocks], dtype=float)
            lows = np.array([(b.get("ci") or [np.nan, np.nan])[0] for b in blocks], dtype=float)
            highs = np.array([(b.get("ci") or [np.nan, np.nan])[1] for b in blocks], dtype=float)
            ax.bar(x + offset, scores, width=0.4, color=color, label=label)
            ax.errorbar(x + offset, scores, yerr=[scores - lows, highs - scores], fmt="none", ecolor="k", capsize=3)
            for xi, score, top in zip(x + offset, scores, highs, strict=True):
                if not np.isnan(score):
                    above = top if not np.isnan(top) else score  # above the whisker, where it stays legible
                    ax.annotate(f"{score:.1f}", (xi, above), xytext=(0, 2), textcoords="offset points",
                                ha="center", va="bottom", fontsize=7)  # fmt: skip
        ax.set_xticks(x, ["teacher\non text", "student\non text", "student\non speech"])
        unit = "%" if task.get("scale", "percent") == "percent" else task["scale"]
        ax.set(title=task["task"], ylabel=f"score ({unit})")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Scores by arm before and after distillation, 95% bootstrap CIs")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _early_stop_warning(training: Mapping[str, Any]) -> list[str]:
    """A run cut short (time budget, interrupt) is a different experiment: say so above the figures."""
    stopped = training.get("stopped")
    if not stopped or stopped == "max_steps":
        return []
    planned = (training.get("config") or {}).get("max_steps")
    of = f" of {planned}" if planned else ""
    if stopped == "fitted_to_time_budget":
        per_step = training.get("train_seconds", 0) / max(1, training.get("steps") or 1)
        return [
            f"**The schedule was fitted to the time budget: {training.get('steps', '?')}{of} steps** (a step took "
            f"{per_step:.1f} s on this machine): these figures are those of a shorter run than the recipe asks for.",
            "",
        ]
    return [
        f"**Training stopped early ({stopped}) at step {training.get('steps', '?')}{of}**: these figures are "
        "those of a shorter run than the recipe asks for.",
        "",
    ]


def hearing_change(before_dir: str | Path, after_dir: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """Per task, from both runs' ``hearing.csv`` (``--diagnostics hearing``): the mean word accuracy of
    the repetitions before and after (percent) over the items probed in both, and the paired change with
    a paired-bootstrap 95% CI. Empty where either run has no hearing probe."""
    import pandas as pd

    from xkd_eval.analysis.stats import paired_bootstrap_ci

    paths = [Path(d) / "hearing.csv" for d in (before_dir, after_dir)]
    if not all(p.is_file() for p in paths):
        return {}
    before, after = (pd.read_csv(p).set_index(["task", "item_id"])["word_accuracy"] for p in paths)
    both = pd.concat({"before": before, "after": after}, axis=1).dropna()
    out: dict[str, Any] = {}
    for task, rows in both.groupby(level="task", sort=False):
        a, b = 100 * rows["before"].to_numpy(), 100 * rows["after"].to_numpy()
        out[str(task)] = {
            "n": int(len(rows)), "before": float(a.mean()), "after": float(b.mean()),
            "change": float(b.mean() - a.mean()), "ci": list(paired_bootstrap_ci(b, a, seed=seed)),
        }  # fmt: skip
    return out


def write_distill_report(out_dir: str | Path) -> Path:
    """``out_dir`` holds ``before/`` and ``after/`` (measurement runs) and ``training.json``."""
    from xkd_eval.report import compare_runs

    out = Path(out_dir)
    compare = compare_runs([out / "before", out / "after"], out / "compare")
    training = json.loads((out / "training.json").read_text()) if (out / "training.json").is_file() else {}
    curves = plot_training_curves(training, out / "training_curves.png") if training else None
    summaries = [json.loads((out / run / "summary.json").read_text()) for run in ("before", "after")]
    arm_plot = plot_arms(*summaries, out / "arms_before_after.png")
    shrank = shrinkage(out / "before", out / "after")
    atomic_write_text(out / "shrinkage.json", json.dumps(shrank, indent=2))

    def moved(entry: Mapping[str, Any] | None, key: str) -> str:
        if not entry:
            return "—"
        change = f"{entry[key]:+.1f} {ci(entry)}, p {entry['p_value']:.2g}"
        return f"{entry['before']:+.1f} → {entry['after']:+.1f}; {change}"

    lines = [
        "# Cross-modal distillation: before and after",
        "",
        f"Teacher `{training.get('teacher', '?')}`, student `{training.get('student', '?')}`, the same items and "
        "settings before and after. Forgetting = base_text − slm_text, gap = slm_text − slm_speech (> 0 = worse); "
        "*shrank by* = before − after, *change* = after − before, each with a paired-bootstrap 95% CI over the "
        "items and a Wilcoxon signed-rank p.",
        "",
        *_early_stop_warning(training),
        "| task | n | forgetting: before → after; shrank by | gap: before → after; shrank by "
        "| student on text: change | student on speech: change |",
        "|---|---|---|---|---|---|",
    ]
    for task, entry in shrank.items():
        cells = [
            moved(entry.get("forgetting"), "shrank_by"),
            moved(entry.get("gap"), "shrank_by"),
            moved(entry.get("text_score"), "change"),
            moved(entry.get("speech_score"), "change"),
        ]
        lines.append(f"| `{task}` | {entry['n']} | " + " | ".join(cells) + " |")
    heard = hearing_change(out / "before", out / "after")
    if heard:
        atomic_write_text(out / "hearing_change.json", json.dumps(heard, indent=2))
        lines += [
            "",
            "**Hearing** (`--diagnostics hearing`): word accuracy of the student's repetitions of the clips its "
            'speech arm hears ("Repeat exactly what the speaker says."), before → after, paired over items. A '
            "student taught to answer what it hears may answer instead of repeating: then this falls for that "
            "reason too.",
            "",
            "| task | n | word accuracy before → after | change |",
            "|---|---|---|---|",
            *(
                f"| `{task}` | {e['n']} | {e['before']:.1f} → {e['after']:.1f} | {e['change']:+.1f} {ci(e)} |"
                for task, e in heard.items()
            ),
        ]
    lines += ["", "## Reading", "", *reading(shrank), ""]
    if arm_plot:
        lines += [f"![scores by arm before and after]({arm_plot.name})", ""]
    lines += example_answers(out / "before", out / "after")
    lines += [f"Every arm before and after, with CIs: [{compare.name}]({compare.relative_to(out)})", ""]
    if curves:
        lines += ["## Training", "", f"![training curves]({curves.name})", ""]
    facts = {
        "steps": training.get("steps"),
        "stopped by": training.get("stopped"),
        "training time (s)": training.get("train_seconds"),
        "examples (train / held out)": f"{training.get('examples_train')} / {training.get('examples_eval')}"
        if "examples_train" in training
        else None,
        "response tokens trained": training.get("tokens_trained"),
        "training loss first → last": f"{training['loss_first']:.3f} → {training['loss_last']:.3f}"
        if training.get("loss_first") is not None and training.get("loss_last") is not None
        else None,
        "trainable parameters": f"{training['trainable_parameters']:,}" if "trainable_parameters" in training else None,
    }
    lines += [f"- {key}: {value}" for key, value in facts.items() if value is not None]
    if training.get("config"):
        config = training["config"]
        shown = ", ".join(f"{k}={config[k]}" for k in RECIPE_KEYS if k in config)
        if config.get("teacher_context"):
            shown += f", teacher_context={len(config['teacher_context'])} worked turns"
        lines += [f"- recipe: {shown}"]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def example_answers(before_dir: Path, after_dir: Path, *, per_task: int = 2, width: int = 110) -> list[str]:
    """The student's first answers per task and arm, before → after: what the scores summarise."""
    import pandas as pd

    before, after = (pd.read_parquet(d / "items.parquet") for d in (before_dir, after_dir))
    keys = ["task", "item_id", "arm"]
    joined = before.merge(after, on=keys, suffixes=("_before", "_after"))
    joined = joined[joined["arm"].isin(["slm_text", "slm_speech"]) & joined["mcq_mode_before"].ne("cloze")]
    if joined.empty:
        return []

    def cell(text) -> str:
        text = " ".join(str(text if text is not None else "—").split())
        text = text if len(text) <= width else text[: width - 1] + "…"
        return text.replace("|", "\\|")

    lines = ["## Example answers of the student, before → after", "", "| task | item | arm | before | after |"]
    lines.append("|---|---|---|---|---|")
    for task, rows in joined.groupby("task", sort=False):
        ids = list(dict.fromkeys(rows["item_id"]))[:per_task]
        for _, row in rows[rows["item_id"].isin(ids)].iterrows():
            lines.append(
                f"| `{task}` | {row['item_id']} | {row['arm']} | {cell(row['response_before'])} "
                f"| {cell(row['response_after'])} |"
            )
    return [*lines, ""]


RECIPE_KEYS = (
    "data", "data_limit", "targets", "tt_weight", "st_weight", "lam", "temperature", "divergence", "top_k",
    "trainable", "lora_rank", "learning_rate", "projector_learning_rate", "batch_size", "epochs", "max_steps", "seed",
)  # fmt: skip


def _excludes_zero(entry: Mapping[str, Any]) -> bool:
    return entry["ci"][0] > 0 or entry["ci"][1] < 0


def reading(shrank: Mapping[str, Any]) -> list[str]:
    """One sentence per task and measure: which way it moved and whether its CI excludes no change."""
    lines = []
    for task, entry in shrank.items():
        for name in ("forgetting", "gap"):
            e = entry.get(name)
            if not e:
                continue
            if _excludes_zero(e):
                sure = "the CI excludes no change"
            else:
                sure = "the CI includes no change" + unresolved_clause(e.get("resolution"))
            if round(e["shrank_by"], 1) == 0:
                lines.append(f"- `{task}` {name} did not move ({e['shrank_by']:+.1f} points {ci(e)}): {sure}.")
                continue
            way = "shrank" if e["shrank_by"] > 0 else "grew"
            lines.append(f"- `{task}` {name} {way} by {abs(e['shrank_by']):.1f} points {ci(e)}: {sure}.")
        speech = entry.get("speech_score")
        if speech and "listen" in task:
            lines.append(
                f"- Listening retention (`{task}`, the student on speech): {speech['before']:.1f} → "
                f"{speech['after']:.1f}, change {speech['change']:+.1f} {ci(speech)}: {retention_verdict(speech)}."
            )
    return lines


def unresolved_clause(resolved: Mapping[str, Any] | None) -> str:
    """Why a CI that includes no change is not a finding of no effect: what these items can resolve,
    and how many would resolve the change seen (a paired t-test at 80% power)."""
    if not resolved or resolved.get("resolvable") is None:
        return ""
    clause = (
        f"; {resolved['n']} items resolve a change of {resolved['resolvable']:.1f} points "
        f"{round(resolved['power'] * 100)}% of the time"
    )
    if resolved.get("items_needed"):
        clause += f", and this one would need about {resolved['items_needed']:,} items"
    return clause


def retention_verdict(speech: Mapping[str, Any]) -> str:
    """Held, lost or not known: a CI that admits neither a drop past the margin nor no change at all
    would be miscalled either way, and with few items (the 65 listen items the subset first had: about
    ±8 points) it often does."""
    low, high = speech["ci"]
    if low > -RETENTION_MARGIN:
        return f"held (the CI rules out a drop of more than {RETENTION_MARGIN:g} points)"
    if high < 0:
        return "did not hold (the CI excludes no change)"
    needed = speech.get("items_to_rule_out_margin")
    tell = (
        f"about {needed:,} items would tell, were the change seen the true one" if needed else "more items would tell"
    )
    return f"not known: the CI includes no change, and also a drop of more than {RETENTION_MARGIN:g} points ({tell})"


def ci(entry: Mapping[str, Any]) -> str:
    return f"[{entry['ci'][0]:+.1f}, {entry['ci'][1]:+.1f}]"
