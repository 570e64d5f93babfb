"""report.md and its charts from a run directory, and the side-by-side comparison of runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xkd_eval.analysis import build_summary, write_tables
from xkd_eval.report import compare_runs, write_report

ARMS = ("base_text", "slm_text", "slm_speech")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_items(seed: int) -> pd.DataFrame:
    """A binary MCQ task with a `domain` breakdown and a failed speech item, and a graded 1-5 task."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(30):
        for arm, p in zip(ARMS, (0.85, 0.7, 0.5), strict=True):
            error = "audio could not be decoded" if arm == "slm_speech" and i == 7 else None
            right = bool(rng.random() < p)
            rows.append(
                {
                    "task": "voicebench/openbookqa",
                    "item_id": str(i),
                    "arm": arm,
                    "model": "tiny-slm",
                    "response": None if error else "B",
                    "extracted": None if error else ("B" if right else "A"),
                    "correct": None if error else right,
                    "score": None if error else float(right),
                    "extraction_failed": False,
                    "error": error,
                    "scorer": "mcq",
                    "binary": True,
                    "mcq_mode": "cloze",
                    "prompt": f"q{i}",
                    "latency_s": 0.01,
                    "domain": ("law", "physics", "health")[i % 3],
                }
            )
    for i in range(15):
        for arm, mean in zip(ARMS, (4.2, 3.8, 3.1), strict=True):
            rows.append(
                {
                    "task": "voicebench/commoneval",
                    "item_id": f"c{i}",
                    "arm": arm,
                    "model": "tiny-slm",
                    "response": "an answer",
                    "extracted": None,
                    "correct": None,
                    "score": float(np.clip(round(rng.normal(mean, 0.8)), 1, 5)),
                    "extraction_failed": False,
                    "error": None,
                    "scorer": "open",
                    "binary": False,
                    "mcq_mode": "generate",
                    "prompt": f"c{i}",
                    "latency_s": 0.02,
                    "domain": None,
                }
            )
    return pd.DataFrame(rows)


def make_run(root: Path, name: str, seed: int) -> Path:
    df = synthetic_items(seed)
    summary = build_summary(
        df,
        model="tiny-slm",
        base="tiny-llm",
        breakdowns={"voicebench/openbookqa": ["domain"], "voicebench/commoneval": []},
        n_boot=300,
    )
    run = root / name
    write_tables(df, run, summary)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    return make_run(root, "before", 0), make_run(root, "after", 1)


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_write_report(runs):
    run = runs[0]
    path = write_report(run)
    assert path == run / "report.md"
    for name in ("items.parquet", "items.csv", "summary.json", "scores.png", "deltas.png"):
        assert (run / name).is_file(), name
    breakdown = run / "breakdown_voicebench-openbookqa_domain.png"
    assert is_png(run / "scores.png") and is_png(run / "deltas.png") and is_png(breakdown)
    assert not list(run.glob("breakdown_voicebench-commoneval*"))  # no breakdown, no chart

    report = path.read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "`tiny-slm`" in report and "`tiny-llm`" in report
    for name in ("scores.png", "deltas.png", breakdown.name):
        assert f"]({name})" in report

    mcq, graded = summary["tasks"]
    assert f"## {mcq['task']}" in report and f"## {graded['task']}" in report
    # every CI in summary.json appears in the report, rounded as printed (1 decimal for %, 2 for 1-5)
    for task, digits in ((mcq, 1), (graded, 2)):
        intervals = [task["arms"][arm]["ci"] for arm in ARMS] + [task["forgetting"]["ci"], task["gap"]["ci"]]
        for lo, hi in intervals:
            assert f"[{lo:.{digits}f}, {hi:.{digits}f}]" in report
        assert f"{task['forgetting']['relative_pct']:+.1f}% of `base_text`" in report
        assert f"| ±{task['gap']['resolvable']:.{digits}f} |" in report
    assert "scored by option log-likelihood (cloze)" in report
    assert "McNemar exact" in report and "Wilcoxon signed-rank" in report
    assert f"base_text − slm_speech = {mcq['decomposition']['total']:+.1f}" in report
    assert "Excluded items: 1 " in report and "7 [slm_speech]: audio could not be decoded" in report
    agreement = mcq["gap"]["agreement"]["same_answer"]
    assert f"same extracted answer on {agreement:.1f}% of items" in report
    assert "| law | 10 |" in report  # 10 items; the failed item 7 is a physics one


def test_report_with_one_arm_and_no_breakdowns(tmp_path):
    df = synthetic_items(2)
    df = df[df["arm"] == "slm_speech"]
    summary = build_summary(df, model="tiny-slm", base=None, breakdowns={}, n_boot=50)
    write_tables(df, tmp_path, summary)
    report = write_report(tmp_path).read_text()
    assert is_png(tmp_path / "scores.png")
    assert not (tmp_path / "deltas.png").exists()  # nothing to compare
    assert "forgetting:" not in report and "Decomposition" not in report


def test_compare_runs(runs, tmp_path):
    path = compare_runs(runs, tmp_path / "cmp")
    assert path == tmp_path / "cmp" / "compare.md"
    assert is_png(tmp_path / "cmp" / "compare.png")
    text = path.read_text()
    assert "](compare.png)" in text
    assert "## voicebench/openbookqa" in text and "## voicebench/commoneval" in text
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        row = next(
            line for line in text.splitlines() if line.startswith(f"| {run.name} | {summary['tasks'][0]['n']} |")
        )
        forgetting = summary["tasks"][0]["forgetting"]
        assert f"{forgetting['delta']:+.1f} [{forgetting['ci'][0]:.1f}, {forgetting['ci'][1]:.1f}]" in row
    # the same models: their answers compared item by item (the synthetic runs both answer "B" where they answer)
    assert "## Item by item: after against before" in text
    assert "| voicebench/openbookqa | `slm_speech` | 29 | 29 (100.0%) |" in text
    with pytest.raises(FileNotFoundError, match="summary.json"):
        compare_runs([tmp_path / "missing"], tmp_path / "cmp2")


def test_runs_of_other_models_are_compared_by_scores_only(runs, tmp_path):
    def run_of(name: str, model: str, seed: int) -> Path:
        items = synthetic_items(seed)
        write_tables(items, tmp_path / name, build_summary(items, model=model, base="tiny-llm", breakdowns={}))
        return tmp_path / name

    other, served = run_of("other", "vllm:other-slm", 2), run_of("served", "vllm:tiny-slm", 3)
    text = compare_runs([runs[0], other, served], tmp_path / "cmp").read_text()
    assert "Item by item: other" not in text  # another model: its answers differ for that reason alone
    assert "## Item by item: served against before" in text  # the same model through another backend
