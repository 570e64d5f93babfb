"""Multiple-choice answers by log-likelihood instead of generation (``--mcq-mode letter|cloze``).

Small models often cannot follow "answer with a letter" yet rank the right option highest; the
report always says which mode produced a score.

- ``letter``: the options are in the query; the continuations scored are the letters "A".."D".
- ``cloze``: the query is the question alone (options stripped from a written query); the
  continuations are the option texts, scored as the whole of the assistant's reply (sum of token
  log-probabilities).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xkd_eval.records import Item
from xkd_eval.scoring.mcq import LETTERS, options_of

MCQ_MODES = ("generate", "letter", "cloze")
_OPTION_LINE = re.compile(r"(?m)^\s*\(?[A-D][.):]\s+.+$")


@dataclass(frozen=True)
class OptionSet:
    labels: tuple[str, ...]  # what counts as the extracted answer ("A".."D", or MMAU's choice text)
    continuations: tuple[str, ...]
    written_query: str  # the text-arm query to score the continuations after


def stem(prompt: str) -> str:
    """The question without its "A. ..." option lines."""
    return re.sub(r"\n{2,}", "\n", _OPTION_LINE.sub("", prompt)).strip()


def option_set(item: Item, scorer: str, mode: str) -> OptionSet | None:
    """The options to rank for this item, or None when the item is not multiple choice."""
    if mode == "generate" or scorer not in ("mcq", "mmau"):
        return None
    if scorer == "mcq":
        options = options_of(item)
        if len(options) < 2:
            return None
        letters = tuple(sorted(options))
        if mode == "letter":
            return OptionSet(letters, letters, item.prompt)
        return OptionSet(letters, tuple(options[k] for k in letters), stem(item.prompt))
    choices = tuple(item.choices)
    if mode == "letter":
        listed = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices[: len(LETTERS)]))
        return OptionSet(choices[: len(LETTERS)], tuple(LETTERS[: len(choices)]), f"{item.prompt}\n{listed}")
    return OptionSet(choices, choices, item.prompt)
