"""Word error rate against the reference transcript (the built-in ``listen`` subset: repeat what was said).

Both strings are normalised first (lowercase, apostrophes dropped, other punctuation turned into
spaces, whitespace collapsed), then jiwer counts substitutions, deletions and insertions. The item's
score is ``max(0, 1 - WER)`` against the closest reference; an exact repetition is ``correct``.
The summary reports the corpus WER (all errors over all reference words) and the mean item score.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections.abc import Sequence
from typing import Any

from xkd_eval.records import Item, Score
from xkd_eval.scoring.base import ScorerSpec

_APOSTROPHES = re.compile(r"['\u2018\u2019`]")
_NON_WORD = re.compile(r"[^\w\s]|_")


def normalise_transcript(text: str) -> str:
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = _NON_WORD.sub(" ", _APOSTROPHES.sub("", text))
    return " ".join(text.split())


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(errors, reference words) after normalisation; an empty hypothesis deletes every word."""
    ref = normalise_transcript(reference)
    hyp = normalise_transcript(hypothesis)
    n_ref = len(ref.split())
    if not ref:
        raise ValueError("wer: a reference normalises to no words")
    if not hyp:
        return n_ref, n_ref
    import jiwer

    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, n_ref


def score_wer(item: Item, response: str) -> Score:
    if not item.references:
        raise ValueError(f"wer: item {item.id!r} has no reference transcript")
    best: tuple[float, int, int, str] | None = None
    for reference in item.references:
        errors, n_ref = word_errors(reference, response or "")
        rate = errors / n_ref
        if best is None or rate < best[0]:
            best = (rate, errors, n_ref, reference)
    assert best is not None
    rate, errors, n_ref, reference = best
    value = max(0.0, 1.0 - rate)
    return Score(
        value=value,
        correct=errors == 0,
        extracted=normalise_transcript(response or ""),
        details={"wer": rate, "errors": errors, "ref_words": n_ref, "reference": reference},
    )


def summarize_wer(scores: Sequence[Score]) -> dict[str, Any]:
    """Mean item score in percent (higher is better), with the corpus WER beside it."""
    n = len(scores)
    errors = sum(int(s.details.get("errors", 0)) for s in scores)
    words = sum(int(s.details.get("ref_words", 0)) for s in scores)
    values = [s.value for s in scores if s.value is not None]
    mean_score = statistics.fmean(values) if values else float("nan")
    return {
        "score": 100.0 * mean_score,
        "n": n,
        "corpus_wer": errors / words if words else float("nan"),
        "mean_item_score": mean_score,
        "exact": 100.0 * sum(bool(s.correct) for s in scores) / n if n else float("nan"),
        "extraction_failures": 0,
        "extraction_failure_rate": 0.0,
        "scale": "percent",
    }


WER_SPEC = ScorerSpec(
    "wer",
    score_wer,
    "repeat what was said: max(0, 1 - WER) per item, corpus WER in the summary",
    ("reference",),
    summarize=summarize_wer,
    binary=False,
)
