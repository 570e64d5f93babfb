"""`make demo`'s pipeline (stages, timings, reports) on tiny real models instead of the embedded ones."""

from __future__ import annotations

import hashlib
import json

from xkd_eval import demo
from xkd_eval.models import NAMED_MODELS, NamedModel, load_model


def test_demo_pipeline_on_tiny_models(tiny_text, tiny_slm, mcq_task, tmp_path, monkeypatch):
    import xkd_eval.builtin
    import xkd_eval.organism
    import xkd_eval.organism.trained

    monkeypatch.setattr(xkd_eval.organism, "smollm2_hf_dir", lambda: tiny_text)
    monkeypatch.setattr(xkd_eval.organism.trained, "organism_dir", lambda: tiny_slm)
    monkeypatch.setattr(demo, "MEASURE_TASKS", (f"jsonl:{mcq_task}",))
    cloze = {"mcq_mode": "cloze"}  # what the organism family recommends
    monkeypatch.setitem(
        NAMED_MODELS._entries,
        "organism-base",
        NamedModel(lambda **o: load_model(f"hf-text:{tiny_text}", **o), recommended=cloze),
    )
    monkeypatch.setitem(
        NAMED_MODELS._entries,
        "organism",
        NamedModel(lambda **o: load_model(f"qwen2-audio:{tiny_slm}", **o), recommended=cloze),
    )
    monkeypatch.setattr(demo, "MAX_NEW_TOKENS", 4)

    stages = demo.run_demo(tmp_path, distill=False, hearing=True)
    assert list(stages) == [
        "prepare the real parts (convert, assemble, merge adapters)",
        "synthesise the spoken items (TTS)",
        "measure organism vs organism-base",
    ]
    summary = json.loads((tmp_path / "measure" / "summary.json").read_text())
    [task] = summary["tasks"]
    assert set(task["arms"]) == {"base_text", "slm_text", "slm_speech"} and task["mcq_mode"] == "cloze"
    # the demo sets no MCQ mode: the organism's recommendation applied, and the report says so
    assert summary["settings"]["mcq_mode_source"].startswith("recommended by organism")
    assert "cloze" in (tmp_path / "measure" / "report.md").read_text().split("## Overview")[0]
    assert {"forgetting", "gap", "decomposition"} <= set(task)
    assert summary["diagnostics"]["hearing"][task["task"]]["n"] == 9  # every clip that decodes was repeated
    assert "## Hearing the spoken queries" in (tmp_path / "measure" / "report.md").read_text()
    results = sorted((tmp_path / "measure" / "results").rglob("*.jsonl"))
    before = [p.read_text() for p in results]
    demo.run_demo(tmp_path, distill=False, hearing=True)  # a rerun: everything comes from the caches
    assert [p.read_text() for p in results] == before
    demo.run_demo(tmp_path / "plain", distill=False, hearing=False)  # the probe can be left out
    assert "hearing" not in json.loads((tmp_path / "plain" / "measure" / "summary.json").read_text())


def test_demo_retrains_the_distilled_organism_on_tiny_models(tiny_text, tiny_slm, mcq_task, tmp_path, monkeypatch):
    """``make demo --retrain``'s remedy stage end to end: teacher targets, KD training, the student measured
    before and after on the same items, and the before/after report; the unchanged models' answers are reused;
    then the committed-adapter path measures that training's adapter without training again."""
    import xkd_eval.builtin
    import xkd_eval.organism
    import xkd_eval.organism.trained

    monkeypatch.setenv("XKD_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(xkd_eval.organism, "smollm2_hf_dir", lambda: tiny_text)
    monkeypatch.setattr(xkd_eval.organism.trained, "organism_dir", lambda: tiny_slm)
    task = f"jsonl:{mcq_task}"
    monkeypatch.setattr(demo, "MEASURE_TASKS", (task,))
    monkeypatch.setattr(demo, "DISTILL_EVAL", (task,))
    base = NamedModel(lambda **o: load_model(f"hf-text:{tiny_text}", **o), folder=lambda: tiny_text)
    monkeypatch.setitem(NAMED_MODELS._entries, "organism-base", base)
    slm = NamedModel(lambda **o: load_model(f"qwen2-audio:{tiny_slm}", **o), folder=lambda: tiny_slm)
    monkeypatch.setitem(NAMED_MODELS._entries, "organism", slm)
    monkeypatch.setattr(demo, "MAX_NEW_TOKENS", 4)
    data = tmp_path / "kd.jsonl"
    rows = [
        {"id": f"k{i}", "instruction": f"name a mammal number {i}", "audio": str(mcq_task.parent / f"audio/{i}.wav")}
        for i in range(6)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"teacher: organism-base\nstudent: organism\ndata: {data}\ntargets: teacher\nmax_new_tokens: 4\n"
        "top_k: 8\ntrainable: projector+lora\nlora_rank: 2\nlora_alpha: 4\nbatch_size: 3\nmax_steps: 2\n"
        "eval_fraction: 0.0\nmixed_precision: 'no'\nlearning_rate: 1.0e-3\n"
    )
    monkeypatch.setattr(demo, "DISTILL_RECIPE", recipe)

    stages = demo.run_demo(tmp_path / "reports", distill=True, retrain=True, hearing_after=True)
    assert list(stages)[-1] == "retrain the distilled organism, measure before/after (remedy)"
    out = tmp_path / "reports" / "distill"
    before, after = (json.loads((out / run / "summary.json").read_text()) for run in ("before", "after"))
    [task_before], [task_after] = before["tasks"], after["tasks"]
    assert {"forgetting", "gap"} <= set(task_before) and {"forgetting", "gap"} <= set(task_after)
    # the teacher's text arm is the same answers before and after (copied, not regenerated)
    assert task_before["arms"]["base_text"] == task_after["arms"]["base_text"]
    assert after["model"] == "organism-distilled"
    adapter = tmp_path / "cache" / "demo-distill" / "adapter"
    answered = (out / "after" / "results").rglob("*.jsonl")
    revisions = {json.loads(line)["model"]["revision"] for path in answered for line in path.read_text().splitlines()}
    assert f"organism-distilled adapter sha256:{xkd_eval.organism.trained.distilled_adapter_hash(adapter)}" in revisions
    training = json.loads((out / "training.json").read_text())
    assert training["steps"] == 2 and training["teacher"] == "organism-base" and set(training["curves"]) >= {"tt_kd"}
    assert training["distilled_model"] == "organism-distilled"
    assert str(tmp_path / "cache") not in (out / "training.json").read_text()  # no machine's paths in the report
    report = (out / "report.md").read_text()
    assert "forgetting" in report and "gap" in report
    heard = json.loads((out / "hearing_change.json").read_text())[task_before["task"]]
    assert heard["n"] == 9 and f"| `{task_before['task']}` | 9 | {heard['before']:.1f} → " in report
    assert not (out / "before" / "shards").exists() and (tmp_path / "cache" / "demo-distill" / "student").is_dir()

    # a changed recipe cannot continue the finished training in the cache: the demo trains again; and the
    # 'before' arms are the measurement's answers on every run, also where 'before' held other answers (a
    # changed organism's), so they are not measured twice
    recipe.write_text(recipe.read_text().replace("max_steps: 2", "max_steps: 3"))
    stale = next((out / "before" / "results").rglob("*.jsonl"))
    stale.write_text("")
    demo.run_demo(tmp_path / "reports", distill=True, retrain=True)
    assert json.loads((out / "training.json").read_text())["steps"] == 3
    measured = tmp_path / "reports" / "measure" / "results" / stale.relative_to(out / "before" / "results")
    assert stale.read_text() == measured.read_text() != ""

    # without --retrain the committed adapter is measured and its training record reported, nothing trained
    committed_adapter = xkd_eval.organism.trained.publish_distilled_adapter(
        tmp_path / "cache" / "demo-distill", tmp_path / "committed-adapter"
    )
    record = json.loads((committed_adapter / "training.json").read_text())
    assert record["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest() and "model_spec" not in record
    assert str(tmp_path / "cache") not in (committed_adapter / "training.json").read_text()
    monkeypatch.setattr(xkd_eval.organism.trained, "DISTILLED_ADAPTER_DIR", committed_adapter)
    checkpoints = sorted((tmp_path / "cache" / "demo-distill").rglob("*"))
    stages = demo.run_demo(tmp_path / "committed", distill=True)
    assert list(stages)[-1] == "measure organism-distilled (remedy)"
    assert sorted((tmp_path / "cache" / "demo-distill").rglob("*")) == checkpoints
    committed = tmp_path / "committed" / "distill"
    assert json.loads((committed / "training.json").read_text())["steps"] == 3
    assert json.loads((committed / "after" / "summary.json").read_text())["model"] == "organism-distilled"
