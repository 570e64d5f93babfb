"""`forgetting`, `gap` and `report` end to end on tiny real models, sharded runs, KL diagnostics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from tiny_models import CORPUS, build_text_model
from typer.testing import CliRunner

from xkd_eval.cli import app

runner = CliRunner()


def gap_args(tiny_slm, tiny_text, mcq_task, out) -> list[str]:
    return [
        "gap", "--model", str(tiny_slm), "--base", f"hf-text:{tiny_text}", "--task", f"jsonl:{mcq_task}",
        "--out", str(out), "--mcq-mode", "letter", "--max-new-tokens", "4", "--batch-size", "4",
    ]  # fmt: skip


def test_gap_with_base_writes_the_three_arm_decomposition(tiny_slm, tiny_text, mcq_task, tmp_path):
    out = tmp_path / "run"
    args = [*gap_args(tiny_slm, tiny_text, mcq_task, out), "--diagnostics", "kl", "--diagnostics", "hearing"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    [task] = summary["tasks"]
    arms = task["arms"]
    assert set(arms) == {"base_text", "slm_text", "slm_speech"}
    assert task["n"] == 9  # the item with broken audio is excluded from every arm
    total = arms["base_text"]["score"] - arms["slm_speech"]["score"]
    assert total == pytest.approx(task["forgetting"]["delta"] + task["gap"]["delta"], abs=1e-9)
    assert task["forgetting"]["delta"] == pytest.approx(arms["base_text"]["score"] - arms["slm_text"]["score"])
    kl = summary["diagnostics"]["kl"][task["task"]]
    assert kl["kl_base_text_slm_text"] >= 0 and kl["kl_slm_text_slm_speech"] >= 0
    # hearing: the 9 clips that decode were repeated, scored against the words the TTS-style reading holds
    hearing = summary["diagnostics"]["hearing"][task["task"]]
    assert hearing["n"] == 9 and sum(b["n"] for b in hearing["bands"]) == 9
    assert 0 <= hearing["word_accuracy"] <= 100
    heard = pd.read_csv(out / "hearing.csv")
    assert len(heard) == 9 and heard["word_accuracy"].between(0, 1).all()
    assert heard["heard_text"].str.endswith("Is it A, shark; B, whale; C, trout; or D, squid?").all()
    assert heard["word_accuracy"].mean() * 100 == pytest.approx(hearing["word_accuracy"])
    assert "## Hearing the spoken queries" in (out / "report.md").read_text()
    stored = sum(p.read_text().count('"modality": "hearing"') for p in (out / "results").rglob("*.jsonl"))
    assert stored == 9
    # a rerun repeats nothing: the repetitions come from the result store
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert sum(p.read_text().count('"modality": "hearing"') for p in (out / "results").rglob("*.jsonl")) == 9
    assert json.loads((out / "summary.json").read_text())["diagnostics"]["hearing"] == summary["diagnostics"]["hearing"]
    assert summary["settings"]["mcq_mode"] == "letter"
    for name in ("items.parquet", "items.csv", "report.md", "scores.png", "deltas.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "letter" in report

    items = pd.read_parquet(out / "items.parquet")
    assert {"task", "item_id", "arm", "response", "extracted", "score", "error"} <= set(items.columns)
    assert len(items) == 30 and items["error"].notna().sum() == 1

    # the report is rebuilt from saved results alone, and two runs compare side by side
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    compared = runner.invoke(app, ["report", str(out), str(out), "--out", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output


def test_forgetting_rerun_is_cached_and_identical(tiny_slm, tiny_text, mcq_task, tmp_path):
    args = [
        "forgetting", "--model", str(tiny_slm), "--base", str(tiny_text), "--task", f"jsonl:{mcq_task}",
        "--out", str(tmp_path), "--max-new-tokens", "3",
    ]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    before = json.loads((tmp_path / "summary.json").read_text())
    assert set(before["tasks"][0]["arms"]) == {"base_text", "slm_text"} and "gap" not in before["tasks"][0]
    timings = (tmp_path / "timings.json").read_text()
    second = runner.invoke(app, args)
    assert second.exit_code == 0
    assert json.loads((tmp_path / "summary.json").read_text())["tasks"] == before["tasks"]
    # every answer came from the cache: the timings stay those of the run that answered
    assert (tmp_path / "timings.json").read_text() == timings
    longer = runner.invoke(app, [*args[:-1], "4"])  # new settings: new answers, new timings
    assert longer.exit_code == 0
    assert (tmp_path / "timings.json").read_text() != timings


def test_bad_inputs_fail_before_any_work(tiny_text, tiny_slm, mcq_task, tmp_path):
    text_only = runner.invoke(
        app, ["gap", "--model", str(tiny_text), "--task", f"jsonl:{mcq_task}", "--out", str(tmp_path)]
    )
    assert text_only.exit_code == 2 and "cannot take audio" in text_only.output
    no_audio = tmp_path / "text.jsonl"
    no_audio.write_text(json.dumps({"id": "1", "prompt": "Hi", "reference": "A"}) + "\n")
    result = runner.invoke(
        app, ["gap", "--model", str(tiny_slm), "--task", f"jsonl:{no_audio}", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "has no audio" in result.output
    no_speech_arm = runner.invoke(
        app, ["forgetting", "--model", str(tiny_slm), "--base", str(tiny_text), "--task", f"jsonl:{mcq_task}",
              "--out", str(tmp_path), "--diagnostics", "hearing"],
    )  # fmt: skip
    assert no_speech_arm.exit_code == 2 and "use it with `gap`" in no_speech_arm.output
    misspelt = runner.invoke(app, [*gap_args(tiny_slm, tiny_text, mcq_task, tmp_path), "--diagnostics", "hearnig"])
    assert misspelt.exit_code == 2 and "available: kl, hearing" in misspelt.output
    unknown = runner.invoke(app, ["gap", "--model", "qwen2-audoi:x", "--task", "mmau-mini", "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "qwen2-audio" in unknown.output
    task = runner.invoke(app, ["gap", "--model", str(tiny_slm), "--task", "voicebench/mmsus", "--out", str(tmp_path)])
    assert task.exit_code == 2 and "voicebench/mmsu" in task.output
    assert not (tmp_path / "results").exists()


def test_kl_refuses_different_vocabularies(tiny_slm, mcq_task, tmp_path):
    other = build_text_model(tmp_path / "other", corpus=list(reversed(CORPUS)) + ["zebra quokka xylophone"])
    args = gap_args(tiny_slm, other, mcq_task, tmp_path / "run")
    result = runner.invoke(app, [*args, "--diagnostics", "kl"])
    assert result.exit_code == 2 and "map tokens to ids differently" in result.output


def test_two_processes_share_the_items_and_rank_0_merges(tiny_slm, tiny_text, mcq_task, tmp_path):
    out = tmp_path / "sharded"
    args = [*gap_args(tiny_slm, tiny_text, mcq_task, out), "--diagnostics", "hearing"]
    command = [sys.executable, "-m", "xkd_eval.cli", *args]
    processes = [
        subprocess.Popen(command, env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}, stdout=subprocess.PIPE)
        for rank in (0, 1)
    ]
    for process in processes:
        process.communicate(timeout=300)
        assert process.returncode == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"][0]["n"] == 9 and summary["settings"]["world_size"] == 2
    slm_results = next(p for p in (out / "results").iterdir() if "tiny_slm" in p.name)
    per_rank = {p.name.rsplit(".", 2)[1]: p.read_text().count("\n") for p in slm_results.glob("*.jsonl")}
    # 10 text + 9 speech answers + 9 repetitions, split by rank
    assert set(per_rank) == {"r0", "r1"} and sum(per_rank.values()) == 28
    single = tmp_path / "single"
    single_args = [*gap_args(tiny_slm, tiny_text, mcq_task, single), "--diagnostics", "hearing"]
    assert runner.invoke(app, single_args).exit_code == 0
    alone = json.loads((single / "summary.json").read_text())
    assert alone["tasks"] == summary["tasks"] and alone["diagnostics"] == summary["diagnostics"]


def test_forgetting_on_an_lm_eval_task(tiny_slm, tiny_text, tmp_path):
    from test_lmeval import DOCS_MODULE, MC_DOCS, MC_YAML

    tasks = tmp_path / "lm_tasks"
    tasks.mkdir()
    (tasks / "docs.py").write_text(DOCS_MODULE)
    (tasks / "mc.json").write_text(json.dumps(MC_DOCS))
    (tasks / "xkd_mc.yaml").write_text(MC_YAML)
    out = tmp_path / "run"
    args = [
        "forgetting", "--model", str(tiny_slm), "--base", str(tiny_text), "--task", "lm-eval/xkd_mc",
        "--lm-eval-include", str(tasks), "--out", str(out),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    [task] = json.loads((out / "summary.json").read_text())["tasks"]
    assert task["task"] == "lm-eval/xkd_mc" and task["n"] == len(MC_DOCS)
    assert set(task["arms"]) == {"base_text", "slm_text"} and "forgetting" in task
    # cached: the rerun asks lm-eval nothing
    import xkd_eval.lmeval as lmeval

    original = lmeval.run_lm_eval_task
    lmeval.run_lm_eval_task = lambda *a, **k: pytest.fail("lm-eval ran again")
    try:
        assert runner.invoke(app, args).exit_code == 0
    finally:
        lmeval.run_lm_eval_task = original


def test_a_clip_the_model_fails_to_repeat_is_recorded_and_the_probe_goes_on(tiny_slm, mcq_task, tmp_path, monkeypatch):
    from xkd_eval.models.hf import HFChatAdapter
    from xkd_eval.runner.hearing import HEARING_INSTRUCTION

    real_generate = HFChatAdapter.generate

    def generate(self, queries, settings):
        if any(q.item_id == "q1" and q.text == HEARING_INSTRUCTION for q in queries):
            raise RuntimeError("out of memory on q1")  # one clip's failure, as a real run meets it
        return real_generate(self, queries, settings)

    monkeypatch.setattr(HFChatAdapter, "generate", generate)
    out = tmp_path / "run"
    args = [
        "gap", "--model", str(tiny_slm), "--task", f"jsonl:{mcq_task}", "--out", str(out), "--limit", "4",
        "--mcq-mode", "letter", "--max-new-tokens", "2", "--batch-size", "4", "--diagnostics", "hearing",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    hearing = json.loads((out / "summary.json").read_text())["diagnostics"]["hearing"][f"jsonl:{mcq_task}"]
    assert (hearing["n"], hearing["n_failed"]) == (3, 1)
    assert f"| jsonl:{mcq_task} | 3 (1 failed) |" in (out / "report.md").read_text()
    heard = pd.read_csv(out / "hearing.csv").set_index("item_id")
    assert "out of memory on q1" in heard.loc["q1", "error"] and heard["error"].isna().sum() == 3
    stored = "".join(p.read_text() for p in (out / "results").rglob("*.jsonl"))
    assert stored.count('"modality": "hearing"') == 3 and '"item_id": "q1", "modality": "hearing"' not in stored
