"""`--diagnostics hearing`: which words each clip holds, and the gap split by how well they were heard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xkd_eval.records import QUESTION_AUDIO, AudioRef, Item
from xkd_eval.runner.core import RunConfig, TaskRun
from xkd_eval.runner.hearing import heard_words, hearing_diagnostics, hearing_split, repeat_settings
from xkd_eval.scoring import SCORERS
from xkd_eval.tasks import get_task
from xkd_eval.tasks.base import LoadedTask

MCQ_PROMPT = "What do cows drink?\nA. Milk\nB. Water\nC. Oil\nD. Juice"


def _run(items: list[Item], scorer: str) -> TaskRun:
    return TaskRun(get_task("builtin/mcq"), LoadedTask("t", tuple(items)), SCORERS.get(scorer))


def test_heard_words_are_those_the_speech_arm_hears(tmp_path):
    clip = AudioRef(path=str(tmp_path / "full.wav"))
    question_clip = str(tmp_path / "question.wav")
    mcq = Item(
        id="m", task="t", prompt=MCQ_PROMPT, references=("B",), audio=clip, metadata={QUESTION_AUDIO: question_clip}
    )
    cloze, letter = RunConfig(out_dir=tmp_path, mcq_mode="cloze"), RunConfig(out_dir=tmp_path, mcq_mode="letter")
    # the cloze arm hears the bare question's clip; the letter arm the full clip, options read aloud
    assert heard_words(mcq, _run([mcq], "mcq"), cloze) == "What do cows drink?"
    assert heard_words(mcq, _run([mcq], "mcq"), letter) == (
        "What do cows drink? Is it A, Milk; B, Water; C, Oil; or D, Juice?"
    )
    listen = Item(
        id="l", task="t", prompt="Repeat exactly: The cat sat.", references=("The cat sat.",), audio=clip,
        metadata={"spoken_text": "The cat sat.", "speech_instruction": "Repeat exactly what the speaker says."},
    )  # fmt: skip
    assert heard_words(listen, _run([listen], "wer"), cloze) == "The cat sat."
    # a sound to reason about (MMAU) is not the query: nothing to repeat
    sound = Item(id="s", task="t", prompt="What instrument plays?", references=("piano",), audio=clip,
                 metadata={"speech_instruction": "What instrument plays?"})  # fmt: skip
    assert heard_words(sound, _run([sound], "qa"), cloze) is None
    spoken_query = Item(id="q", task="t", prompt="Name a  red fruit.", references=("apple",), audio=clip)
    assert heard_words(spoken_query, _run([spoken_query], "qa"), cloze) == "Name a red fruit."
    written_only = Item(id="w", task="t", prompt="Name a red fruit.", references=("apple",))
    assert heard_words(written_only, _run([written_only], "qa"), cloze) is None


def test_repeat_budget_covers_the_longest_text_once_per_task():
    assert repeat_settings(["one two three", "one"]).max_new_tokens == 2 * 3 + 16
    assert repeat_settings(["word " * 500]).max_new_tokens == 256  # capped


def _heard() -> pd.DataFrame:
    # worked by hand below: two misheard items, one partly heard, three heard
    return pd.DataFrame({
        "item_id": list("abcdef"),
        "word_accuracy": [0.2, 0.4, 0.6, 0.9, 1.0, 1.0],
        "exact": [False, False, False, False, True, True],
        "text": [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        "speech": [0.0, 0.0, 1.0, 1.0, 1.0, 0.0],
    })  # fmt: skip


def test_split_by_hearing_matches_hand_worked_bands():
    result = hearing_split(_heard())
    assert result["n"] == 6
    assert result["word_accuracy"] == pytest.approx(100 * 4.1 / 6)
    assert result["exact"] == pytest.approx(100 / 3)
    low, mid, high = result["bands"]
    assert (low["band"], low["n"], low["text"], low["speech"], low["gap"]) == ("<50%", 2, 100.0, 0.0, 100.0)
    assert (mid["n"], mid["text"], mid["speech"], mid["gap"]) == (1, 100.0, 100.0, 0.0)
    assert high["n"] == 3 and high["text"] == pytest.approx(200 / 3) and high["gap"] == pytest.approx(0.0)
    lo, hi = result["ci"]
    assert lo <= result["word_accuracy"] <= hi
    # Spearman = Pearson of the ranks (ties share their mean rank), computed independently
    rank_acc = np.array([1, 2, 3, 4, 5.5, 5.5])
    rank_speech = np.array([2, 2, 5, 5, 5, 2])
    assert result["spearman"]["rho"] == pytest.approx(np.corrcoef(rank_acc, rank_speech)[0, 1])


def test_split_handles_empty_bands_judge_scales_and_constant_scores():
    heard = _heard().iloc[3:].assign(text=[4.0, 5.0, 3.0], speech=[2.0, 2.0, 2.0])
    result = hearing_split(heard, scale_unit="1-5")
    low, mid, high = result["bands"]
    assert low["n"] == 0 and low["gap"] is None and mid["text"] is None
    assert high["text"] == pytest.approx(4.0) and high["gap"] == pytest.approx(2.0)  # ratings stay on 1-5
    assert result["spearman"] is None  # a constant speech score has no rank correlation


def test_diagnostics_join_repetitions_to_the_arms_scores_per_task():
    heard = _heard()
    hearing_rows = [
        {"task": "t", "item_id": r.item_id, "word_accuracy": r.word_accuracy, "exact": r.exact}
        for r in heard.itertuples()
    ]
    rows = [
        {"task": "t", "item_id": r.item_id, "arm": arm, "score": getattr(r, column), "unit": "percent"}
        for r in heard.itertuples()
        for arm, column in (("slm_text", "text"), ("slm_speech", "speech"))
    ]
    rows.append({"task": "t", "item_id": "a", "arm": "base_text", "score": 0.0, "unit": "percent"})  # not used
    rows[0] = {**rows[0], "score": None}  # an errored text answer leaves its item out of the bands
    result = hearing_diagnostics(hearing_rows, rows)["t"]
    assert result["n"] == 6 and result["bands"][0]["n"] == 1
    assert result["instruction"] == "Repeat exactly what the speaker says."
    assert hearing_diagnostics([], rows) == {}


def test_diagnostics_do_not_depend_on_the_order_the_repetitions_came_in():
    """Repetitions come in whichever order they were answered (cached ones first, then longest clip first):
    the figures, the bootstrap CI included, must not depend on it, or a rerun changes a committed report."""
    import numpy as np

    accuracy = np.random.default_rng(0).random(30).round(3)
    hearing_rows = [
        {"task": "t", "item_id": f"i{i:02d}", "word_accuracy": float(a), "exact": bool(a > 0.95)}
        for i, a in enumerate(accuracy)
    ]
    rows = [
        {"task": "t", "item_id": f"i{i:02d}", "arm": arm, "score": float((i * k) % 3 == 0), "unit": "percent"}
        for i in range(30)
        for arm, k in (("slm_text", 1), ("slm_speech", 2))
    ]
    shuffled = [hearing_rows[i] for i in np.random.default_rng(1).permutation(30)]
    assert hearing_diagnostics(shuffled, rows) == hearing_diagnostics(hearing_rows, rows)
