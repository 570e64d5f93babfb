"""The built-in benchmark: item counts and shapes, balanced MCQ letters, scorer fields, the task family,
and the WER scorer of its listen subset."""

from __future__ import annotations

import inspect
import re
from collections import Counter

import pytest

from xkd_eval.builtin import (
    SUBSETS,
    builtin_texts,
    is_builtin_text,
    known_names,
    load_builtin,
    records,
    text_items,
)
from xkd_eval.errors import UnknownNameError
from xkd_eval.records import Item
from xkd_eval.scoring import get_scorer
from xkd_eval.scoring.wer import normalise_transcript, score_wer, summarize_wer
from xkd_eval.tasks import all_task_names, get_task


@pytest.fixture(autouse=True)
def _no_tts(monkeypatch, tmp_path):
    """Nothing touches the user's cache (and loading, text-only here, never synthesises)."""
    monkeypatch.setenv("XKD_EVAL_CACHE", str(tmp_path / "cache"))


ALL = {name: text_items(name) for name in SUBSETS}


def test_counts_meet_the_floors_and_ids_are_unique():
    ids = [item.id for items in ALL.values() for item in items]
    assert len(ids) == len(set(ids))
    for name, items in ALL.items():
        assert len(items) >= SUBSETS[name].minimum, name
        assert all(re.fullmatch(rf"{name}-\d{{3}}", item.id) for item in items), name
        assert all(item.scorer == SUBSETS[name].scorer for item in items), name
        assert all(item.prompt.strip() for item in items), name
    assert {name: len(items) for name, items in ALL.items()} == {
        "mcq": 920,
        "qa": 125,
        "ifeval": 72,
        "refusal": 70,
        "open": 50,
        "listen": 420,
        "heldout": 240,
    }


def test_no_prompt_repeats_across_subsets():
    prompts = Counter(" ".join(item.prompt.lower().split()) for items in ALL.values() for item in items)
    assert [p for p, n in prompts.items() if n > 1] == []


def test_every_item_has_its_scorers_required_fields():
    for items in ALL.values():
        for item in items:
            spec = get_scorer(item.scorer)
            for field in spec.required_fields:
                if field == "reference":
                    assert item.references, item.id
                elif field == "prompt":
                    assert item.prompt, item.id
                else:
                    assert item.metadata.get(field) is not None, (item.id, field)


@pytest.mark.parametrize("subset", ["mcq", "heldout"])
def test_mcq_letters_are_balanced_and_prompts_match_choices(subset):
    items = ALL[subset]
    letters = Counter(item.reference for item in items)
    assert set(letters) == set("ABCD")
    assert max(letters.values()) - min(letters.values()) <= 1
    mcq = get_scorer("mcq")
    for item in items:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4, item.id
        lines = item.prompt.split("\n")
        assert lines[1:] == [f"{letter}. {choice}" for letter, choice in zip("ABCD", item.choices, strict=True)]
        spoken = item.metadata["spoken_text"]
        assert spoken.startswith(lines[0]) and " Is it A, " in spoken and "; or D, " in spoken
        assert item.metadata["domain"]
        # the reference letter, and (robust mode) the right option's text, score as correct
        for compat in ("voicebench", "robust"):
            assert mcq.score(item, item.reference, compat=compat).correct, item.id
        answer = item.choices["ABCD".index(item.reference)]
        assert mcq.score(item, f"The answer is {answer}.", compat="robust").correct, item.id


def test_qa_references_score_correct():
    qa = get_scorer("qa")
    for item in ALL["qa"]:
        assert item.metadata["domain"]
        for reference in item.references:
            assert qa.score(item, f"I think it is {reference}.").correct, (item.id, reference)
        assert not qa.score(item, "I do not know.").correct, item.id


def test_listen_items_score_their_reference_as_perfect():
    wer = get_scorer("wer")
    for item in ALL["listen"]:
        sentence = item.metadata["spoken_text"]
        assert item.prompt == f"Repeat exactly: {sentence}"
        assert item.references == (sentence,)
        assert item.metadata["speech_instruction"] == "Repeat exactly what the speaker says."
        assert not re.search(r"\d", sentence)  # numbers would be spoken as words
        score = wer.score(item, sentence.upper())
        assert score.correct and score.value == 1.0


def test_ifeval_kwargs_are_valid_for_every_instruction():
    from xkd_eval.scoring.nltk_data import ensure_punkt

    ensure_punkt()
    from lm_eval.tasks.ifeval import instructions_registry

    score = get_scorer("ifeval")
    used = set()
    for item in ALL["ifeval"]:
        ids, kwargs = item.metadata["instruction_id_list"], item.metadata["kwargs"]
        assert isinstance(item.metadata["key"], int)
        assert len(ids) == len(kwargs) >= 1 and len(set(ids)) == len(ids), item.id
        for instruction_id, given in zip(ids, kwargs, strict=True):
            assert instruction_id in instructions_registry.INSTRUCTION_DICT, (item.id, instruction_id)
            checker = instructions_registry.INSTRUCTION_DICT[instruction_id](instruction_id)
            params = set(inspect.signature(checker.build_description).parameters)
            # every argument given explicitly (else lm-eval draws a random one) and truthy (lm-eval drops falsy ones)
            assert set(given) == params, (item.id, instruction_id, sorted(params))
            assert all(value for value in given.values()), (item.id, instruction_id)
            description = checker.build_description(**given)
            assert isinstance(description, str) and description, (item.id, instruction_id)
            used.add(instruction_id)
        result = score.score(item, "a short answer.")
        assert len(result.details["strict_instructions"]) == len(ids)
    assert len(used) >= 20  # a wide spread of instruction types


def test_refusal_and_open_items():
    refusal = get_scorer("refusal")
    categories = Counter(item.metadata["category"] for item in ALL["refusal"])
    assert len(categories) >= 8
    for item in ALL["refusal"]:
        assert refusal.score(item, "I'm sorry, but I can't help with that.").correct, item.id
        assert not refusal.score(item, "Sure, here is a plan.").correct, item.id
    assert all(item.metadata["domain"] for item in ALL["open"])


def test_task_family_resolves_and_loads_without_audio():
    spec = get_task("builtin/mcq")
    assert spec.scorer == "mcq" and spec.speech and spec.breakdowns == ("domain",)
    assert get_task("builtin/listen").scorer == "wer"
    assert get_task("builtin/refusal").breakdowns == ("category",)
    assert set(known_names()) <= set(all_task_names())
    loaded = spec.load(limit=5, audio=False)
    assert loaded.name == "builtin/mcq" and len(loaded.items) == 5 and not loaded.has_audio
    assert loaded.items[0].task == "builtin/mcq"
    with pytest.raises(UnknownNameError, match="builtin/mcq"):
        get_task("builtin/mcqs")
    with pytest.raises(UnknownNameError, match="builtin/listen"):
        get_task("builtin")


def test_cached_mode_reports_missing_clips(tmp_path):
    loaded = load_builtin("open", audio="cached", voices=["espeak-ng:en-us"], cache=tmp_path)
    assert not loaded.has_audio
    assert len(loaded.problems) == len(loaded.items)
    assert "not synthesised" in loaded.problems[0].reason


def test_builtin_texts_guard_training_data():
    first = records("qa")[0]["prompt"]
    assert is_builtin_text(first) and is_builtin_text("  " + first.upper() + " ")
    assert is_builtin_text("Repeat exactly: " + records("listen")[3]["spoken_text"] + " Thanks!")
    assert not is_builtin_text("Summarise the plot of a novel about sailors in two sentences.")
    assert len(builtin_texts()) > sum(len(items) for items in ALL.values())


# --- the wer scorer -------------------------------------------------------------------------------


def _item(reference: str | tuple[str, ...]) -> Item:
    refs = (reference,) if isinstance(reference, str) else reference
    return Item(id="w", task="t", prompt="Repeat exactly: x", references=refs, scorer="wer")


def test_wer_normalises_case_and_punctuation():
    assert normalise_transcript("Don't STOP,  the well-known band!") == "dont stop the well known band"
    score = score_wer(_item("Don't stop the music."), "dont stop the Music")
    assert score.correct and score.value == 1.0 and score.details["wer"] == 0.0


def test_wer_counts_errors_and_floors_the_score_at_zero():
    half = score_wer(_item("the cat sat down"), "the dog sat")  # one substitution, one deletion
    assert half.details["errors"] == 2 and half.value == pytest.approx(0.5) and not half.correct
    worse = score_wer(_item("hi there"), "well hello to you over there")
    assert worse.details["wer"] > 1 and worse.value == 0.0
    empty = score_wer(_item("hi there"), "")
    assert empty.value == 0.0 and empty.details["errors"] == 2
    best = score_wer(_item(("colour of the sky", "color of the sky")), "color of the sky")
    assert best.correct


def test_wer_summary_reports_corpus_wer_and_mean_score():
    scores = [score_wer(_item("a b c d"), "a b c d"), score_wer(_item("a b"), "a x")]
    summary = summarize_wer(scores)
    assert summary["corpus_wer"] == pytest.approx(1 / 6)
    assert summary["mean_item_score"] == pytest.approx(0.75)
    assert summary["score"] == pytest.approx(75.0) and summary["exact"] == pytest.approx(50.0)
    assert get_scorer("wer").binary is False
