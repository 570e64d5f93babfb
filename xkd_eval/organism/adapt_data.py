"""The organism's adaptation data: spoken instruction/response pairs, generated programmatically.

Every example has an ``instruction`` (the text shown with the audio), a ``spoken_text`` (what the
TTS voice says), a ``response`` (the assistant's reply the model is trained on), and, once
synthesised, an ``audio`` path. The families, all answerable from the audio alone:

- ``dictation``: "Transcribe the audio." -> the sentence, for 1,500 everyday sentences written for this
  project (``dictation.txt``: about 3,600 distinct words), so that the ear learns words, not templates;
- ``transcribe``: the same with templated sentences (people, objects, places, times);
- ``arithmetic``: a spoken sum, difference or product in words -> the result in words;
- ``mcq``: a spoken question with four options read aloud ("... Is it A, x; B, y; C, z; or D, w?")
  -> the option text (the shape of the speech arm's multiple-choice queries);
- ``count``: "I saw three cats and two dogs." + "How many animals ..." -> "five";
- ``colour``: "Anna's hat is green and her scarf is red." + "What colour is the scarf?" -> "red";
- ``spell``: "Spell the word lamp." -> "L A M P";
- ``compare``: "Which is bigger, eleven or four?" -> "eleven";
- ``sequence``: "Name the day that follows Tuesday." -> "Wednesday" (days, months, numbers);
- ``recall``: "Max left the keys in the kitchen." + "Where are the keys?" -> "in the kitchen";
- ``words``: four to nine words drawn at random from the dictation vocabulary, transcribed: sound alone;
- ``questions``: "Repeat exactly what the speaker says." (or another transcription instruction) -> the
  sentence, for 2,984 questions and remarks written for this project (``questions.txt``) on the topics an
  everyday quiz asks about.

Generation is deterministic for a seed (``random.Random(seed)``; example ids are content hashes), and
any example whose text is, contains or paraphrases a built-in benchmark item is dropped
(``xkd_eval.builtin.asks_builtin_question``), so the benchmark stays held out. The record and its
reader are ``xkd_eval.distill.examples``.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from xkd_eval.distill.examples import SpokenExample, example_id, synthesize_examples
from xkd_eval.errors import XkdError
from xkd_eval.models.base import SPEECH_INSTRUCTION

# ---------------------------------------------------------------------------------------------- vocabulary

NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
TENS = {30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety"}
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
COLOURS = "red blue green yellow orange purple pink brown black white grey".split()
NAMES = "Anna Ben Clara David Emma Felix Grace Henry Iris Jack Lucy Max Nina Oscar Paula Sam Tom Vera".split()
OBJECTS = "hat scarf kite cup door bike boat shirt bag lamp chair ball box umbrella coat mug pen sofa".split()
PLACES = "kitchen garden park library station market office attic garage hallway bakery museum".split()
ANIMALS = "cats dogs birds rabbits horses ducks goats sheep".split()
FRUITS = "apples pears plums oranges lemons peaches".split()
THINGS = "keys wallet glasses phone ticket notebook gloves bottle".split()
VERBS = (
    ("painted", "the {adj} {obj}"),
    ("found", "a {adj} {obj}"),
    ("carried", "the {adj} {obj}"),
    ("cleaned", "the {adj} {obj}"),
    ("bought", "a {adj} {obj}"),
    ("dropped", "the {adj} {obj}"),
    ("fixed", "the {adj} {obj}"),
    ("hid", "the {adj} {obj}"),
)
ADJECTIVES = "old new small big shiny heavy soft broken wooden striped".split()
TIMES = ("this morning", "last night", "on Sunday", "after lunch", "before dinner", "at noon", "yesterday")
SPELL_WORDS = (
    "lamp desk frog milk rain star ship coin road tree bell fork nest ring sock drum leaf rope vase kite "
    "mint tent wolf seed"
).split()

TRANSCRIBE_INSTRUCTIONS = (
    "Transcribe the audio.",
    "Write down exactly what the speaker says.",
    "What did the speaker say? Write it out.",
    "Please transcribe this recording.",
    "Repeat exactly what the speaker says.",
)
ANSWER_INSTRUCTIONS = (SPEECH_INSTRUCTION, SPEECH_INSTRUCTION, "Answer the question in the audio.")


def number_words(n: int) -> str:
    """0..99 in words ("forty-two")."""
    if not 0 <= n < 100:
        raise ValueError(f"{n} is outside 0..99")
    if n <= 20:
        return NUMBERS[n]
    tens, ones = divmod(n, 10)
    word = TENS[tens * 10] if tens >= 3 else "twenty"
    return word if ones == 0 else f"{word}-{NUMBERS[ones]}"


# ---------------------------------------------------------------------------------------------- families
# each returns (instruction, spoken_text, response)

Triple = tuple[str, str, str]


def _sentence(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    verb, phrase = rng.choice(VERBS)
    obj = phrase.format(adj=rng.choice(ADJECTIVES), obj=rng.choice(OBJECTS)).replace("a old", "an old")
    shape = rng.randrange(4)
    if shape == 0:
        return f"{name} {verb} {obj} in the {rng.choice(PLACES)}."
    if shape == 1:
        return f"{name} {verb} {obj} {rng.choice(TIMES)}."
    if shape == 2:
        return f"{rng.choice(TIMES).capitalize()}, {name} {verb} {obj}."
    return f"{name} and {rng.choice(NAMES)} {verb} {obj} near the {rng.choice(PLACES)}."


def transcribe(rng: random.Random) -> Triple:
    sentence = _sentence(rng)
    return rng.choice(TRANSCRIBE_INSTRUCTIONS), sentence, sentence


DICTATION_FILE = Path(__file__).with_name("dictation.txt")


@functools.cache
def _lines(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _transcription_of(sentences: Sequence[str], rng: random.Random) -> Triple:
    sentence = rng.choice(sentences)
    return rng.choice(TRANSCRIBE_INSTRUCTIONS), sentence, sentence


def dictation_sentences() -> tuple[str, ...]:
    """The open-vocabulary sentences of the ``dictation`` family, written for this project (one per line)."""
    return _lines(DICTATION_FILE)


def dictation(rng: random.Random) -> Triple:
    return _transcription_of(dictation_sentences(), rng)


def arithmetic(rng: random.Random) -> Triple:
    op = rng.randrange(3)
    if op == 0:
        a, b = rng.randrange(1, 30), rng.randrange(1, 30)
        result = a + b
        spoken = rng.choice(("Add {a} and {b}.", "How much is {a} and {b} together?", "What do {a} and {b} make?"))
    elif op == 1:
        a = rng.randrange(5, 40)
        b = rng.randrange(1, a)
        result = a - b
        spoken = rng.choice(("Take {b} away from {a}.", "How much is {a} take away {b}?", "Subtract {b} from {a}."))
    else:
        a, b = rng.randrange(2, 10), rng.randrange(2, 10)
        result = a * b
        spoken = rng.choice(("Multiply {a} by {b}.", "How much is {a} multiplied by {b}?"))
    return rng.choice(ANSWER_INSTRUCTIONS), spoken.format(a=number_words(a), b=number_words(b)), number_words(result)


def _mcq_question(rng: random.Random) -> tuple[str, str, list[str]]:
    """(question, answer, three distractors)."""
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randrange(1, 15), rng.randrange(1, 15)
        answer = a + b
        wrong = rng.sample([n for n in range(max(0, answer - 6), answer + 7) if n != answer], 3)
        return (
            f"How much is {number_words(a)} and {number_words(b)} together?",
            number_words(answer),
            [number_words(n) for n in wrong],
        )
    if kind == 1:
        day = rng.randrange(7)
        answer = DAYS[(day + 1) % 7]
        wrong = rng.sample([d for d in DAYS if d != answer], 3)
        return f"Name the day that follows {DAYS[day]}.", answer, wrong
    if kind == 2:
        month = rng.randrange(12)
        answer = MONTHS[(month + 1) % 12]
        wrong = rng.sample([m for m in MONTHS if m != answer], 3)
        return f"Name the month that follows {MONTHS[month]}.", answer, wrong
    if kind == 3:
        colour = rng.choice(COLOURS)
        return "Which of these words is a colour?", colour, rng.sample(OBJECTS, 3)
    numbers = rng.sample(range(1, 60), 4)
    answer = max(numbers)
    return (
        "Which of these numbers is the largest?",
        number_words(answer),
        [number_words(n) for n in numbers if n != answer],
    )


def mcq(rng: random.Random) -> Triple:
    question, answer, distractors = _mcq_question(rng)
    options = [answer, *distractors]
    rng.shuffle(options)
    read = "; ".join(("or " if i == 3 else "") + f"{'ABCD'[i]}, {text}" for i, text in enumerate(options))
    return rng.choice(ANSWER_INSTRUCTIONS), f"{question} Is it {read}?", answer


def count(rng: random.Random) -> Triple:
    first, second = rng.sample(ANIMALS, 2)
    a, b = rng.randrange(2, 9), rng.randrange(2, 9)
    if rng.random() < 0.5:
        spoken = f"I saw {number_words(a)} {first} and {number_words(b)} {second} in the {rng.choice(PLACES)}."
        return "How many animals did the speaker see in total?", spoken, number_words(a + b)
    fruit = rng.choice(FRUITS)
    total, eaten = a + b, rng.randrange(1, a + b)
    spoken = f"I had {number_words(total)} {fruit} and ate {number_words(eaten)}. How many {fruit} are left?"
    return rng.choice(ANSWER_INSTRUCTIONS), spoken, number_words(total - eaten)


def colour(rng: random.Random) -> Triple:
    name = rng.choice(NAMES)
    obj1, obj2 = rng.sample(OBJECTS, 2)
    c1, c2 = rng.sample(COLOURS, 2)
    spoken = f"{name}'s {obj1} is {c1} and the {obj2} is {c2}."
    if rng.random() < 0.5:
        return f"What colour is the {obj1}?", spoken, c1
    return f"What colour is the {obj2}?", spoken, c2


def spell(rng: random.Random) -> Triple:
    word = rng.choice(SPELL_WORDS)
    spoken = rng.choice(("Spell the word {w}.", "How do you spell {w}?")).format(w=word)
    return rng.choice(ANSWER_INSTRUCTIONS), spoken, " ".join(word.upper())


def compare(rng: random.Random) -> Triple:
    a, b = rng.sample(range(0, 60), 2)
    if rng.random() < 0.5:
        spoken, answer = f"Which is bigger, {number_words(a)} or {number_words(b)}?", max(a, b)
    else:
        spoken, answer = f"Which is smaller, {number_words(a)} or {number_words(b)}?", min(a, b)
    return rng.choice(ANSWER_INSTRUCTIONS), spoken, number_words(answer)


def sequence(rng: random.Random) -> Triple:
    kind = rng.randrange(3)
    if kind == 0:
        day = rng.randrange(7)
        return rng.choice(ANSWER_INSTRUCTIONS), f"Name the day that follows {DAYS[day]}.", DAYS[(day + 1) % 7]
    if kind == 1:
        month = rng.randrange(12)
        return rng.choice(ANSWER_INSTRUCTIONS), f"Name the month before {MONTHS[month]}.", MONTHS[month - 1]
    n = rng.randrange(1, 60)
    return rng.choice(ANSWER_INSTRUCTIONS), f"Say the number that follows {number_words(n)}.", number_words(n + 1)


def recall(rng: random.Random) -> Triple:
    name, thing, place = rng.choice(NAMES), rng.choice(THINGS), rng.choice(PLACES)
    spoken = f"{name} left the {thing} in the {place}."
    if rng.random() < 0.5:
        verb = "are" if thing.endswith("s") else "is"
        return f"Where {verb} the {thing}?", spoken, f"in the {place}"
    return f"Who left the {thing} in the {place}?", spoken, name


QUESTIONS_FILE = Path(__file__).with_name("questions.txt")


def written_questions() -> tuple[str, ...]:
    """The ``questions`` family's sentences, written for this project (one per line): everyday and quiz-style
    questions and remarks on the topics a general-knowledge benchmark asks about (the held-out check keeps
    the 117 that ask a benchmark item in other words from being drawn)."""
    return _lines(QUESTIONS_FILE)


def questions(rng: random.Random) -> Triple:
    return _transcription_of(written_questions(), rng)


@functools.cache
def _word_pool() -> tuple[str, ...]:
    """The distinct words of the dictation sentences (letters and apostrophes), in first-seen order."""
    seen: dict[str, None] = {}
    for sentence in dictation_sentences():
        for word in re.findall(r"[a-z']+", sentence.lower()):
            if len(word.strip("'")) > 1:
                seen.setdefault(word.strip("'"), None)
    return tuple(seen)


def words(rng: random.Random) -> Triple:
    """Four to nine words drawn at random from the dictation vocabulary, transcribed: no sentence to guess
    from, so only the sound says what was said."""
    text = " ".join(rng.sample(_word_pool(), rng.randrange(4, 10)))
    text = text[0].upper() + text[1:] + "."
    return rng.choice(TRANSCRIBE_INSTRUCTIONS), text, text


FAMILIES: dict[str, Callable[[random.Random], Triple]] = {
    "transcribe": transcribe,
    "dictation": dictation,
    "arithmetic": arithmetic,
    "mcq": mcq,
    "count": count,
    "colour": colour,
    "spell": spell,
    "compare": compare,
    "sequence": sequence,
    "recall": recall,
    "words": words,
    "questions": questions,
}
# share of the examples each family gets (normalised)
DEFAULT_MIX: dict[str, float] = {
    "dictation": 0.40,
    "transcribe": 0.06,
    "arithmetic": 0.10,
    "mcq": 0.14,
    "count": 0.06,
    "colour": 0.06,
    "spell": 0.04,
    "compare": 0.05,
    "sequence": 0.05,
    "recall": 0.04,
}


def generate_examples(
    n: int = 1000, *, seed: int = 0, mix: dict[str, float] | None = None, max_tries: int = 50
) -> list[SpokenExample]:
    """``n`` distinct examples (by instruction and spoken text), families in the proportions of ``mix``,
    none overlapping the built-in benchmark. Deterministic for ``seed``; raises when a family cannot
    produce enough distinct examples."""
    from xkd_eval.builtin import asks_builtin_question

    mix = dict(mix or DEFAULT_MIX)
    unknown = sorted(set(mix) - set(FAMILIES))
    if unknown:
        raise XkdError(f"unknown data families {unknown}; known: {', '.join(FAMILIES)}")
    # added left to right in plain floats: Python 3.12's sum() compensates rounding, which moves a quota's
    # floor by one and changes the data (the committed adapter's recipe digest) between Python versions
    total = functools.reduce(operator.add, mix.values(), 0.0)
    if n < 1 or total <= 0:
        raise XkdError("need n >= 1 and a mix with positive weights")
    quotas = {name: int(n * weight / total) for name, weight in mix.items()}
    for name in sorted(mix, key=lambda k: -mix[k])[: n - sum(quotas.values())]:  # hand out the remainder
        quotas[name] += 1
    rng = random.Random(seed)
    examples: list[SpokenExample] = []
    seen: set[tuple[str, str]] = set()
    for name, quota in quotas.items():
        made, tries = 0, 0
        while made < quota:
            tries += 1
            if tries > quota * max_tries:
                raise XkdError(f"data family {name!r} made only {made} distinct examples of {quota}")
            instruction, spoken, response = FAMILIES[name](rng)
            if (instruction, spoken) in seen or asks_builtin_question(f"{spoken} {instruction}"):
                continue
            seen.add((instruction, spoken))
            uid = example_id(name, instruction, spoken)
            examples.append(SpokenExample(uid, instruction, spoken, response, task=name))
            made += 1
    random.Random(seed + 1).shuffle(examples)
    return examples


# ---------------------------------------------------------------------------------------------- held-out task


def heldout_mcq_records(
    n: int = 80, *, seed: int = 10_000, exclude: Iterable[SpokenExample] = ()
) -> list[dict[str, Any]]:
    """``n`` spoken 4-option questions of the ``mcq`` family, as ``jsonl:`` task records (prompt with
    "A. ..." lines, ``choices``, letter ``reference``, ``spoken_text``), none of which (question and
    option set) occurs in ``exclude`` (the training examples) or in the built-in benchmark: an
    in-domain test of the speech arm on items like, but not in, the adaptation data. (A question may
    recur with other options: "Name the day that follows Tuesday" has only seven forms.)"""
    from xkd_eval.builtin import asks_builtin_question

    def content(spoken: str) -> tuple[str, frozenset[str]]:
        question, _, read = spoken.partition(" Is it ")
        options = [part.strip().removeprefix("or ").split(", ", 1)[-1] for part in read.rstrip("?").split(";")]
        return question, frozenset(options)

    seen = {content(e.spoken_text) for e in exclude if " Is it " in e.spoken_text}
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    tries = 0
    while len(records) < n:
        tries += 1
        if tries > n * 200:
            raise XkdError(f"only {len(records)} held-out questions of {n} are distinct from the training data")
        question, answer, distractors = _mcq_question(rng)
        options = [answer, *distractors]
        key = (question, frozenset(options))
        if key in seen or asks_builtin_question(question):
            continue
        seen.add(key)
        rng.shuffle(options)
        letters = "ABCD"
        read = "; ".join(("or " if i == 3 else "") + f"{letters[i]}, {text}" for i, text in enumerate(options))
        records.append(
            {
                "id": f"heldout-mcq-{len(records) + 1:03d}",
                "prompt": question + "".join(f"\n{letters[i]}. {text}" for i, text in enumerate(options)),
                "choices": options,
                "reference": letters[options.index(answer)],
                "scorer": "mcq",
                "spoken_text": f"{question} Is it {read}?",
            }
        )
    return records


def write_heldout_mcq_task(
    out_dir: str | os.PathLike,
    *,
    n: int = 80,
    seed: int = 10_000,
    exclude: Iterable[SpokenExample] = (),
    voices: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Synthesise ``heldout_mcq_records`` (voice by item id) into ``out_dir/heldout-mcq.jsonl`` with
    ``audio`` paths relative to it: load it as ``jsonl:<out_dir>/heldout-mcq.jsonl``."""
    from xkd_eval.io import atomic_write_text

    out = Path(out_dir).expanduser()
    records = heldout_mcq_records(n, seed=seed, exclude=exclude)
    spoken = synthesize_examples(
        [SpokenExample(r["id"], "", r["spoken_text"], "") for r in records], voices, out / "audio", progress=progress
    )
    lines = []
    for record, example in zip(records, spoken, strict=True):
        audio = Path(str(example.audio)).relative_to(out).as_posix()
        lines.append(json.dumps({**record, "audio": audio, "voice": example.voice}, ensure_ascii=False) + "\n")
    path = out / "heldout-mcq.jsonl"
    atomic_write_text(path, "".join(lines))
    return path


# ---------------------------------------------------------------------------------------------- audio


# ---------------------------------------------------------------------------------------------- JSONL


__all__ = [
    "DEFAULT_MIX",
    "FAMILIES",
    "dictation_sentences",
    "generate_examples",
    "heldout_mcq_records",
    "number_words",
    "write_heldout_mcq_task",
]
