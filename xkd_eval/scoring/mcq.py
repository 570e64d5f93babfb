"""Multiple-choice answer extraction: VoiceBench-compatible, and a robust mode.

``compat="voicebench"`` follows the official extractor rule for rule (lowercase; the ordered phrase
templates, each tried for a, b, c, d; then an exact single letter; then a letter followed by . , : )
at the start). Where the official code would then draw an unseeded random letter, we return no answer
and the summary counts an extraction failure.

``compat="robust"`` reads the answer the way a person would: explicit statements ("Answer: D", "the
correct option is (b)", the last one wins), then formatting (``**C**``, ``\\boxed{B}``, "(A)", a line
starting "C."), then the text of exactly one option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from xkd_eval.records import Item, Score
from xkd_eval.scoring.phrases import voicebench_phrases

LETTERS = "ABCD"
_SPEAKER_TAGS = ("<1>", "<2>", "<3>")


def extract_voicebench(response: str) -> str | None:
    text = response.lower()
    if text.startswith(_SPEAKER_TAGS):
        text = text[3:].strip()
    for template in voicebench_phrases()["mcq_templates"]:
        for letter in "abcd":
            if template.replace("[CHOICE]", letter) in text:
                return letter.upper()
    for letter in "abcd":
        if text == letter or any(text.startswith(letter + p) for p in ".,:)"):
            return letter.upper()
    if "would be a." in text or 'would be "a.' in text:
        return "A"
    if "the best option from the given choices would be a scorpion (a)" in text:
        return "A"
    return None


# A letter counts when it is a capital, or a lowercase letter that cannot be the article "a" (it is
# followed by punctuation or the end). "The answer is a bird" names no option.
_LETTER = r"(?-i:(?P<upper>[A-D])(?![A-Za-z0-9])|(?P<lower>[a-d])(?=\s*(?:$|[.,:;)\]*\"'!?])))"
_STATEMENT = re.compile(
    r"(?:answer|option|choice|select|choose|pick|go with)\b[^A-Za-z0-9\n]{0,4}"
    r"(?:(?:is|would be|will be|should be|=)\b[^A-Za-z0-9\n]{0,4})?"
    r"(?:(?:option|choice|letter)\b[^A-Za-z0-9\n]{0,4})?" + _LETTER,
    re.IGNORECASE,
)
_FORMATTED = [
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*([A-Da-d])\b"),
    re.compile(r"\*\*\s*\(?([A-Da-d])\)?\s*[.:)]?\s*\*\*"),
    re.compile(r"\(([A-D])\)"),
    re.compile(r"(?:^|\s)([A-Da-d])\)"),  # "it's c) water": a letter closing a parenthesis
    re.compile(r"(?m)^\s*[\"'*(\[]*([A-D])\s*[.:)\]]"),
]
_OPTION_LINE = re.compile(r"(?m)^\s*\(?([A-D])[.):]\s+(.+?)\s*$")


def _letter(match: re.Match) -> str:
    groups = [g for g in match.groups() if g]
    if match.re is _STATEMENT:
        groups = [match.group("upper") or match.group("lower")]
    return groups[-1].upper()


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def option_lines(prompt: str) -> list[tuple[str, str]]:
    """The prompt's "A. text" lines, as (letter, text), in the order written."""
    return _OPTION_LINE.findall(prompt)


def options_of(item: Item) -> dict[str, str]:
    """Letter -> option text, from ``choices``, else from the prompt: "A. ..." lines, or options written
    inline ("What do bees make? A. wax. B. milk. C. honey. D. sand.") whose markers can be told apart."""
    if item.choices:
        return {LETTERS[i]: c for i, c in enumerate(item.choices[: len(LETTERS)])}
    return dict(written_options(item.prompt or "").options)


# --- where a prompt writes its options -------------------------------------------------------------

_OPTION_LINE_SPAN = re.compile(r"(?m)^\s*\(?[A-D][.):]\s+.+$")
# an option marker inside a line: "A." "B)" "C:" or "(D)", standing alone, followed by a space
_INLINE_MARKER = re.compile(r"(?<!\S)(?:\(([A-D])\)|([A-D])[.):])(?=\s)")
_SENTENCE_BREAK = re.compile(r"[.?!]\s+\S")
HOW_TO_WRITE_OPTIONS = (
    "write one option per line as 'A. text', or give the options in the 'choices' field "
    "and the question alone in 'prompt'"
)


@dataclass(frozen=True)
class WrittenOptions:
    """The options a prompt writes out, and the question without them.

    ``layout`` is ``lines`` ("A. text" lines), ``inline`` (markers A, B, ... once each and in order within
    the text: the question is the text before the first marker), ``none`` (no options written) or
    ``ambiguous`` (the options cannot be told apart from the question; ``problem`` says why, and the
    question is then the prompt less any "A. text" lines).
    """

    question: str
    options: dict[str, str] = field(default_factory=dict)
    layout: str = "none"
    problem: str | None = None


def _inline_text(text: str, *, last: bool) -> str:
    """An inline option's text without the separator that follows it ("wax paper." "honey, or")."""
    text = re.sub(r"(?:[,;]\s*|\s+)or$", "", " ".join(text.split()))
    return text.rstrip(" .,;?!" if last else " .,;")


def written_options(prompt: str, choices: tuple[str, ...] | list[str] = ()) -> WrittenOptions:
    """Where ``prompt`` writes its options; with ``choices`` (the item's own options), options written
    inline must be those choices, in order, or the layout is ambiguous.

    Option lines A, B, ... (two or more, once each, in order) are taken as they are. Otherwise the
    markers within the text are read ("Q? A. wax B. milk\nC. honey\nD. sand" included)."""
    lines = option_lines(prompt)
    letters = "".join(letter for letter, _ in lines)
    in_order = letters == LETTERS[: len(letters)]
    if len(lines) >= 2 and in_order:
        return WrittenOptions(_without_option_lines(prompt), dict(lines), "lines")
    inline = _inline_options(prompt, choices)
    if inline.layout == "inline" or not lines:
        return inline
    if in_order:  # one "A. ..." line, and no options inline: as it was
        return WrittenOptions(_without_option_lines(prompt), dict(lines), "lines")
    problem = f"its option lines are {', '.join(letters)}, not A, B, ... once each in order"
    return WrittenOptions(_without_option_lines(prompt), dict(lines), "ambiguous", problem)


def _without_option_lines(prompt: str) -> str:
    return re.sub(r"\n{2,}", "\n", _OPTION_LINE_SPAN.sub("", prompt)).strip()


def _inline_options(prompt: str, choices: tuple[str, ...] | list[str]) -> WrittenOptions:
    whole = re.sub(r"\n{2,}", "\n", prompt).strip()
    markers = list(_INLINE_MARKER.finditer(prompt))
    if len(markers) < 2:
        return WrittenOptions(whole)
    letters = "".join(m.group(1) or m.group(2) for m in markers)
    if letters != LETTERS[: len(letters)]:
        found = ", ".join(letters)
        return WrittenOptions(
            whole, layout="ambiguous", problem=f"its text has the option markers {found}, not A, B, ... once each"
        )
    ends = [m.start() for m in markers[1:]] + [len(prompt)]
    raw = [prompt[m.end() : end] for m, end in zip(markers, ends, strict=True)]
    options = {
        m.group(1) or m.group(2): _inline_text(text, last=i == len(raw) - 1)
        for i, (m, text) in enumerate(zip(markers, raw, strict=True))
    }
    question = re.sub(r"\n{2,}", "\n", prompt[: markers[0].start()]).strip()
    if not all(options.values()):
        return WrittenOptions(whole, layout="ambiguous", problem="an option marker has no text after it")
    if choices:
        if [_normalise(o) for o in options.values()] != [_normalise(c) for c in choices[: len(LETTERS)]]:
            written = "; ".join(f"{k}. {v}" for k, v in options.items())
            return WrittenOptions(
                whole,
                layout="ambiguous",
                problem=f"the options written in its text ({written}) are not its choices {list(choices)}",
            )
    elif _SENTENCE_BREAK.search(_inline_text(raw[-1], last=True)):
        return WrittenOptions(
            whole,
            layout="ambiguous",
            problem=f"text follows its last option ({letters[-1]}. {' '.join(raw[-1].split())!r}): where does it end?",
        )
    return WrittenOptions(question, options, "inline")


def extract_robust(response: str, options: dict[str, str] | None = None) -> str | None:
    text = response.strip()
    if text.startswith(_SPEAKER_TAGS):
        text = text[3:].strip()
    statements = [_letter(m) for m in _STATEMENT.finditer(text)]
    if statements:
        return statements[-1]
    bare = text.strip(" \t\n*\"'`()[].:")
    if len(bare) == 1 and bare.upper() in LETTERS:
        return bare.upper()
    for pattern in _FORMATTED:
        found = {m.group(1).upper() for m in pattern.finditer(text)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None  # several letters stressed the same way: ambiguous
    if options:
        return _named_option(text, options)
    return None


def _named_option(text: str, options: dict[str, str]) -> str | None:
    """The one option whose text the response says; an option said only inside a longer one ("twenty" in
    "twenty-six") is not said, so the longer options are matched first and their words taken out."""
    said = f" {_normalise(text)} "
    named = []
    for letter, option in sorted(options.items(), key=lambda kv: -len(_normalise(kv[1]))):
        phrase = f" {_normalise(option)} "
        if phrase.strip() and phrase in said:
            named.append(letter)
            said = said.replace(phrase, " | ")
    return named[0] if len(named) == 1 else None


def reference_letter(item: Item) -> str:
    reference = (item.reference or "").strip().strip("()").upper()
    if reference not in LETTERS:
        raise ValueError(f"mcq: item {item.id!r} has reference {item.reference!r}, expected one of A-D")
    return reference


def score_mcq(item: Item, response: str, *, compat: str = "voicebench") -> Score:
    expected = reference_letter(item)
    if compat == "voicebench":
        extracted = extract_voicebench(response or "")
    else:
        extracted = extract_robust(response or "", options_of(item))
    if extracted is None:
        return Score(value=None, correct=None, extracted=None)
    correct = extracted == expected
    return Score(value=float(correct), correct=correct, extracted=extracted)
