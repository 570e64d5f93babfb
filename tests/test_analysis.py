"""Paired statistics (hand-worked cases) and the summary built from a per-item results table."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from xkd_eval.analysis import (
    agreement,
    bootstrap_ci,
    build_summary,
    mcnemar_exact,
    paired_bootstrap_ci,
    resolution,
    wilcoxon_p,
    write_tables,
)

N_BOOT = 200  # enough for the properties tested here, and fast


# --- stats ---------------------------------------------------------------------------------------


def test_mcnemar_exact_hand_worked():
    # 3 both right, 1 only a right (b=1), 6 only b right (c=6), 2 both wrong
    a = [1] * 3 + [1] * 1 + [0] * 6 + [0] * 2
    b = [1] * 3 + [0] * 1 + [1] * 6 + [0] * 2
    # two-sided exact: 2 * P(X <= 1; n=7, p=1/2) = 2 * (1 + 7) / 128
    assert mcnemar_exact(a, b) == pytest.approx(0.125)
    assert mcnemar_exact(b, a) == pytest.approx(0.125)
    # capped at 1 when the discordant pairs split evenly: 2 * P(X <= 2; n=4) = 2 * 11/16 > 1
    assert mcnemar_exact([1, 1, 0, 0], [0, 0, 1, 1]) == 1.0


def test_mcnemar_matches_statsmodels_and_handles_no_discordant_pairs():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(3)
    a = rng.random(60) < 0.7
    b = rng.random(60) < 0.5
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    assert mcnemar_exact(a, b) == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    assert mcnemar_exact([], []) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5, 1.0], [1.0, 1.0])


def test_bootstrap_ci_contains_the_mean_and_is_seeded():
    values = np.random.default_rng(0).normal(3.0, 1.0, size=80)
    lo, hi = bootstrap_ci(values, seed=1, n_boot=N_BOOT)
    assert lo < values.mean() < hi
    assert bootstrap_ci(values, seed=1, n_boot=N_BOOT) == (lo, hi)
    assert bootstrap_ci(values, seed=2, n_boot=N_BOOT) != (lo, hi)
    wide = bootstrap_ci(values, seed=1, n_boot=N_BOOT, level=0.99)
    assert wide[0] <= lo and hi <= wide[1]
    assert bootstrap_ci([1.0, 1.0, 1.0], n_boot=N_BOOT) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([], n_boot=N_BOOT))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_paired_bootstrap_and_tests_on_identical_inputs():
    a = [1, 0, 1, 1, 0]
    assert paired_bootstrap_ci(a, a, n_boot=N_BOOT) == (0.0, 0.0)
    assert mcnemar_exact(a, a) == 1.0
    assert wilcoxon_p([3, 4, 5], [3, 4, 5]) == 1.0


def test_paired_bootstrap_is_the_bootstrap_of_the_differences():
    rng = np.random.default_rng(5)
    a, b = rng.random(40), rng.random(40)
    lo, hi = paired_bootstrap_ci(a, b, seed=7, n_boot=N_BOOT)
    assert (lo, hi) == bootstrap_ci(a - b, seed=7, n_boot=N_BOOT)
    assert lo < float(np.mean(a - b)) < hi
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_ci([1, 2], [1])


def test_wilcoxon_p():
    from scipy.stats import wilcoxon

    a = [5, 4, 5, 4, 5, 3, 4, 5, 4, 5, 4, 5]
    b = [3, 3, 4, 2, 3, 3, 2, 4, 3, 3, 4, 2]
    assert wilcoxon_p(a, b) == pytest.approx(wilcoxon(a, b).pvalue)
    assert wilcoxon_p(a, b) < 0.01
    # one differing pair: exact two-sided p = 1
    assert wilcoxon_p([1, 2, 3], [1, 2, 4]) == 1.0


def paired_t_power(effect: float, spread: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test, from the noncentral t distribution itself."""
    from scipy.stats import nct, t

    critical = t.ppf(1 - alpha / 2, n - 1)
    shift = effect / spread * math.sqrt(n)
    return float(nct.sf(critical, n - 1, shift) + nct.cdf(-critical, n - 1, shift))


def test_resolution_against_the_noncentral_t():
    # 208 items whose paired change is -1, 0 or +1 (a flip each way): the mean is +0.1, the SD 0.6
    x = np.r_[np.ones(42), -np.ones(21), np.zeros(145)]
    spread = float(np.std(x, ddof=1))
    result = resolution(x)
    assert result["n"] == 208
    # by hand, the normal approximation: (z_0.975 + z_0.8) * SD / sqrt(n) = 2.8016 * SD / sqrt(208)
    assert result["resolvable"] == pytest.approx(2.8016 * spread / math.sqrt(208), rel=0.01)
    assert paired_t_power(result["resolvable"], spread, 208) == pytest.approx(0.8, abs=1e-3)
    # the items needed for the observed mean: the first n at which the power reaches 80%
    needed = result["items_needed"]
    assert paired_t_power(x.mean(), spread, needed) >= 0.8 > paired_t_power(x.mean(), spread, needed - 1)
    assert needed == pytest.approx((2.8016 * spread / x.mean()) ** 2, rel=0.03)
    # 4x the items halve the resolvable change
    assert resolution(np.tile(x, 4))["resolvable"] == pytest.approx(result["resolvable"] / 2, rel=0.02)


def test_resolution_without_spread_or_effect():
    assert resolution(np.zeros(30))["resolvable"] is None  # every item unchanged: nothing to scale by
    assert resolution([1.0])["resolvable"] is None
    balanced = resolution(np.r_[np.ones(10), -np.ones(10)])
    assert balanced["resolvable"] > 0 and balanced["items_needed"] is None  # no change to resolve
    with pytest.raises(ValueError, match="power"):
        resolution(np.ones(5), power=1.5)


def test_agreement():
    shares = agreement(["A", "b ", None, "C"], ["a", "B", None, "D"], [True, False, None, True], [1, 0, 0, 0])
    assert shares["same_answer"] == pytest.approx(2 / 4)  # the (None, None) pair is not an agreement
    assert shares["same_correctness"] == pytest.approx(3 / 4)  # a missing verdict counts as wrong
    assert agreement([None, None], [None, None]) == {"same_answer": None, "same_correctness": None}


# --- summary -------------------------------------------------------------------------------------


def items_table(seed: int = 0, n: int = 40, arms=("base_text", "slm_text", "slm_speech")) -> pd.DataFrame:
    """A binary task with failed items, extraction failures and a domain breakdown, plus a 1-5 task."""
    rng = np.random.default_rng(seed)
    accuracy = {"base_text": 0.8, "slm_text": 0.65, "slm_speech": 0.45}
    rows = []
    for i in range(n):
        for arm in arms:
            right = bool(rng.random() < accuracy[arm])
            failed_extraction = arm == "slm_speech" and i % 9 == 0
            error = "audio could not be decoded" if arm == "slm_speech" and i in (3, 17) else None
            rows.append(
                {
                    "task": "quiz",
                    "item_id": f"q{i}",
                    "arm": arm,
                    "model": "base/llm" if arm == "base_text" else "slm/speech",
                    "response": None if error else "answer",
                    "extracted": None if (error or failed_extraction) else ("B" if right else "C"),
                    "correct": None if (error or failed_extraction) else right,
                    "score": None if (error or failed_extraction) else float(right),
                    "extraction_failed": failed_extraction,
                    "error": error,
                    "scorer": "mcq",
                    "binary": True,
                    "mcq_mode": "cloze",
                    "prompt": f"question {i}",
                    "latency_s": 0.1,
                    "domain": ["law", "physics", None][i % 3],
                }
            )
    for i in range(n // 2):
        for arm in arms:
            judge_failed = arm == "slm_text" and i == 4
            rows.append(
                {
                    "task": "chat",
                    "item_id": f"c{i}",
                    "arm": arm,
                    "model": "x",
                    "response": "text",
                    "extracted": None,
                    "correct": None,
                    "score": None if judge_failed else float(rng.integers(1, 6)),
                    "extraction_failed": judge_failed,
                    "error": None,
                    "scorer": "open",
                    "binary": False,
                    "mcq_mode": "generate",
                    "prompt": f"chat {i}",
                    "latency_s": 0.2,
                    "domain": None,
                }
            )
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame, **kwargs) -> dict:
    kwargs = {"model": "slm/speech", "base": "base/llm", "breakdowns": {"quiz": ["domain"]}, "n_boot": N_BOOT} | kwargs
    return build_summary(df, **kwargs)


def task(summary: dict, name: str) -> dict:
    return next(t for t in summary["tasks"] if t["task"] == name)


def test_summary_schema_exclusions_and_exact_decomposition():
    df = items_table()
    summary = summarize(df)
    assert summary["model"] == "slm/speech" and summary["base"] == "base/llm"
    quiz = task(summary, "quiz")
    assert (quiz["scorer"], quiz["scale"], quiz["mcq_mode"]) == ("mcq", "percent", "cloze")
    assert quiz["n"] == 38
    assert quiz["excluded"]["n"] == 2
    assert quiz["excluded"]["by_arm"] == {"base_text": 0, "slm_text": 0, "slm_speech": 2}
    assert quiz["excluded"]["reasons"][0] == "q3 [slm_speech]: audio could not be decoded"
    assert {arm: s["n"] for arm, s in quiz["arms"].items()} == {"base_text": 38, "slm_text": 38, "slm_speech": 38}

    used = df[(df.task == "quiz") & ~df.item_id.isin(["q3", "q17"])]
    for arm, stats in quiz["arms"].items():
        # an extraction failure counts as wrong
        assert stats["score"] == pytest.approx(100 * used[used.arm == arm]["score"].fillna(0).mean())
        lo, hi = stats["ci"]
        assert lo <= stats["score"] <= hi
    speech = used[used.arm == "slm_speech"]
    assert quiz["arms"]["slm_speech"]["extraction_failure_rate"] == pytest.approx(100 * speech.extraction_failed.mean())
    assert quiz["arms"]["base_text"]["extraction_failure_rate"] == 0.0

    scores = {arm: s["score"] for arm, s in quiz["arms"].items()}
    f, g, d = quiz["forgetting"], quiz["gap"], quiz["decomposition"]
    assert f["delta"] == pytest.approx(scores["base_text"] - scores["slm_text"])
    assert g["delta"] == pytest.approx(scores["slm_text"] - scores["slm_speech"])
    assert d["total"] == pytest.approx(d["forgetting"] + d["gap"], abs=1e-9)
    assert d["total"] == pytest.approx(scores["base_text"] - scores["slm_speech"], abs=1e-12)
    assert (d["forgetting"], d["gap"]) == (f["delta"], g["delta"])
    assert f["relative_pct"] == pytest.approx(100 * f["delta"] / scores["base_text"])
    assert g["relative_pct"] == pytest.approx(100 * g["delta"] / scores["slm_text"])
    assert f["test"] == g["test"] == "mcnemar-exact"
    assert 0 < f["p_value"] <= 1 and f["ci"][0] <= f["delta"] <= f["ci"][1]
    assert set(g["agreement"]) == {"same_answer", "same_correctness"}
    # what these items resolve, from the paired per-item differences (in points)
    text = used[used.arm == "slm_text"].set_index("item_id")["score"].fillna(0)
    spoken = speech.set_index("item_id")["score"].fillna(0).loc[text.index]
    assert g["resolvable"] == pytest.approx(resolution(100 * (text - spoken).to_numpy())["resolvable"])
    assert g["resolvable"] > abs(g["ci"][1] - g["ci"][0]) / 2  # 80% power asks for more than the CI's reach
    assert 0 <= g["agreement"]["same_answer"] <= g["agreement"]["same_correctness"] <= 100

    domains = quiz["breakdowns"]["domain"]
    assert set(domains) == {"law", "physics"}  # items without a domain are in no group
    law = used[(used.domain == "law") & (used.arm == "base_text")]
    assert domains["law"]["n"] == len(law)
    assert domains["law"]["base_text"] == pytest.approx(100 * law["score"].fillna(0).mean())


def test_graded_task_excludes_judge_failures_from_every_arm():
    chat = task(summarize(items_table()), "chat")
    assert (chat["scale"], chat["forgetting"]["test"], chat["gap"]["test"]) == ("1-5", "wilcoxon", "wilcoxon")
    assert chat["n"] == 19
    assert chat["excluded"] == {
        "n": 1,
        "by_arm": {"base_text": 0, "slm_text": 1, "slm_speech": 0},
        "reasons": ["c4 [slm_text]: no judge score"],
    }
    assert all(1 <= s["score"] <= 5 for s in chat["arms"].values())
    assert chat["arms"]["slm_text"]["extraction_failure_rate"] == pytest.approx(100 / 20)
    assert chat["gap"]["agreement"] == {"same_answer": None, "same_correctness": None}
    assert chat["breakdowns"] == {}
    d = chat["decomposition"]
    assert d["total"] == pytest.approx(d["forgetting"] + d["gap"], abs=1e-12)


def test_absent_arms_and_comparisons_are_absent():
    speech_only = summarize(items_table(arms=("slm_text", "slm_speech")), base=None)
    quiz = task(speech_only, "quiz")
    assert set(quiz["arms"]) == {"slm_text", "slm_speech"}
    assert "gap" in quiz and "forgetting" not in quiz and "decomposition" not in quiz
    assert set(quiz["breakdowns"]["domain"]["law"]) == {"slm_text", "slm_speech", "n"}

    text_only = task(summarize(items_table(arms=("base_text", "slm_text"))), "quiz")
    assert set(text_only["arms"]) == {"base_text", "slm_text"}
    assert "forgetting" in text_only and "gap" not in text_only and "decomposition" not in text_only
    assert text_only["n"] == 40  # the speech arm's failures no longer exclude anything

    one = task(summarize(items_table(arms=("slm_speech",))), "quiz")
    assert set(one["arms"]) == {"slm_speech"} and not {"forgetting", "gap", "decomposition"} & set(one)


def test_missing_rows_exclude_the_item_and_duplicates_are_refused():
    df = items_table()
    df = df[~((df.task == "quiz") & (df.item_id == "q5") & (df.arm == "base_text"))]
    quiz = task(summarize(df), "quiz")
    assert quiz["n"] == 37 and quiz["excluded"]["by_arm"]["base_text"] == 1
    assert "q5 [base_text]: no result for this arm" in quiz["excluded"]["reasons"]
    with pytest.raises(ValueError, match="duplicate"):
        summarize(pd.concat([df, df.head(1)]))
    with pytest.raises(ValueError, match="unknown arm"):
        summarize(df.assign(arm="speech"))


def test_summary_is_seeded():
    df = items_table()
    assert summarize(df, seed=4) == summarize(df, seed=4)
    assert task(summarize(df, seed=4), "quiz")["gap"]["ci"] != task(summarize(df, seed=5), "quiz")["gap"]["ci"]


def test_write_tables(tmp_path):
    df = items_table()
    all_failed = df.assign(error=lambda d: np.where(d.arm == "slm_speech", "boom", None))
    summary = summarize(all_failed)
    quiz = task(summary, "quiz")
    assert quiz["n"] == 0 and quiz["arms"]["base_text"]["score"] is None and quiz["gap"]["delta"] is None

    write_tables(df.sample(frac=1.0, random_state=0), tmp_path, summary)
    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == summary
    assert "NaN" not in text
    back = pd.read_parquet(tmp_path / "items.parquet")
    assert len(back) == len(df) == len(pd.read_csv(tmp_path / "items.csv"))
    assert list(back.columns) == list(df.columns)
    # one block per task and item (in first-appearance order), arms in their fixed order
    key = back["task"] + "/" + back["item_id"]
    assert (key != key.shift()).sum() == key.nunique() == len(back) // 3
    assert back["arm"].tolist()[:3] == ["base_text", "slm_text", "slm_speech"]
    assert not list(tmp_path.glob(".*.tmp"))
