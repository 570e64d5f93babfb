"""Short-answer QA (VoiceBench's sd-qa): PEDANT's first rule, optionally with a judge's vote.

PEDANT (qa_metrics) first normalises both strings (lowercase, ASCII punctuation removed, articles
a/an/the removed, whitespace collapsed) and accepts the answer when a normalised reference is a
*substring* of the normalised answer; only then does it consult a trained classifier, whose files
are downloaded at start (unavailable offline). We apply the rule and record which rule decided.
One deliberate difference: a reference that normalises to nothing ("the") matches every answer in
PEDANT; here it matches none.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from xkd_eval.records import Item, Score
from xkd_eval.scoring.open_judge import JudgeConfig, judge_qa

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    text = str(text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_reference(response: str, references: Sequence[str]) -> bool:
    answer = normalise_answer(response)
    return any(normalise_answer(ref) in answer for ref in references if normalise_answer(ref))


def score_qa(item: Item, response: str, *, judge: JudgeConfig | None = None) -> Score:
    if not item.references:
        raise ValueError(f"qa: item {item.id!r} has no reference")
    correct = contains_reference(response or "", item.references)
    details: dict[str, Any] = {"pedant_rule": "reference-in-answer"}
    if judge is not None:
        vote, meta = judge_qa(item, response, judge)
        details |= meta | {"judge_correct": vote}
    return Score(value=float(correct), correct=correct, details=details)


def summarize_qa(scores: Sequence[Score]) -> dict[str, Any]:
    from xkd_eval.scoring.base import summarize_binary

    summary = summarize_binary(scores)
    votes = [s.details.get("judge_correct") for s in scores if "judge_correct" in s.details]
    if votes:
        decided = [v for v in votes if v is not None]
        summary["pedant_rule"] = summary["score"]
        summary["judge"] = 100.0 * sum(decided) / len(decided) if decided else float("nan")
        summary["score"] = (summary["pedant_rule"] + summary["judge"]) / 2  # VoiceBench: (panda + gpt) / 2
    return summary
