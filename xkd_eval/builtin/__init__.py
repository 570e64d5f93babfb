"""The built-in spoken benchmark ``builtin/<subset>``: items written for xkd-eval, spoken by offline TTS.

Subsets (``data/<subset>.jsonl``, one item a line, the ``jsonl:`` record shape):

- ``mcq``: very easy 4-option questions ("A. ..." lines in the prompt and a ``choices`` list), the
  reference a letter, balanced over A-D by a seeded shuffle; ``domain``.
- ``qa``: short answers, a list of acceptable references; ``domain``.
- ``ifeval``: IFEval records (``instruction_id_list``, ``kwargs``, ``key``) for lm-eval's checkers.
- ``refusal``: harmful requests in the style of AdvBench (requests only); ``category``.
- ``open``: everyday requests, scored by a judge; ``domain``.
- ``listen``: "repeat what was said": the speech arm hears only the sentence, with the text
  instruction ``speech_instruction``; the written arm reads "Repeat exactly: <sentence>"; WER.
- ``heldout``: 240 very easy 4-option questions in the ``mcq`` record shape (12 domains), written after
  the organism and its remedy were built, never looked at while building them; the blind check of the
  speech arm.

Every item's spoken version is synthesised from ``spoken_text`` (default: the prompt) by a voice that
depends only on the item id (``xkd_eval.tts``). Loading attaches the clips from the TTS cache and, by
default, synthesises the missing ones first (once: the 3,057 clips, every item's and each MCQ's bare
question, take about 3.5 minutes on 2 cores).
``load_builtin(subset, audio="cached")`` only attaches clips already made; ``"off"`` attaches none (a
text-only run loads so). Items whose engine is not installed load without audio, with a problem that
names the install command.

The items were written for this project and copy no dataset; ``asks_builtin_question`` (an item's
text, or its question in other words: ``is_builtin_text``, ``builtin_paraphrases``) lets a builder of
training data keep them out of it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xkd_eval.errors import UnknownNameError, XkdError
from xkd_eval.records import Item
from xkd_eval.registry import unknown_name_message
from xkd_eval.tasks.base import LoadedTask, LoadProblem, TaskSpec
from xkd_eval.tasks.jsonl import item_from_record

DATA_DIR = Path(__file__).parent / "data"
AUDIO_MODES = ("auto", "cached", "off")
LISTEN_INSTRUCTION = "Repeat exactly what the speaker says."


@dataclass(frozen=True)
class Subset:
    name: str
    scorer: str
    description: str
    minimum: int  # the floor its item count must meet (checked by the tests)
    breakdowns: tuple[str, ...] = ()


SUBSETS: dict[str, Subset] = {
    s.name: s
    for s in (
        Subset("mcq", "mcq", "easy general-knowledge 4-option questions, letter reference", 900, ("domain",)),
        Subset("qa", "qa", "short-answer questions, several acceptable references", 110, ("domain",)),
        Subset("ifeval", "ifeval", "simple verifiable instructions (IFEval checkers)", 65),
        Subset("refusal", "refusal", "harmful requests that should be refused (AdvBench style)", 65, ("category",)),
        Subset("open", "open", "open-ended everyday requests (judge-scored)", 45, ("domain",)),
        Subset("listen", "wer", "repeat the spoken sentence (needs the audio), WER", 400),
        Subset("heldout", "mcq", "held-out easy 4-option questions, never used in development", 200, ("domain",)),
    )
}


def known_names() -> list[str]:
    return [f"builtin/{name}" for name in SUBSETS]


def _subset(name: str) -> Subset:
    if name not in SUBSETS:
        raise UnknownNameError(unknown_name_message("task", f"builtin/{name}", known_names()))
    return SUBSETS[name]


def data_file(subset: str) -> Path:
    return DATA_DIR / f"{_subset(subset).name}.jsonl"


@functools.cache
def records(subset: str) -> tuple[dict, ...]:
    """The subset's raw records, as stored."""
    path = data_file(subset)
    with path.open(encoding="utf-8") as handle:
        return tuple(json.loads(line) for line in handle if line.strip())


def text_items(subset: str) -> tuple[Item, ...]:
    """The subset's items without audio."""
    info = _subset(subset)
    name = f"builtin/{info.name}"
    return tuple(
        item_from_record(record, task=name, base_dir=None, fallback_id=str(i))
        for i, record in enumerate(records(info.name))
    )


def load_builtin(
    subset: str,
    *,
    audio: str = "auto",
    voices: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> LoadedTask:
    """Load ``builtin/<subset>`` (its first ``limit`` items); ``audio`` is auto (synthesise what is missing),
    cached or off.

    ``cache`` is the folder of clips (default ``<cache root>/tts``); ``voices`` the TTS voices.
    """
    from xkd_eval.tts import DEFAULT_VOICES, speak_items

    info = _subset(subset)
    name = f"builtin/{info.name}"
    items = text_items(info.name)[:limit]
    if audio not in AUDIO_MODES:
        raise XkdError(f"builtin audio must be one of {', '.join(AUDIO_MODES)}, not {audio!r}")
    mode = audio
    if mode == "off":
        return LoadedTask(name, items)
    spoken = speak_items(
        items,
        tuple(voices or DEFAULT_VOICES),
        cache,
        progress=progress,
        synthesize_missing=mode == "auto",
        skip_unavailable=True,
        question_clips=True,
    )
    problems = tuple(LoadProblem(item_id, reason) for item_id, reason in spoken.problems)
    return LoadedTask(name, spoken.items, problems)


def ensure_builtin_audio(
    subset: str | None = None,
    *,
    voices: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, LoadedTask]:
    """Synthesise every clip of one subset (or all of them) now; raises when an engine is missing."""
    from xkd_eval.tts import DEFAULT_VOICES, speak_items

    loaded: dict[str, LoadedTask] = {}
    for name in [subset] if subset else list(SUBSETS):
        spoken = speak_items(
            text_items(name), tuple(voices or DEFAULT_VOICES), cache, progress=progress, question_clips=True
        )
        loaded[name] = LoadedTask(f"builtin/{_subset(name).name}", spoken.items)
    return loaded


def spec(subset: str) -> TaskSpec:
    info = _subset(subset)

    def loader(data_dir: Path | None, limit: int | None) -> LoadedTask:
        # for builtin tasks a data dir, when given, is the folder of synthesised clips
        return load_builtin(info.name, cache=data_dir, limit=limit)

    return TaskSpec(
        name=f"builtin/{info.name}",
        scorer=info.scorer,
        description=f"xkd-eval built-in {info.name}: {info.description} ({len(records(info.name))} items)",
        speech=True,
        loader=loader,
        breakdowns=info.breakdowns,
        text_loader=lambda limit: LoadedTask(f"builtin/{info.name}", text_items(info.name)[:limit]),
    )


def resolve(rest: str) -> TaskSpec:
    """``builtin/<subset>``; the bare ``builtin`` lists the subsets in its error."""
    if not rest:
        raise UnknownNameError(f"builtin needs a subset: {', '.join(known_names())}")
    return spec(rest)


# --- keeping the benchmark out of training data ------------------------------------------------------

_WORDS = re.compile(r"[^\w\s]")


def normalise_text(text: str) -> str:
    return " ".join(_WORDS.sub(" ", str(text).lower()).split())


@functools.cache
def builtin_texts() -> frozenset[str]:
    """Normalised prompts, spoken texts and sentences of every built-in item."""
    texts: set[str] = set()
    for name in SUBSETS:
        for record in records(name):
            texts.add(normalise_text(record["prompt"]))
            if record.get("spoken_text"):
                texts.add(normalise_text(record["spoken_text"]))
            if name == "listen":
                texts.update(normalise_text(r) for r in record.get("reference") or ())
    texts.discard("")
    return frozenset(texts)


def is_builtin_text(text: str) -> bool:
    """True when ``text`` is (after normalisation) a built-in item's prompt, spoken text or sentence,
    or contains one: use it to filter training data so that the benchmark stays held out."""
    normalised = normalise_text(text)
    if normalised in builtin_texts():
        return True
    return any(t in normalised for t in builtin_texts() if len(t) >= 24)


# words that carry no topic: a question is known by the rest ("capital", "japan")
_FUNCTION_WORDS = frozenset(
    "a about after all also am an and any are as at be been before being but by can could did do does doing "
    "for from had has have he her here him his how i if in into is it its just know let me mine my no not of "
    "on or our please remind say she should so some tell than that the their them then there these they this "
    "those to us very was we were what when where which who whom whose why will with would you your "
    "give word one kind sort".split()
)


def _content_words(text: str) -> frozenset[str]:
    return frozenset(normalise_text(text).split()) - _FUNCTION_WORDS


@functools.cache
def _questions_by_word() -> dict[str, tuple[tuple[str, frozenset[str]], ...]]:
    """Each built-in question (an MCQ's stem, a prompt, a listen sentence) with two or more content
    words, filed under one of them (any one will do: a paraphrase must contain them all)."""
    from xkd_eval.scoring.mcq_options import stem

    index: dict[str, list[tuple[str, frozenset[str]]]] = {}
    for name in SUBSETS:
        for record in records(name):
            texts = [stem(record["prompt"]) if _subset(name).scorer == "mcq" else record["prompt"]]
            if name == "listen":
                texts += list(record.get("reference") or ())
            for words in {_content_words(t) for t in texts}:
                if len(words) >= 2:
                    index.setdefault(min(words), []).append((str(record["id"]), words))
    return {word: tuple(entries) for word, entries in index.items()}


def builtin_paraphrases(text: str) -> tuple[str, ...]:
    """Ids of the built-in items whose question's content words all occur in ``text``: "Tell me the
    capital of Japan." asks what "What is the capital of Japan?" asks, and "Give me a word that means the
    opposite of hot." what an MCQ's "What is the opposite of hot?" does, though neither contains the
    other. Training data that asks a benchmark question in other words is not held out either."""
    words = _content_words(text)
    index = _questions_by_word()
    return tuple(sorted({i for w in words for i, q in index.get(w, ()) if q <= words}))


def asks_builtin_question(text: str) -> bool:
    """``text`` is, contains or paraphrases a built-in item: what training data must not hold."""
    return is_builtin_text(text) or bool(builtin_paraphrases(text))


__all__ = [
    "DATA_DIR",
    "LISTEN_INSTRUCTION",
    "SUBSETS",
    "Subset",
    "asks_builtin_question",
    "builtin_paraphrases",
    "builtin_texts",
    "data_file",
    "ensure_builtin_audio",
    "is_builtin_text",
    "known_names",
    "load_builtin",
    "records",
    "resolve",
    "spec",
    "text_items",
]
