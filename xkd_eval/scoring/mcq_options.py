"""Multiple-choice answers by log-likelihood instead of generation (``--mcq-mode letter|cloze``).

Small models often cannot follow "answer with a letter" yet rank the right option highest; the
report always says which mode produced a score.

- ``letter``: the options are in the query; the continuations scored are the letters "A".."D".
- ``cloze``: the query is the question alone (options stripped from a written query, whether written
  one per line or inline); the continuations are the option texts, scored as the whole of the
  assistant's reply (sum of token log-probabilities). An item whose options cannot be told apart from
  its question is refused (DataFormatError naming the item), never asked with its options still in.
"""

from __future__ import annotations

from dataclasses import dataclass

from xkd_eval.errors import DataFormatError
from xkd_eval.records import Item
from xkd_eval.scoring.mcq import HOW_TO_WRITE_OPTIONS, LETTERS, options_of, written_options

MCQ_MODES = ("generate", "letter", "cloze")


@dataclass(frozen=True)
class OptionSet:
    labels: tuple[str, ...]  # what counts as the extracted answer ("A".."D", or MMAU's choice text)
    continuations: tuple[str, ...]
    written_query: str  # the text-arm query to score the continuations after


def stem(prompt: str) -> str:
    """The question without its options: without its "A. ..." lines, or the text before the first marker
    of options written inline (see ``xkd_eval.scoring.mcq.written_options``)."""
    return written_options(prompt).question


def option_set(item: Item, scorer: str, mode: str) -> OptionSet | None:
    """The options to rank for this item, or None when the item is not multiple choice. Raises
    DataFormatError, naming the item, for a cloze-scored MCQ whose options cannot be told apart."""
    if mode == "generate" or scorer not in ("mcq", "mmau"):
        return None
    if scorer == "mcq":
        written = written_options(item.prompt or "", item.choices)
        if mode == "cloze" and written.layout == "ambiguous":
            raise DataFormatError(
                f"item {item.id!r}: cloze scoring asks the question without its options, but {written.problem}; "
                + HOW_TO_WRITE_OPTIONS
            )
        options = options_of(item)
        if len(options) < 2:
            return None
        letters = tuple(sorted(options))
        if mode == "letter":
            return OptionSet(letters, letters, item.prompt)
        return OptionSet(letters, tuple(options[k] for k in letters), written.question)
    choices = tuple(item.choices)
    if mode == "letter":
        listed = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices[: len(LETTERS)]))
        return OptionSet(choices[: len(LETTERS)], tuple(LETTERS[: len(choices)]), f"{item.prompt}\n{listed}")
    return OptionSet(choices, choices, item.prompt)
