"""``report.md`` for one run and ``compare.md`` across runs, with their PNG charts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xkd_eval.io import atomic_write_text
from xkd_eval.report import plots
from xkd_eval.report.plots import ARM_LABELS, ARMS

if TYPE_CHECKING:
    import pandas as pd

TESTS = {"mcnemar-exact": "McNemar exact", "wilcoxon": "Wilcoxon signed-rank"}
MCQ_MODES = {
    "cloze": (
        "scored by option log-likelihood (cloze): each option's text after the bare question; spoken, the bare "
        "question too where the task has a clip of it (the built-in tasks), else the task's clip, options read"
    ),
    "letter": "scored by the log-likelihood of the option letters (letter)",
    "generate": "generated, then scored from the text (generate)",
}
COMPARISON_ARMS = {"forgetting": ("base_text", "slm_text"), "gap": ("slm_text", "slm_speech")}
MAX_FAILED_LISTED = 200


def _backend_line(backends: Mapping[str, str]) -> list[str]:
    """Where the answers came from, when not all from transformers in this process."""
    if set(backends.values()) <= {"transformers"}:
        return []
    return ["- **Backends**: " + ", ".join(f"{role} through {name}" for role, name in backends.items())]


def _mcq_mode_line(settings: Mapping[str, Any]) -> list[str]:
    mode, source = settings.get("mcq_mode"), settings.get("mcq_mode_source")
    if not mode:
        return []
    return [f"- **Multiple-choice answers**: {MCQ_MODES.get(mode, mode)}" + (f" ({source})" if source else "")]


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and its charts into ``run_dir`` from its ``items.parquet`` and ``summary.json``."""
    import pandas as pd

    run = Path(run_dir)
    summary = _load_summary(run)
    items = pd.read_parquet(run / "items.parquet")
    tasks = summary["tasks"]

    lines = [
        "# xkd-eval report",
        "",
        f"- **Speech LLM** (`slm_text`, `slm_speech`): {_code(summary.get('model'))}",
        f"- **Base text LLM** (`base_text`): {_code(summary.get('base'))}",
        f"- **Tasks**: {len(tasks)}; {len(items)} result rows in `items.parquet`",
        *_mcq_mode_line(summary.get("settings") or {}),
        *_backend_line(summary.get("backends") or {}),
        "",
        "Scores are percentages for binary scorers (an answer that could not be extracted counts as wrong;",
        "the extraction-failure rate is reported) and mean 1–5 ratings for judge-scored tasks. Intervals",
        "are 95% percentile-bootstrap CIs over items; p-values come from paired tests (exact McNemar for",
        "binary scores, Wilcoxon signed-rank for 1–5 ratings). **Forgetting** = base_text − slm_text and",
        "**modality gap** = slm_text − slm_speech; a positive value means the speech LLM does worse. Within",
        "a task every arm is scored on the same items (those with a usable result in every arm), so",
        "base_text − slm_speech = forgetting + gap exactly. *Resolves* is the smallest Δ that a paired",
        "t-test over these items detects 4 times in 5 (80% power, α 0.05, the spread of the per-item",
        "differences seen): a CI that includes zero rules out little below it.",
        "",
    ]
    if tasks:
        lines += ["## Overview", "", *_overview(tasks), ""]
        lines += ["![Scores per task and arm](scores.png)", ""]
        plots.plot_scores(tasks, run / "scores.png")
        if plots.plot_deltas(tasks, run / "deltas.png"):
            lines += ["![Forgetting and modality gap per task](deltas.png)", ""]
    else:
        lines += ["No task results in this run.", ""]
    for task in tasks:
        lines += _task_section(task, items[items["task"] == task["task"]], run)
    hearing = (summary.get("diagnostics") or {}).get("hearing")
    if hearing:
        scales = {t["task"]: t["scale"] for t in tasks}
        lines += _hearing_section(hearing, scales)
    # the runner records how the run was made beside the schema's keys; show it as written
    if summary.get("settings"):
        lines += ["## Run settings", "", "```json", json.dumps(summary["settings"], indent=2, default=str), "```", ""]
    out = run / "report.md"
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write ``compare.md`` and ``compare.png``: several runs (e.g. before/after distillation) side by side."""
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    labels = _run_labels(dirs)
    summaries = [_load_summary(d) for d in dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    lines = [
        "# xkd-eval comparison",
        "",
        "| run | speech LLM | base text LLM | backends | directory |",
        "|---|---|---|---|---|",
        *(
            f"| {_cell(label)} | {_code(s.get('model'))} | {_code(s.get('base'))} | "
            f"{_cell(', '.join(sorted(set((s.get('backends') or {}).values()))) or '—')} | `{d}` |"
            for label, s, d in zip(labels, summaries, dirs, strict=True)
        ),
        "",
        "Forgetting = base_text − slm_text, modality gap = slm_text − slm_speech; positive = worse.",
        "Cells give the score or Δ, its 95% bootstrap CI and, for Δ, the paired test's p-value.",
        "",
        "![Forgetting and modality gap per run](compare.png)",
        "",
    ]
    plots.plot_compare(list(zip(labels, summaries, strict=True)), out / "compare.png")
    names = list(dict.fromkeys(t["task"] for s in summaries for t in s["tasks"]))
    for name in names:
        per_run = [next((t for t in s["tasks"] if t["task"] == name), None) for s in summaries]
        scale = next(t["scale"] for t in per_run if t)
        arms = [arm for arm in ARMS if any(t and arm in t["arms"] for t in per_run)]
        lines += [
            f"## {name}",
            "",
            f"Scale: {_scale_words(scale)}.",
            "",
            "| run | n | " + " | ".join(f"`{arm}`" for arm in arms) + " | forgetting | modality gap |",
            "|---|---:|" + "---:|" * len(arms) + "---|---|",
        ]
        for label, task in zip(labels, per_run, strict=True):
            if task is None:
                lines.append(f"| {_cell(label)} | — |" + " — |" * (len(arms) + 2))
                continue
            cells = [_num(task["arms"][arm]["score"], scale) if arm in task["arms"] else "—" for arm in arms]
            deltas = [_delta_cell(task.get(name_), scale) for name_ in COMPARISON_ARMS]
            lines.append(f"| {_cell(label)} | {task['n']} | " + " | ".join(cells + deltas) + " |")
        counts = {t["n"] for t in per_run if t}
        if len(counts) > 1:
            lines += ["", f"Note: the runs scored different numbers of items ({', '.join(map(str, sorted(counts)))})."]
        lines.append("")
    lines += _agreement_section(labels, dirs)
    path = out / "compare.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _task_section(task: Mapping[str, Any], items: pd.DataFrame, run: Path) -> list[str]:
    scale = task["scale"]
    excluded = task["excluded"]
    total = task["n"] + excluded["n"]
    mode = task.get("mcq_mode")
    lines = [
        f"## {task['task']}",
        "",
        f"Scorer `{task.get('scorer')}`; {_scale_words(scale)}.",
        f"Answers: {MCQ_MODES.get(mode, mode) if mode else 'not recorded'}.",
        f"Items scored: {task['n']} of {total}, the same in every arm.",
        "",
        "| arm | score | 95% CI | n | " + ("extraction failures |" if scale == "percent" else "judge failures |"),
        "|---|---:|---|---:|---:|",
    ]
    for arm, stats in task["arms"].items():
        rate = stats.get("extraction_failure_rate")
        lines.append(
            f"| `{arm}` ({ARM_LABELS[arm]}) | {_num(stats['score'], scale)} | {_ci(stats['ci'], scale)} | "
            f"{stats['n']} | {'—' if rate is None else f'{rate:.1f}%'} |"
        )
    comparisons = [name for name in COMPARISON_ARMS if name in task]
    if comparisons:
        lines += [
            "",
            f"| comparison | Δ ({_unit(scale)}; > 0 = worse) | 95% CI | p | test | relative | resolves (80% power) |",
            "|---|---:|---|---:|---|---:|---:|",
        ]
        for name in comparisons:
            c = task[name]
            ref, other = COMPARISON_ARMS[name]
            relative = c.get("relative_pct")
            relative_text = "—" if relative is None else f"{_signed(relative, 1)}% of `{ref}`"
            title = "forgetting" if name == "forgetting" else "modality gap"
            lines.append(
                f"| {title}: `{ref}` − `{other}` | {_num(c['delta'], scale, signed=True)} | {_ci(c['ci'], scale)} | "
                f"{_p(c.get('p_value'))} | {TESTS.get(c.get('test'), c.get('test'))} | {relative_text} | "
                f"{_resolves(c.get('resolvable'), scale)} |"
            )
    lines.append("")
    if "decomposition" in task:
        d = task["decomposition"]
        lines.append(
            f"Decomposition: base_text − slm_speech = {_num(d['total'], scale, signed=True)} = forgetting "
            f"{_num(d['forgetting'], scale, signed=True)} + gap {_num(d['gap'], scale, signed=True)} "
            "(exact before rounding)."
        )
    agreement = task.get("gap", {}).get("agreement") or {}
    parts = []
    if agreement.get("same_answer") is not None:
        parts.append(f"same extracted answer on {agreement['same_answer']:.1f}% of items")
    if agreement.get("same_correctness") is not None:
        parts.append(f"both right or both wrong on {agreement['same_correctness']:.1f}%")
    if parts:
        lines.append("Text/speech agreement (`slm_text` vs `slm_speech`): " + "; ".join(parts) + ".")
    if lines[-1]:
        lines.append("")
    lines += _excluded_lines(task, items)

    for key, groups in task.get("breakdowns", {}).items():
        if not groups:
            continue
        arms = [arm for arm in ARMS if arm in task["arms"]]
        lines += [
            f"### {task['task']} by {key}",
            "",
            f"| {key} | n | " + " | ".join(f"`{arm}`" for arm in arms) + " |",
            "|---|---:|" + "---:|" * len(arms),
        ]
        for value, row in groups.items():
            lines.append(f"| {_cell(value)} | {row['n']} | " + " | ".join(_num(row.get(a), scale) for a in arms) + " |")
        name = f"breakdown_{plots.slug(task['task'])}_{plots.slug(key)}.png"
        if plots.plot_breakdown(task, key, run / name):
            lines += ["", f"![{task['task']} by {key}]({name})"]
        lines.append("")
    return lines


def _excluded_lines(task: Mapping[str, Any], items: pd.DataFrame) -> list[str]:
    excluded = task["excluded"]
    if not excluded["n"]:
        return ["Excluded items: none.", ""]
    by_arm = ", ".join(f"`{arm}` {k}" for arm, k in excluded["by_arm"].items() if k)
    lines = [
        f"Excluded items: {excluded['n']} (no usable result in every arm; unusable results per arm: {by_arm}).",
        "",
        *(f"- {_cell(reason)}" for reason in excluded["reasons"]),
    ]
    # the summary keeps only the first few reasons; the items table has every failed row
    if "error" in items.columns:
        failed = items[items["error"].map(lambda e: isinstance(e, str) and bool(e.strip()))]
        if len(failed) > len(excluded["reasons"]):
            lines += ["", f"<details><summary>All {len(failed)} failed results</summary>", ""]
            for row in failed.head(MAX_FAILED_LISTED).itertuples(index=False):
                lines.append(f"- {_cell(str(row.item_id))} [{row.arm}]: {_cell(str(row.error))}")
            if len(failed) > MAX_FAILED_LISTED:
                lines.append(f"- … and {len(failed) - MAX_FAILED_LISTED} more (see `items.csv`)")
            lines += ["", "</details>"]
    lines.append("")
    return lines


def _overview(tasks: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| task | scale | n | `base_text` | `slm_text` | `slm_speech` | forgetting | modality gap |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for t in tasks:
        scale = t["scale"]
        scores = [_num(t["arms"][arm]["score"], scale) if arm in t["arms"] else "—" for arm in ARMS]
        deltas = [_delta_cell(t.get(name), scale) for name in COMPARISON_ARMS]
        lines.append(
            f"| {_cell(t['task'])} | {'%' if scale == 'percent' else '1–5'} | {t['n']} | "
            + " | ".join(scores + deltas)
            + " |"
        )
    return lines


def _hearing_section(hearing: Mapping[str, Any], scales: Mapping[str, str]) -> list[str]:
    """``--diagnostics hearing``: how well the speech LLM repeats each clip, and the gap split by it."""
    any_task = next(iter(hearing.values()))
    lines = [
        "## Hearing the spoken queries",
        "",
        f'The speech LLM was asked "{any_task["instruction"]}" on each clip its speech arm heard, and its',
        "repetition scored like `listen`: word accuracy = max(0, 1 − WER) against the clip's words (see",
        "`hearing.csv`). The gap is then split by how well each item was heard: a gap that sits in the",
        "misheard items is a hearing problem, one that stays where the query was heard is reasoning over",
        "speech. A model taught to answer rather than repeat (a distilled student) scores low here for",
        "that reason too. ρ is Spearman's rank correlation of word accuracy with the speech score.",
        "",
        "| task | probed | word accuracy | repeated exactly | ρ (heard vs speech score) |",
        "|---|---:|---:|---:|---|",
    ]
    for task, result in hearing.items():
        rho = result.get("spearman")
        rho_cell = "—" if not rho else f"{_signed(rho['rho'], 2)}, p {_p(rho['p'])}"
        failed = f" ({result['n_failed']} failed)" if result.get("n_failed") else ""
        lines.append(
            f"| {_cell(task)} | {result['n']}{failed} | {_num(result['word_accuracy'], 'percent')}% "
            f"{_ci(result.get('ci'), 'percent')} | {_num(result['exact'], 'percent')}% | {rho_cell} |"
        )
    lines.append("")
    for task, result in hearing.items():
        scale = scales.get(task, "percent")
        lines += [
            f"**{_cell(task)}**: scores by how well the question was heard",
            "",
            "| heard (word accuracy) | items | `slm_text` | `slm_speech` | gap |",
            "|---|---:|---:|---:|---:|",
        ]
        for band in result["bands"]:
            lines.append(
                f"| {band['band']} | {band['n']} | {_num(band['text'], scale)} | {_num(band['speech'], scale)} | "
                f"{_num(band['gap'], scale, signed=True)} |"
            )
        lines.append("")
    return lines


def _load_summary(run: Path) -> dict[str, Any]:
    path = run / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} an xkd-eval run directory?")
    return json.loads(path.read_text(encoding="utf-8"))


SHOWN_DIFFERENCES = 20


def _models_measured(summary: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The models a run measured, whatever backend answered (``vllm:organism`` is ``organism``)."""
    from xkd_eval.models import model_behind

    model, base = summary.get("model"), summary.get("base")
    return model_behind(model) if model else None, model_behind(base) if base else None


def _agreement_section(labels: Sequence[str], dirs: Sequence[Path]) -> list[str]:
    """Each later run's responses against the first's, item by item, where both measured the same models (one
    model through two backends, or under two settings); runs of different models are compared by scores only."""
    import pandas as pd

    from xkd_eval.report.agreement import response_agreement

    first = pd.read_parquet(dirs[0] / "items.parquet")
    measured = _models_measured(_load_summary(dirs[0]))
    lines: list[str] = []
    for label, folder in zip(labels[1:], dirs[1:], strict=True):
        if _models_measured(_load_summary(folder)) != measured:
            continue
        arms = response_agreement(first, pd.read_parquet(folder / "items.parquet"))
        if not arms:
            continue
        lines += [
            f"## Item by item: {_cell(label)} against {_cell(labels[0])}",
            "",
            "| task | arm | items in both | equal responses |",
            "|---|---|---:|---:|",
            *(f"| {a.task} | `{a.arm}` | {a.n} | {a.equal} ({100 * a.share:.1f}%) |" for a in arms),
            "",
        ]
        differing = [(a, *d) for a in arms for d in a.differing]
        for arm, item, one, other in differing[:SHOWN_DIFFERENCES]:
            lines.append(f"- {arm.task} `{arm.arm}` {item}: {_cell(repr(one))} vs {_cell(repr(other))}")
        if len(differing) > SHOWN_DIFFERENCES:
            lines.append(f"- … {len(differing) - SHOWN_DIFFERENCES} more (compare the runs' items.parquet)")
        lines.append("")
    return lines


def _run_labels(dirs: Sequence[Path]) -> list[str]:
    labels = [d.resolve().name or str(d) for d in dirs]
    if len(set(labels)) < len(labels):  # runs/a/out and runs/b/out: name them by parent too
        labels = [f"{d.resolve().parent.name}/{d.resolve().name}" for d in dirs]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return labels


def _delta_cell(comparison: Mapping[str, Any] | None, scale: str) -> str:
    if not comparison or comparison.get("delta") is None:
        return "—"
    return (
        f"{_num(comparison['delta'], scale, signed=True)} {_ci(comparison['ci'], scale)}, p {_p(comparison['p_value'])}"
    )


def _digits(scale: str) -> int:
    return 1 if scale == "percent" else 2


def _num(value: float | None, scale: str, signed: bool = False) -> str:
    if value is None:
        return "—"
    return _signed(value, _digits(scale)) if signed else _plain(value, _digits(scale))


def _plain(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0"


def _signed(value: float, digits: int) -> str:
    text = _plain(value, digits)
    return text if text.startswith("-") or float(text) == 0 else f"+{text}"


def _ci(ci: Sequence[float | None] | None, scale: str) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "—"
    return f"[{_num(ci[0], scale)}, {_num(ci[1], scale)}]"


def _resolves(value: float | None, scale: str) -> str:
    return "—" if value is None else f"±{_num(value, scale)}"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _unit(scale: str) -> str:
    return "percentage points" if scale == "percent" else "1–5 points"


def _scale_words(scale: str) -> str:
    return "scores in % (binary scorer)" if scale == "percent" else "scores are mean 1–5 judge ratings"


def _code(name: str | None) -> str:
    return "—" if name is None else f"`{_cell(name)}`"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
