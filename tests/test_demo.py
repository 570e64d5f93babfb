"""`make demo`'s pipeline (stages, timings, reports) on tiny real models instead of the embedded ones."""

from __future__ import annotations

import json

from xkd_eval import demo
from xkd_eval.models import NAMED_MODELS, load_model


def test_demo_pipeline_on_tiny_models(tiny_text, tiny_slm, mcq_task, tmp_path, monkeypatch):
    import xkd_eval.builtin
    import xkd_eval.organism
    import xkd_eval.organism.trained

    monkeypatch.setattr(xkd_eval.organism, "smollm2_hf_dir", lambda: tiny_text)
    monkeypatch.setattr(xkd_eval.organism.trained, "organism_dir", lambda: tiny_slm)
    monkeypatch.setattr(xkd_eval.builtin, "ensure_builtin_audio", lambda subset: None)
    monkeypatch.setattr(demo, "MEASURE_TASKS", (f"jsonl:{mcq_task}",))
    monkeypatch.setitem(NAMED_MODELS._entries, "organism-base", lambda **o: load_model(f"hf-text:{tiny_text}", **o))
    monkeypatch.setitem(NAMED_MODELS._entries, "organism", lambda **o: load_model(f"qwen2-audio:{tiny_slm}", **o))
    monkeypatch.setattr(demo, "MAX_NEW_TOKENS", 4)

    stages = demo.run_demo(tmp_path, distill=False)
    assert list(stages) == [
        "prepare the real parts (convert, assemble, adapt)",
        "synthesise the built-in benchmark (TTS)",
        "measure organism vs organism-base",
    ]
    summary = json.loads((tmp_path / "measure" / "summary.json").read_text())
    [task] = summary["tasks"]
    assert set(task["arms"]) == {"base_text", "slm_text", "slm_speech"} and task["mcq_mode"] == "cloze"
    assert {"forgetting", "gap", "decomposition"} <= set(task)
    assert (tmp_path / "measure" / "report.md").is_file()
    results = sorted((tmp_path / "measure" / "results").rglob("*.jsonl"))
    before = [p.read_text() for p in results]
    demo.run_demo(tmp_path, distill=False)  # a rerun: everything comes from the caches
    assert [p.read_text() for p in results] == before
