"""MMAU's answer matching (Sakshi113/MMAU), reimplemented from its rules.

Tokens are the ``\\b\\w+\\b`` words of the lowercased string. A prediction is correct when it contains
every token of the answer and none of the tokens that only the *other* choices have. A bare letter
therefore never matches (letters are not choice text).
"""

from __future__ import annotations

import re

from xkd_eval.records import Item, Score

_WORD = re.compile(r"\b\w+\b")


def tokens(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def mmau_match(prediction: str, answer: str, choices: tuple[str, ...] | list[str]) -> bool:
    predicted = tokens(prediction)
    answer_tokens = tokens(answer)
    distractor_tokens: set[str] = set()
    for choice in choices:
        distractor_tokens |= tokens(choice)
    distractor_tokens -= answer_tokens
    return answer_tokens <= predicted and not (distractor_tokens & predicted)


def score_mmau(item: Item, response: str) -> Score:
    if item.reference is None or not item.choices:
        raise ValueError(f"mmau: item {item.id!r} needs 'choices' and the answer as 'reference'/'answer'")
    correct = mmau_match(response or "", item.reference, item.choices)
    return Score(value=1.0 if correct else 0.0, correct=correct, extracted=item.reference if correct else None)
