"""BBH answer extraction for VoiceBench's four subtasks (yes/no and (A)/(B) answers).

``compat="voicebench"`` applies the official rules in their order: normalise (lowercase, drop
speaker tags, turn : ** " - , . and the full-width colon into spaces, collapse whitespace), then the
subtask's phrase list (preceded by the shared yes/no phrases for all but hyperbaton), then leading or
trailing yes/no. Where the official code would draw a random label we return none.

``compat="robust"`` uses the same rules with three official slips corrected (a bare "b" read as (A)
for hyperbaton; "X must be lying" read as telling the truth; "the sentence ... is not plausible"
read as plausible), then looks for an explicit final answer the rules do not know.
"""

from __future__ import annotations

import functools
import re

from xkd_eval.records import Item, Score
from xkd_eval.scoring.phrases import voicebench_phrases
from xkd_eval.tasks.voicebench import BBH_SUBTASKS, bbh_subtask

# label 0/1 per subtask, as in the reference column
LABELS = {
    "hyperbaton": ("(A)", "(B)"),
    "sports_understanding": ("no", "yes"),
    "navigate": ("no", "yes"),
    "web_of_lies": ("no", "yes"),
}
_REFERENCE_TO_LABEL = {"no": 0, "yes": 1, "(a)": 0, "(b)": 1}

# (subtask, kind, pattern) -> corrected label, for the robust mode
_OFFICIAL_SLIPS = {
    ("hyperbaton", "eq", "b"): 1,
    ("web_of_lies", "endswith", "must be lying"): 0,
    ("sports_understanding", "re", "the sentence (.+?) is not plausible"): 0,
}


def normalise(response: str) -> str:
    text = response.lower()
    if text.endswith("<|user|>"):
        text = text[:-8].strip()
    if text.startswith(("<1>", "<2>", "<3>")):
        text = text[3:].strip()
    text = text.replace("<|turn_end|>", "")
    for mark in (":", "**", '"', "-", ",", ".", "："):
        text = text.replace(mark, " ")
    return " ".join(text.split())


def _matches(kind: str, pattern: str, text: str) -> bool:
    if kind == "in":
        return pattern in text
    if kind == "eq":
        return text == pattern
    if kind == "startswith":
        return text.startswith(pattern)
    if kind == "endswith":
        return text.endswith(pattern)
    if kind == "re":
        return re.search(pattern, text) is not None
    raise ValueError(f"unknown rule kind {kind!r}")


@functools.cache
def _rules(subtask: str, compat: str) -> tuple[tuple[str, str, int], ...]:
    tables = voicebench_phrases()["bbh"]
    rules = [] if subtask == "hyperbaton" else list(tables["yes_no"])
    rules += tables[subtask]
    if compat != "voicebench":
        rules = [(k, p, _OFFICIAL_SLIPS.get((subtask, k, p), label)) for k, p, label in rules]
    return tuple((k, p, int(label)) for k, p, label in rules)


_EXPLICIT = {
    "yes_no": re.compile(r"\b(?:answer|conclusion|so|therefore)\b\W{0,3}(?:is\W{0,3})?(yes|no)\b"),
    "ab": re.compile(r"\b(?:answer|option|sentence)\b\W{0,3}(?:is\W{0,3})?(?:option\W{0,3})?\(?([ab])\)?(?:\W|$)"),
}


def extract_label(response: str, subtask: str, compat: str = "voicebench") -> int | None:
    if subtask not in LABELS:
        raise ValueError(f"bbh: unknown subtask {subtask!r}; expected one of {', '.join(BBH_SUBTASKS)}")
    text = normalise(response)
    for kind, pattern, label in _rules(subtask, compat):
        if _matches(kind, pattern, text):
            return label
    if compat == "voicebench":
        return None
    if subtask == "hyperbaton":
        found = _EXPLICIT["ab"].findall(text)
        return {"a": 0, "b": 1}[found[-1]] if found else None
    found = _EXPLICIT["yes_no"].findall(text)
    if found:
        return int(found[-1] == "yes")
    if subtask == "sports_understanding":
        if re.search(r"\b(?:implausible|not plausible)\b", text):
            return 0
        if re.search(r"\bplausible\b", text):
            return 1
    return None


def subtask_of(item: Item) -> str:
    if item.metadata.get("subtask"):
        return str(item.metadata["subtask"])
    return bbh_subtask(str(item.metadata.get("source_id", item.id)))


def score_bbh(item: Item, response: str, *, compat: str = "voicebench") -> Score:
    subtask = subtask_of(item)
    reference = (item.reference or "").strip().lower()
    if reference not in _REFERENCE_TO_LABEL:
        raise ValueError(f"bbh: item {item.id!r} has reference {item.reference!r}; expected yes, no, (A) or (B)")
    label = extract_label(response or "", subtask, compat)
    if label is None:
        return Score(value=None, correct=None, extracted=None, details={"subtask": subtask})
    correct = label == _REFERENCE_TO_LABEL[reference]
    return Score(value=float(correct), correct=correct, extracted=LABELS[subtask][label], details={"subtask": subtask})
