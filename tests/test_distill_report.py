"""The before/after report of a distillation: shrinkage of forgetting and gap, paired over items."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from xkd_eval.analysis import build_summary, write_tables
from xkd_eval.distill.report import reading, retention_verdict, shrinkage, write_distill_report


def run_table(slm_text_correct: np.ndarray, slm_speech_correct: np.ndarray) -> pd.DataFrame:
    rows = []
    n = len(slm_text_correct)
    for arm, values in (("base_text", np.ones(n)), ("slm_text", slm_text_correct), ("slm_speech", slm_speech_correct)):
        for i, value in enumerate(values):
            rows.append({
                "task": "builtin/mcq", "item_id": f"q{i}", "arm": arm, "model": "m", "response": "A",
                "extracted": "A", "correct": bool(value), "score": float(value), "extraction_failed": False,
                "error": None, "scorer": "mcq", "binary": True, "unit": "percent", "mcq_mode": "cloze",
                "prompt": "p", "latency_s": 0.1,
            })  # fmt: skip
    return pd.DataFrame(rows)


def write_run(folder, table):
    summary = build_summary(table, model="student", base="teacher", breakdowns={}, n_boot=200)
    write_tables(table, folder, summary)


def test_shrinkage_hand_worked(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    before_text = (rng.random(n) < 0.5).astype(float)  # forgetting 50 points
    before_speech = before_text * (rng.random(n) < 0.5)  # a gap on top
    after_text = np.maximum(before_text, (rng.random(n) < 0.6).astype(float))  # distillation repairs some
    after_speech = np.maximum(before_speech, after_text * (rng.random(n) < 0.6))
    write_run(tmp_path / "before", run_table(before_text, before_speech))
    write_run(tmp_path / "after", run_table(after_text, after_speech))
    result = shrinkage(tmp_path / "before", tmp_path / "after", n_boot=500)["builtin/mcq"]
    forgetting = result["forgetting"]
    assert forgetting["before"] == pytest.approx(100 * (1 - before_text.mean()))
    assert forgetting["after"] == pytest.approx(100 * (1 - after_text.mean()))
    assert forgetting["shrank_by"] == pytest.approx(forgetting["before"] - forgetting["after"])
    assert forgetting["ci"][0] <= forgetting["shrank_by"] <= forgetting["ci"][1]
    assert result["gap"]["before"] == pytest.approx(100 * (before_text.mean() - before_speech.mean()))
    assert result["n"] == n
    resolved = result["gap"]["resolution"]  # what these 40 items can resolve, from the same differences
    differences = 100 * ((before_text - before_speech) - (after_text - after_speech))
    assert resolved["n"] == n and resolved["resolvable"] > 2.8 * differences.std(ddof=1) / np.sqrt(n)

    speech = result["speech_score"]
    assert speech["change"] == pytest.approx(100 * (after_speech.mean() - before_speech.mean()))
    assert speech["ci"][0] <= speech["change"] <= speech["ci"][1]
    assert result["text_score"]["change"] == pytest.approx(100 * (after_text.mean() - before_text.mean()))

    # training.json as distill() writes it: curves [[step, value]] per series, validation rows
    steps = range(1, 9)
    curves = {key: [[s, scale / s] for s in steps] for key, scale in (("loss", 3), ("tt_ce", 1), ("st_kd", 2))}
    validation = [{"step": s, "val_loss": 3 / s, "val_tt_loss": 1 / s, "val_st_loss": 2 / s} for s in (4, 8)]
    training = {"teacher": "t", "student": "s", "curves": curves, "validation": validation, "steps": 8}
    (tmp_path / "training.json").write_text(json.dumps(training))
    report = write_distill_report(tmp_path).read_text()
    assert "builtin/mcq" in report and "shrank by" in report and "- steps: 8" in report
    assert forgetting["shrank_by"] > 0  # the hand-made data repairs some forgetting
    assert f"`builtin/mcq` forgetting shrank by {forgetting['shrank_by']:.1f} points" in report
    assert (tmp_path / "training_curves.png").is_file() and (tmp_path / "shrinkage.json").is_file()
    assert "stopped early" not in report

    cut = training | {"steps": 5, "stopped": "time_budget", "config": {"max_steps": 8}}
    (tmp_path / "training.json").write_text(json.dumps(cut))
    report = write_distill_report(tmp_path).read_text()
    warning = "**Training stopped early (time_budget) at step 5 of 8**"
    assert warning in report and report.index(warning) < report.index("| task | n |")

    fitted = training | {"steps": 6, "stopped": "fitted_to_time_budget", "train_seconds": 87.0}
    fitted["config"] = {"max_steps": 8}
    (tmp_path / "training.json").write_text(json.dumps(fitted))
    report = write_distill_report(tmp_path).read_text()
    warning = "**The schedule was fitted to the time budget: 6 of 8 steps** (a step took 14.5 s on this machine)"
    assert warning in report and report.index(warning) < report.index("| task | n |")


def test_listening_retention_is_read_from_the_speech_arm(tmp_path):
    n = 30
    text = np.ones(n)
    speech_before = np.r_[np.ones(20), np.zeros(10)]
    speech_after = np.r_[np.ones(10), np.zeros(20)]  # a drop of 33 points: not held
    for name, speech in (("before", speech_before), ("after", speech_after)):
        table = run_table(text, speech).assign(task="builtin/listen", mcq_mode=None)
        table["response"] = [f"{name} answer {i} | {arm}" for i, arm in enumerate(table["arm"])]
        write_run(tmp_path / name, table)
    report = write_distill_report(tmp_path).read_text()
    # the student's answers side by side (a pipe in an answer must not break the table)
    row = "| `builtin/listen` | q0 | slm_speech | before answer 60 \\| slm_speech | after answer 60 \\| slm_speech |"
    assert row in report
    assert "Listening retention (`builtin/listen`, the student on speech): 66.7 → 33.3, change -33.3" in report
    assert "did not hold (the CI excludes no change)" in report


def test_runs_measured_with_other_settings_are_not_compared(tmp_path):
    """A before run at 48 new tokens and an after run at 96 would credit the longer answers to the remedy;
    MCQs ranked by log-likelihood generate nothing, so there the token limit does not matter."""
    from xkd_eval.errors import XkdError

    def measured(task, mode, tokens_after, after_mode="cloze"):
        for name, tokens, said_mode in (("before", 48, "cloze"), ("after", tokens_after, after_mode)):
            write_run(tmp_path / name, run_table(np.ones(4), np.zeros(4)).assign(task=task, mcq_mode=mode))
            path = tmp_path / name / "summary.json"
            summary = json.loads(path.read_text())
            summary["settings"] = {"generation": {"max_new_tokens": tokens, "do_sample": False}, "mcq_mode": said_mode}
            path.write_text(json.dumps(summary))
        return shrinkage(tmp_path / "before", tmp_path / "after", n_boot=50)

    with pytest.raises(XkdError, match=r"different settings \(generation max_new_tokens: 48 before, 96 after\)"):
        measured("builtin/qa", "generate", 96)
    assert measured("builtin/qa", "generate", 48)["builtin/qa"]["gap"]["shrank_by"] == 0
    assert measured("builtin/mcq", "cloze", 96)["builtin/mcq"]["gap"]["shrank_by"] == 0  # nothing generated
    with pytest.raises(XkdError, match=r"mcq_mode: 'cloze' before, 'letter' after"):
        measured("builtin/mcq", "cloze", 48, after_mode="letter")


def test_retention_verdict_tells_held_lost_and_not_known_apart():
    assert retention_verdict({"ci": [-4.0, 6.0]}).startswith("held")
    assert retention_verdict({"ci": [-20.0, -1.0]}).startswith("did not hold")
    assert retention_verdict({"ci": [-11.0, 5.5]}).startswith("not known")  # the reference run's CI
    assert retention_verdict({"ci": [-5.0, 0.0]}).startswith("not known")  # both ends on the fence
    verdict = retention_verdict({"ci": [-9.5, 7.8], "items_to_rule_out_margin": 638})
    assert verdict.endswith("(about 638 items would tell, were the change seen the true one)")


def test_items_to_rule_out_the_retention_margin(tmp_path):
    n = 60
    text = np.ones(n)
    speech_before = np.r_[np.ones(30), np.zeros(30)]
    speech_after = speech_before.copy()
    speech_after[:5] = 0  # 5 items lost
    speech_after[30:33] = 1  # and 3 gained: a change of -2 in 60, -3.3 points, inside the 5-point margin
    for name, speech in (("before", speech_before), ("after", speech_after)):
        write_run(tmp_path / name, run_table(text, speech).assign(task="builtin/listen", mcq_mode=None))
    speech = shrinkage(tmp_path / "before", tmp_path / "after", n_boot=200)["builtin/listen"]["speech_score"]
    change = 100 * (speech_after - speech_before)
    assert speech["change"] == pytest.approx(change.mean())
    # the items at which the CI's lower end clears -5 at 80% power: a paired t-test of change + 5 against 0
    from xkd_eval.analysis import resolution

    assert speech["items_to_rule_out_margin"] == resolution(change + 5.0)["items_needed"]
    assert speech["items_to_rule_out_margin"] > n  # these 60 items do not rule it out
    assert retention_verdict(speech).startswith("not known")


def test_reading_says_what_an_unresolved_change_would_need():
    resolved = {"n": 208, "resolvable": 14.4, "items_needed": 1293, "power": 0.8, "alpha": 0.05}
    shrank = {
        "builtin/mcq": {
            "n": 208,
            "gap": {"before": 38.5, "after": 32.7, "shrank_by": 5.8, "ci": [-4.3, 15.9], "resolution": resolved},
            "forgetting": {"before": 21.6, "after": -0.8, "shrank_by": 22.4, "ci": [12.0, 32.8],
                           "resolution": resolved | {"items_needed": 40}},
        }
    }  # fmt: skip
    lines = reading(shrank)
    gap = next(line for line in lines if " gap " in line)
    assert gap == (
        "- `builtin/mcq` gap shrank by 5.8 points [-4.3, +15.9]: the CI includes no change; 208 items resolve "
        "a change of 14.4 points 80% of the time, and this one would need about 1,293 items."
    )
    forgetting = next(line for line in lines if "forgetting" in line)
    assert forgetting.endswith("the CI excludes no change.")  # resolved: nothing to add
    # a summary written before resolutions were recorded reads as it did
    del shrank["builtin/mcq"]["gap"]["resolution"]
    assert next(line for line in reading(shrank) if " gap " in line).endswith("the CI includes no change.")


def test_hearing_before_and_after_is_paired_over_the_items_probed_in_both(tmp_path):
    from xkd_eval.distill.report import hearing_change

    assert hearing_change(tmp_path / "before", tmp_path / "after") == {}  # no probe: nothing to show
    probes = {
        "before": {"q0": 0.0, "q1": 0.5, "q2": 0.25, "q3": 1.0},
        "after": {"q0": 0.5, "q1": 0.5, "q2": 1.0},  # q3 was not probed after: left out of the pairing
    }
    for run, accuracy in probes.items():
        (tmp_path / run).mkdir()
        rows = pd.DataFrame(
            {"task": "builtin/mcq", "item_id": list(accuracy), "word_accuracy": list(accuracy.values())}
        )
        rows.to_csv(tmp_path / run / "hearing.csv", index=False)
    result = hearing_change(tmp_path / "before", tmp_path / "after")["builtin/mcq"]
    # by hand over q0-q2: before (0 + 50 + 25) / 3 = 25, after (50 + 50 + 100) / 3 = 66.67
    assert result["n"] == 3
    assert result["before"] == pytest.approx(25.0) and result["after"] == pytest.approx(200 / 3)
    assert result["change"] == pytest.approx(200 / 3 - 25)
    assert result["ci"][0] <= result["change"] <= result["ci"][1] and result["ci"][0] >= 0  # no item got worse
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    write_run(tmp_path / "before", run_table(correct, correct))
    write_run(tmp_path / "after", run_table(correct, correct))
    report = write_distill_report(tmp_path).read_text()
    assert "| `builtin/mcq` | 3 | 25.0 → 66.7 | +41.7 [" in report
    assert json.loads((tmp_path / "hearing_change.json").read_text())["builtin/mcq"]["n"] == 3
