"""The embedded organism's KD sets (``distill/organism-kd*.jsonl``): templated everyday requests,
general-knowledge questions and short definitions, and listening requests ("repeat what the speaker
says"), none of which asks a built-in benchmark question, even in other words.

``write_organism_kd_data`` writes them; the committed files are regenerated unchanged by the tests.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from xkd_eval.distill.kd_data import KDExample, drop_builtin, kd_id

_DEFINE = (
    "a volcano", "a glacier", "photosynthesis", "gravity", "a planet", "a verb", "a noun", "democracy",
    "a library", "a museum", "an island", "a desert", "a rainbow", "a thermometer", "a calendar", "a bridge",
    "a recipe", "a vaccine", "electricity", "a magnet", "an orchestra", "a poem", "a map", "a compass",
    "a telescope", "a battery", "friendship", "a habit", "a budget", "a password", "a cloud", "a river",
)  # fmt: skip
_DEFINE_FORMS = (
    "What is {x}?", "Define {x} in one sentence.", "Explain what {x} is to a child.",
    "Give me a short definition of {x}.", "In simple words, what is {x}?",
)  # fmt: skip
_FACTS = (  # none a built-in question (asks_builtin would drop it: the benchmark asks many capitals)
    ("Chile", "capital"), ("Vietnam", "capital"), ("Morocco", "capital"), ("Nigeria", "capital"),
    ("Colombia", "capital"), ("Turkey", "capital"), ("New Zealand", "capital"), ("Iceland", "capital"),
    ("Nepal", "capital"), ("Ukraine", "capital"), ("Ghana", "capital"), ("Brazil", "official language"),
    ("Mexico", "official language"), ("Germany", "currency"), ("the United Kingdom", "currency"),
    ("India", "largest city"),
)  # fmt: skip
_FACT_FORMS = (
    "Do you know the {a} of {c}?", "Tell me the {a} of {c}.", "Which is the {a} of {c}?",
    "I forgot the {a} of {c}. Can you remind me?",
)  # fmt: skip
_REQUESTS = (
    "make a cup of tea", "fall asleep faster", "save money on groceries", "keep a plant alive",
    "clean a frying pan", "start running", "learn new words", "pack for a weekend trip", "write a thank-you note",
    "plan a birthday party", "boil an egg", "remember people's names", "tie a simple knot", "organise a desk",
    "cool down on a hot day",
)  # fmt: skip
_REQUEST_FORMS = (
    "How can I {x}?", "Give me two tips to {x}.", "What is an easy way to {x}?", "I want to {x}. Any advice?",
)  # fmt: skip
_TOPICS = (
    "the sea", "autumn", "a busy city", "a quiet morning", "mountains", "a good friend", "rain", "the moon",
    "a cat", "breakfast", "a long journey", "music", "a garden", "snow",
)  # fmt: skip
_TOPIC_FORMS = (
    "Write one sentence about {x}.", "Describe {x} in a few words.", "Say something nice about {x}.",
    "Write a very short poem about {x}.",
)  # fmt: skip
_ANIMALS = (
    "elephants", "penguins", "owls", "dolphins", "bees", "octopuses", "camels", "frogs", "giraffes", "ants",
    "wolves", "turtles",
)  # fmt: skip
_ANIMAL_FORMS = (
    "Tell me a fun fact about {x}.", "Where do {x} live?", "What do {x} eat?", "Why are {x} interesting?",
)  # fmt: skip
_OPPOSITES = "light young soft cheap brave narrow sharp smooth".split()  # the benchmark asks "hot", "tall", …
_OPPOSITE_FORMS = ("What is the opposite of {x}?", "Give me a word that means the opposite of {x}.")


# the broader set's further families (``organism_kd_instructions(broad=True)``)
_OBJECTS = (
    "a ladder", "a stapler", "a hammer", "a bucket", "a blender", "a backpack", "a candle", "a mirror",
    "a screwdriver", "a sponge", "a whistle", "a doorbell", "a microwave", "a tent", "a shovel", "a ruler",
    "a calculator", "an alarm clock", "a paintbrush", "a rope", "an apron", "a suitcase",
)  # fmt: skip
_OBJECT_FORMS = (
    "What is {x} used for?", "How do you use {x}?", "Where would you usually find {x}?",
    "Describe {x} in one sentence.",
)  # fmt: skip
_FOODS = (
    "rice", "pasta", "yoghurt", "soup", "oranges", "beans", "salmon", "pancakes", "porridge", "peanuts",
    "mushrooms", "spinach", "cucumbers", "pineapple", "almonds", "tofu", "noodles", "lentils", "pears", "olives",
)  # fmt: skip
_FOOD_FORMS = (
    "How do people usually eat {x}?", "Are {x} healthy? Answer briefly.", "What do {x} taste like?",
    "Where do {x} come from?",
)  # fmt: skip
_JOBS = (
    "plumber", "farmer", "librarian", "carpenter", "chef", "journalist", "mechanic", "gardener",
    "electrician", "tailor", "architect", "lifeguard", "judge", "shopkeeper", "waiter", "painter",
)  # fmt: skip
_JOB_FORMS = ("What does a {x} do?", "What tools does a {x} need?", "Would you like to be a {x}? Say why.")
_COUNTRIES = (
    "Chile", "Vietnam", "Morocco", "Nigeria", "Colombia", "Turkey", "Nepal", "Ghana", "Mongolia", "Bolivia",
    "Malaysia", "Iceland", "Jamaica", "Ukraine",
)  # fmt: skip
_COUNTRY_FORMS = (
    "Which continent is {x} in?", "What is {x} famous for?", "What language do people speak in {x}?",
    "Name a famous food from {x}.",
)  # fmt: skip
_MACHINES = (
    "a fridge", "a rocket", "a solar panel", "a microphone", "a lighthouse", "a parachute", "a windmill",
    "a kite", "a lift", "a dishwasher", "a zip", "a radio", "a washing machine", "a submarine", "a piano",
)  # fmt: skip
_MACHINE_FORMS = ("How does {x} work?", "Explain in two sentences how {x} works.", "Who uses {x}, and why?")
_HABITS = (
    "sleep", "exercise", "drinking water", "eating vegetables", "washing your hands", "walking", "reading",
    "stretching", "laughing", "fresh air", "a good breakfast", "learning a language",
)  # fmt: skip
_HABIT_FORMS = ("Why is {x} good for you?", "Tell me one benefit of {x}.", "Is {x} important? Explain briefly.")
_TIMES = ("spring", "the evening", "a holiday", "the weekend", "a rainy afternoon", "the morning")
_TIME_FORMS = (
    "What do people usually do in {x}?", "What is your favourite thing about {x}?", "Plan a nice day for {x}.",
)  # fmt: skip
_MORE_ANIMALS = (
    "sharks", "eagles", "snakes", "bats", "whales", "squirrels", "parrots", "crocodiles", "hedgehogs",
    "foxes", "deer", "seals", "swans", "goats",
)  # fmt: skip
_MORE_ANIMAL_FORMS = _ANIMAL_FORMS + ("How big do {x} get?", "Are {x} dangerous?")
_MORE_OPPOSITES = "deep heavy inside first above remember buy arrive begin always near".split()
_COMPARISONS = (
    ("a mouse", "a horse"), ("a cup", "a bucket"), ("a car", "a bus"), ("a cat", "a tiger"), ("an ant", "a bee"),
    ("a feather", "a brick"), ("a grape", "a melon"), ("a pebble", "a boulder"), ("a spoon", "a shovel"),
    ("a village", "a city"), ("a pond", "a lake"), ("a puppy", "a wolf"), ("a book", "a pencil"),
    ("a hill", "a mountain"), ("a bicycle", "a lorry"),
)  # fmt: skip
_COMPARISON_FORMS = ("Which is bigger, {a} or {b}?", "Which is heavier, {a} or {b}?")
_MORE_REQUESTS = (
    "wash a wool jumper", "make a paper plane", "water a cactus", "fix a flat bicycle tyre",
    "calm down before an exam", "make pancakes", "stay warm in winter", "read more books", "wake up earlier",
    "plant a tree", "make new friends", "cook rice", "keep shoes clean", "choose a good book", "learn to swim",
)  # fmt: skip
_COLOURED = (
    "a pumpkin", "an aubergine", "a flamingo", "a crow", "a lime", "a pearl", "a plum", "a school bus",
    "a penguin", "a tiger", "sand", "a carrot",
)  # fmt: skip
_COLOUR_FORMS = ("What colour is {x}?", "Tell me the colour of {x}.")
_SUMS = (  # numbers from 21 up, written as digits: the benchmark's sums are small numbers in words
    "What is {a} plus {b}?", "What is {a} minus {b}?", "If a box holds {a} apples and I add {b}, how many are there?",
    "I had {a} euros and spent {b}. How much money is left?",
)  # fmt: skip


def organism_kd_instructions(*, broad: bool = False) -> list[str]:
    """The default KD instructions of the organism (444, templated, deterministic order); ``broad=True``
    adds eleven more families (everyday objects, food, jobs, countries, how things work, habits, times of
    day, more animals and opposites, comparisons, colours, sums): 1,154 in all."""
    families = [
        (_DEFINE_FORMS, _DEFINE),
        (_REQUEST_FORMS, _REQUESTS),
        (_TOPIC_FORMS, _TOPICS),
        (_ANIMAL_FORMS, _ANIMALS),
        (_OPPOSITE_FORMS, _OPPOSITES),
    ]
    if broad:
        families += [
            (_OBJECT_FORMS, _OBJECTS),
            (_FOOD_FORMS, _FOODS),
            (_JOB_FORMS, _JOBS),
            (_COUNTRY_FORMS, _COUNTRIES),
            (_MACHINE_FORMS, _MACHINES),
            (_HABIT_FORMS, _HABITS),
            (_TIME_FORMS, _TIMES),
            (_MORE_ANIMAL_FORMS, _MORE_ANIMALS),
            (_OPPOSITE_FORMS, _MORE_OPPOSITES),
            (_REQUEST_FORMS, _MORE_REQUESTS),
            (_COLOUR_FORMS, _COLOURED),
        ]
    items: list[str] = []
    for forms, values in families:
        items += [form.format(x=value) for value in values for form in forms]
    items += [form.format(c=c, a=a) for c, a in _FACTS for form in _FACT_FORMS]
    if broad:
        items += [form.format(a=a, b=b) for a, b in _COMPARISONS for form in _COMPARISON_FORMS]
    rng = random.Random(0)
    for _ in range(40):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        items.append(f"If I have {a} books and buy {b} more, how many books do I have?")
    if broad:
        for form in _SUMS:
            for _ in range(30):
                a, b = rng.randint(21, 99), rng.randint(11, 20)
                items.append(form.format(a=a, b=b))
    seen: set[str] = set()
    unique = [s for s in items if not (s in seen or seen.add(s))]
    random.Random(1).shuffle(unique)
    return unique


ORGANISM_LISTENING_REQUESTS = 450  # half of the set: with 150 (a quarter) spoken listen fell by 11 points


def organism_listening_requests(n: int = ORGANISM_LISTENING_REQUESTS) -> list[KDExample]:
    """``n`` listening requests: the teacher reads "Repeat exactly: <sentence>", the S→T student hears the
    sentence beside the built-in ``listen`` subset's instruction. Without them the S→T channel teaches the
    student to answer whatever it hears, and it stops repeating (listening retention fails). Their response
    is the sentence itself: greedily, the organism's teacher repeats only two in three of them exactly (it
    answers "I'm sorry for your loss." to "Please wipe the table after you finish eating."). The sentences
    are a seeded sample of the dictation sentences (``xkd_eval.organism.adapt_data``), none a benchmark item."""
    from xkd_eval.organism.adapt_data import dictation_sentences

    return listening_requests(random.Random(2).sample(dictation_sentences(), n))


def listening_requests(texts: Sequence[str]) -> list[KDExample]:
    """Each text as a listening request: read "Repeat exactly: <text>", heard as the text beside the listen
    subset's instruction, the text itself the response."""
    from xkd_eval.builtin import LISTEN_INSTRUCTION

    return [
        KDExample(kd_id(f"Repeat exactly: {t}"), f"Repeat exactly: {t}", t, t, None, LISTEN_INSTRUCTION) for t in texts
    ]


ORGANISM_BROAD_LISTENING_REQUESTS = 300


def dictated_questions(instructions: Sequence[str]) -> list[KDExample]:
    """Each instruction as a listening request: the S→T student hears the question and must repeat it.

    The organism repeats its spoken benchmark questions with 14% of the words right against 47% of the
    listening sentences (``--diagnostics hearing``): its spoken answers are near chance because it does not
    hear what is asked. Dictating the KD questions themselves trains hearing on the very kind of speech
    the answers depend on (short spoken questions), still without a benchmark question."""
    return listening_requests(instructions)


HEAR_QUESTIONS = 1200  # spoken questions the teacher answers
HEAR_DICTATED = 600  # of those, heard once more to be repeated (the same clip, the other instruction)
HEAR_LISTENING_REQUESTS = 600  # dictation sentences to repeat
_ASKS = ("Name ", "Tell me ", "Give ")


def organism_hear_questions() -> list[str]:
    """The questions (and "Name a ..." requests) of the organism's written questions (``questions.txt``):
    what its adaptation taught it to hear and transcribe, here to be answered."""
    from xkd_eval.organism.adapt_data import written_questions

    return [q for q in written_questions() if q.endswith("?") or q.startswith(_ASKS)]


def organism_hear_kd_examples() -> list[KDExample]:
    """The KD set of the organism that hears (``distill/organism-kd-hear.jsonl``, 2,400 before the hold-out
    check): a seeded sample of its written questions answered by the teacher (the S→T channel teaches the
    student to answer what it hears, where its adaptation taught it to transcribe), half of them heard once
    more beside the listen instruction to be repeated (the same audio asked two ways: the instruction, not
    the clip, decides whether to answer or to repeat), and dictation sentences to repeat (listening kept)."""
    questions = random.Random(5).sample(organism_hear_questions(), HEAR_QUESTIONS)
    examples = [KDExample(kd_id(q), q) for q in questions]
    examples += dictated_questions(questions[:HEAR_DICTATED])
    examples += organism_listening_requests(HEAR_LISTENING_REQUESTS)
    random.Random(6).shuffle(examples)
    return examples


CHOICE_QUESTIONS_FILE = Path(__file__).with_name("choice_questions.jsonl")
CHOICE_OPEN_QUESTIONS = 600  # of the written questions, answered by the teacher (the first 600 of the hear set's)
CHOICE_DICTATED = 300  # of those, heard once more to be repeated
CHOICE_LISTENING_REQUESTS = 600  # dictation sentences to repeat


def choice_questions() -> list[tuple[str, tuple[str, ...]]]:
    """The four-option questions written for the organism's remedy (``choice_questions.jsonl``: question,
    choices, the correct index and a domain; 120 in each of ten domains, held out from the benchmark by the
    paraphrase check): (question, choices). The KD set never reads the correct index: the teacher's target is
    the option it ranks first."""
    from xkd_eval.tasks.jsonl import read_whole_jsonl

    return [(str(r["question"]), tuple(r["choices"])) for _, r in read_whole_jsonl(CHOICE_QUESTIONS_FILE)]


def organism_choice_kd_examples() -> list[KDExample]:
    """The KD set that teaches the organism to answer what it hears in the form the benchmark ranks
    (``distill/organism-kd-choice.jsonl``): every choice question, its target the option the teacher ranks
    first (``teacher_choices``), heard beside the generic instruction as a spoken benchmark question is; the
    first 600 of the hear set's written questions, answered by the teacher; 300 of those heard again to be
    repeated; and 600 dictation sentences to repeat (listening kept)."""
    examples = [KDExample(kd_id(" | ".join((q, *c))), q, choices=c) for q, c in choice_questions()]
    open_questions = random.Random(5).sample(organism_hear_questions(), HEAR_QUESTIONS)[:CHOICE_OPEN_QUESTIONS]
    examples += [KDExample(kd_id(q), q) for q in open_questions]
    examples += dictated_questions(open_questions[:CHOICE_DICTATED])
    examples += organism_listening_requests(CHOICE_LISTENING_REQUESTS)
    random.Random(7).shuffle(examples)
    return examples


def write_organism_kd_data(
    path: str | os.PathLike = "distill/organism-kd.jsonl",
    *,
    broad: bool = False,
    dictate: bool = False,
    hear: bool = False,
    choice: bool = False,
) -> Path:
    """Write the organism's default KD data: the templated requests and questions (no responses: the
    teacher answers them), with the listening requests (their sentence as the response) spread among them.
    ``broad=True`` writes the broader set (``distill/organism-kd-broad.jsonl``): 1,154 instructions and 300
    listening requests. ``dictate=True`` (``distill/organism-kd-dictation.jsonl``) adds every instruction
    once more as a listening request of itself (``dictated_questions``). ``hear=True`` writes the set of the
    organism that hears (``distill/organism-kd-hear.jsonl``, ``organism_hear_kd_examples``); ``choice=True``
    the set with the choice questions (``distill/organism-kd-choice.jsonl``, ``organism_choice_kd_examples``)."""
    from xkd_eval.io import atomic_write_jsonl

    if choice:
        examples = organism_choice_kd_examples()
    elif hear:
        examples = organism_hear_kd_examples()
    else:
        listening = organism_listening_requests(
            ORGANISM_BROAD_LISTENING_REQUESTS if broad else ORGANISM_LISTENING_REQUESTS
        )
        instructions = organism_kd_instructions(broad=broad)
        examples = [KDExample(kd_id(s), s) for s in instructions] + listening
        random.Random(3).shuffle(examples)
        if dictate:  # a second shuffle: without dictation the sets are as they were
            examples += dictated_questions(instructions)
            random.Random(4).shuffle(examples)
    examples, _ = drop_builtin(examples)
    return atomic_write_jsonl(path, (e.record() for e in examples))


__all__ = [
    "CHOICE_DICTATED",
    "CHOICE_LISTENING_REQUESTS",
    "CHOICE_OPEN_QUESTIONS",
    "CHOICE_QUESTIONS_FILE",
    "choice_questions",
    "organism_choice_kd_examples",
    "ORGANISM_BROAD_LISTENING_REQUESTS",
    "ORGANISM_LISTENING_REQUESTS",
    "HEAR_DICTATED",
    "HEAR_LISTENING_REQUESTS",
    "HEAR_QUESTIONS",
    "dictated_questions",
    "listening_requests",
    "organism_hear_kd_examples",
    "organism_hear_questions",
    "organism_kd_instructions",
    "organism_listening_requests",
    "write_organism_kd_data",
]
