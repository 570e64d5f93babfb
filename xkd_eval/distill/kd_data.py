"""Cross-modal KD examples: (id, instruction text, response), plus the spoken version of the instruction.

Sources (``load_kd_examples``):

- ``"hub:Open-Orca/OpenOrca"`` (or a bare ``Open-Orca/OpenOrca``): the hub through the real ``datasets``
  code path, ``load_dataset(name, split="train", streaming=False)`` with the ``question``/``response``
  columns. Offline this fails: the error says to pass a local file with ``--data``;
- a local JSONL file: one object a line with ``instruction``, optional ``response`` (needed unless the
  targets come from the teacher), optional ``spoken_text`` (what the TTS reads; default the
  instruction), optional ``speech_instruction`` (the text the student reads beside the clip in the S→T
  channel; default the generic "listen and respond" one), optional ``choices`` (a question's options: the
  teacher's target is the option it ranks first by log-likelihood, as ``--mcq-mode cloze`` scores them),
  optional ``id`` and ``audio`` (a WAV path, relative to the file). A listening request is ``instruction``
  "Repeat exactly: <sentence>", ``spoken_text`` the sentence, ``speech_instruction`` "Repeat exactly what
  the speaker says.", as in the built-in ``listen`` subset.

An example that is, contains or paraphrases a built-in benchmark question is dropped
(``xkd_eval.builtin.asks_builtin_question``), so the benchmark stays held out. ``split_examples`` makes
the seeded held-out split; ``teacher_targets`` replaces the responses by the teacher's greedy answers
(batched, cached on disk); ``spoken_examples`` synthesises the spoken instructions with our TTS (cached by
``xkd_eval.tts``).

The embedded organism's KD sets (``distill/organism-kd*.jsonl``) are written by
``xkd_eval.organism.kd_data``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xkd_eval.errors import XkdError

HUB_DEFAULT = "Open-Orca/OpenOrca"


@dataclass(frozen=True)
class KDExample:
    id: str
    instruction: str  # the text query (the teacher's prompt; the T→T student's prompt)
    response: str | None = None  # the target (gold, or the teacher's greedy answer)
    spoken_text: str | None = None  # what is spoken in the S→T channel (default: the instruction)
    audio: str | None = None  # a 16 kHz WAV of the spoken text, once synthesised or given
    speech_instruction: str | None = None  # the student's text beside the clip (default: SPEECH_INSTRUCTION)
    choices: tuple[str, ...] | None = None  # a question's options: the teacher's target is the one it ranks first

    @property
    def answered(self) -> bool:
        return bool((self.response or "").strip())

    @property
    def speech(self) -> str:
        return self.spoken_text or self.instruction

    @property
    def heard_instruction(self) -> str:
        from xkd_eval.models.base import SPEECH_INSTRUCTION

        return self.speech_instruction or SPEECH_INSTRUCTION

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def kd_id(instruction: str) -> str:
    return "kd-" + hashlib.sha256(instruction.encode()).hexdigest()[:12]


def asks_builtin(example: KDExample) -> bool:
    """The example asks a built-in benchmark question, in its text or its speech."""
    from xkd_eval.builtin import asks_builtin_question

    return any(asks_builtin_question(t) for t in {example.instruction, example.speech})


def drop_builtin(examples: list[KDExample], progress: bool = False) -> tuple[list[KDExample], int]:
    from xkd_eval.models.encoder import progress_bar

    kept: list[KDExample] = []
    # about 0.2 ms an example: minutes for a hub data set of millions, so it shows its progress
    with progress_bar(len(examples), "benchmark hold-out check", progress) as advance:
        for start in range(0, len(examples), 1000):
            chunk = examples[start : start + 1000]
            kept += [e for e in chunk if not asks_builtin(e)]
            advance(len(chunk))
    return kept, len(examples) - len(kept)


def read_kd_jsonl(path: str | os.PathLike) -> list[KDExample]:
    from xkd_eval.tasks.jsonl import read_whole_jsonl, resolve_path

    path = Path(path).expanduser()
    out: list[KDExample] = []
    seen: set[str] = set()
    for number, record in read_whole_jsonl(path):
        if not str(record.get("instruction") or "").strip():
            raise XkdError(f"{path}:{number}: expected an object with a non-empty 'instruction'")
        instruction = str(record["instruction"]).strip()
        uid = str(record.get("id") or kd_id(instruction))
        if uid in seen:
            raise XkdError(f"{path}:{number}: duplicate id {uid!r}")
        seen.add(uid)
        audio = resolve_path(record["audio"], path.parent) if record.get("audio") is not None else None
        response = record.get("response")
        choices = record.get("choices")
        if choices is not None:
            options = [str(c).strip() for c in choices] if isinstance(choices, list) else []
            if len(options) < 2 or not all(options) or len(set(options)) < len(options):
                raise XkdError(
                    f"{path}:{number}: 'choices' must be a list of at least two distinct non-empty strings "
                    f"(the options the teacher ranks), got {choices!r}"
                )
            choices = tuple(options)
        out.append(
            KDExample(
                uid,
                instruction,
                None if response is None else str(response),
                record.get("spoken_text") or None,
                audio,
                str(record.get("speech_instruction") or "").strip() or None,
                choices,
            )
        )
    if not out:
        raise XkdError(f"{path} holds no examples")
    return out


def load_hub_examples(name: str = HUB_DEFAULT, limit: int | None = None, seed: int = 0) -> list[KDExample]:
    """Open-Orca-style hub data (``question``/``response``) through ``datasets.load_dataset``."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split="train", streaming=False)
        dataset = dataset.select_columns(["question", "response"])
    except Exception as exc:  # offline: a ConnectionError / OfflineModeIsEnabled / FileNotFoundError
        raise XkdError(
            f"cannot load the KD data set {name!r} from the hub ({type(exc).__name__}: {exc}). Offline, pass a "
            "local JSONL file with --data (one object a line: instruction, optional response, optional "
            "spoken_text), e.g. distill/organism-kd.jsonl"
        ) from exc
    indices = list(range(len(dataset)))
    if limit is not None and limit < len(indices):
        indices = sorted(random.Random(seed).sample(indices, limit))
        dataset = dataset.select(indices)
    return [
        KDExample(kd_id(str(row["question"])), str(row["question"]), str(row["response"]))
        for row in dataset
        if str(row.get("question") or "").strip()
    ]


def load_kd_examples(
    data: str | os.PathLike,
    *,
    limit: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> list[KDExample]:
    """The KD examples of ``data`` (a JSONL path, or ``hub:NAME`` / a hub id), without those that are,
    contain or paraphrase a built-in benchmark item (``asks_builtin``; ``log`` hears how many)."""
    text = str(data)
    local = Path(text).expanduser()
    if local.is_file() or text.endswith(".jsonl"):
        examples = read_kd_jsonl(local)
        if limit is not None:
            examples = examples[:limit]
    else:
        examples = load_hub_examples(text.removeprefix("hub:"), limit, seed)
    examples, dropped = drop_builtin(examples, progress)
    if not examples:
        raise XkdError(f"{data}: no examples left: all {dropped} ask a built-in benchmark question")
    if dropped and log:
        log(f"{data}: left out {dropped} examples that ask a built-in benchmark question (kept {len(examples)})")
    return examples


def split_examples(
    examples: Sequence[KDExample], fraction: float, seed: int = 0
) -> tuple[list[KDExample], list[KDExample]]:
    """(train, held-out): a seeded ``fraction`` of the examples (at least one when fraction > 0)."""
    if not 0.0 <= fraction < 1.0:
        raise XkdError(f"eval fraction must be in [0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if fraction == 0 else max(1, round(len(examples) * fraction))
    if n_eval >= len(examples):
        raise XkdError(f"{len(examples)} examples are too few for a held-out fraction of {fraction}")
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


# ---------------------------------------------------------------------------------------------- teacher targets


def teacher_targets(
    examples: Sequence[KDExample],
    model: Any,
    tokenizer: Any,
    identity: str,
    cache_dir: str | os.PathLike,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    context: Sequence[Sequence[str]] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> list[KDExample]:
    """Each example's response replaced by the teacher's greedy answer to its text prompt (batched,
    left-padded), after the worked ``context`` turns where given; answers are cached on disk by teacher
    identity, prompt, context and ``max_new_tokens``. An example with ``choices`` gets the option the teacher
    ranks first instead (``teacher_choices``): its greedy sentence would not be what cloze scoring asks."""
    import torch

    from xkd_eval.io import atomic_write_text
    from xkd_eval.models.encoder import progress_bar

    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)

    def key(instruction: str) -> Path:
        asked = [identity, instruction, max_new_tokens] + ([[list(t) for t in context]] if context else [])
        digest = hashlib.sha256(json.dumps(asked).encode()).hexdigest()
        return cache_dir / f"{digest[:32]}.json"

    picked = teacher_choices(
        [e for e in examples if e.choices], model, tokenizer, identity, cache_dir,
        batch_size=batch_size, context=context, log=log, progress=progress,
    )  # fmt: skip
    examples = [e for e in examples if not e.choices]
    answers: dict[str, str] = {}
    todo = []
    for example in examples:
        path = key(example.instruction)
        if path.is_file():
            answers[example.instruction] = json.loads(path.read_text())["response"]
        elif example.instruction not in todo:
            todo.append(example.instruction)
    if todo:
        say = log or (lambda message: None)
        say(f"teacher targets: generating {len(todo)} greedy answers ({len(answers)} cached)")
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        try:
            todo.sort(key=len)
            with progress_bar(len(todo), "teacher targets", progress) as advance:
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start : start + batch_size]
                    prompts = [teacher_prompt(tokenizer, text, context) for text in chunk]
                    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
                    enc = enc.to(next(model.parameters()).device)
                    with torch.no_grad():
                        out = model.generate(
                            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, num_beams=1
                        )
                    for text, row in zip(chunk, out[:, enc["input_ids"].shape[1] :], strict=True):
                        answer = tokenizer.decode(row, skip_special_tokens=True).strip() or "."
                        answers[text] = answer
                        atomic_write_text(key(text), json.dumps({"instruction": text, "response": answer}) + "\n")
                    advance(len(chunk))
        finally:
            tokenizer.padding_side = side
    return [dataclasses.replace(e, response=answers[e.instruction]) for e in examples] + picked


def teacher_choices(
    examples: Sequence[KDExample],
    model: Any,
    tokenizer: Any,
    identity: str,
    cache_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    context: Sequence[Sequence[str]] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> list[KDExample]:
    """Each example's response set to the option of its ``choices`` the teacher ranks first: the sum of
    the option's token log-probabilities as the whole of the teacher's reply to the instruction (the
    ranking ``--mcq-mode cloze`` measures). Batched by question, each prompt run once for all its options
    (``shared_prefix_logits``). Cached on disk by teacher identity, prompt, options and context."""
    import torch

    from xkd_eval.io import atomic_write_text
    from xkd_eval.models.encoder import progress_bar
    from xkd_eval.models.hf import shared_prefix_logits, suffix_ids

    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)

    def key(example: KDExample) -> Path:
        asked = ["choices", identity, example.instruction, list(example.choices or ())]
        asked += [[list(t) for t in context]] if context else []
        return cache_dir / f"{hashlib.sha256(json.dumps(asked).encode()).hexdigest()[:32]}.json"

    scores: dict[str, list[float]] = {}
    todo = []
    for example in examples:
        path = key(example)
        if path.is_file():
            scores[example.id] = json.loads(path.read_text())["logprobs"]
        else:
            todo.append(example)
    if todo:
        if log:
            log(f"teacher targets: ranking the options of {len(todo)} questions ({len(scores)} cached)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        device = next(model.parameters()).device
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            with progress_bar(len(todo), "teacher's choices", progress) as advance:
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start : start + batch_size]
                    prompts = [teacher_prompt(tokenizer, example.instruction, context) for example in chunk]
                    owner = [q for q, example in enumerate(chunk) for _ in example.choices or ()]
                    suffixes = [
                        suffix_ids(tokenizer, prompt, option)
                        for prompt, example in zip(prompts, chunk, strict=True)
                        for option in example.choices or ()
                    ]
                    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
                    rows = iter(shared_prefix_logits(model, inputs, owner, suffixes, pad))
                    for example in chunk:
                        sums = []
                        for _ in example.choices or ():
                            logits, ids = next(rows)
                            sums.append(float(torch.log_softmax(logits, dim=-1).gather(-1, ids[:, None]).sum()))
                        scores[example.id] = sums  # kept now, not lost on a crash
                        record = {"instruction": example.instruction, "choices": list(example.choices or ())}
                        atomic_write_text(key(example), json.dumps(record | {"logprobs": sums}) + "\n")
                    advance(len(chunk))
        finally:
            tokenizer.padding_side = side
    picked_examples = []
    for example in examples:
        options = example.choices or ()
        best = max(range(len(options)), key=scores[example.id].__getitem__)
        picked_examples.append(dataclasses.replace(example, response=options[best]))
    return picked_examples


def teacher_prompt(tokenizer: Any, instruction: str, context: Sequence[Sequence[str]] | None = None) -> str:
    """The teacher's (text LLM's) prompt: its chat template, the worked ``context`` turns (question, answer)
    where given, the user turn, generation prompt."""
    messages = [
        {"role": role, "content": text}
        for question, answer in context or ()
        for role, text in (("user", question), ("assistant", answer))
    ]
    messages.append({"role": "user", "content": instruction})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------- speech


def spoken_examples(
    examples: Sequence[KDExample], voices: Sequence[str] | None = None, cache: str | os.PathLike | None = None,
    *, progress: bool = True,
) -> list[KDExample]:  # fmt: skip
    """Examples without audio get a TTS clip of their spoken text (``xkd_eval.tts``, cached)."""
    from xkd_eval.distill.examples import SpokenExample, synthesize_examples

    spoken = [SpokenExample(e.id, e.heard_instruction, e.speech, e.response or "", audio=e.audio) for e in examples]
    spoken = synthesize_examples(spoken, voices, cache, progress=progress)
    return [dataclasses.replace(e, audio=s.audio) for e, s in zip(examples, spoken, strict=True)]


__all__ = [
    "HUB_DEFAULT",
    "KDExample",
    "asks_builtin",
    "drop_builtin",
    "load_hub_examples",
    "load_kd_examples",
    "read_kd_jsonl",
    "spoken_examples",
    "split_examples",
    "teacher_prompt",
    "teacher_choices",
    "teacher_targets",
]
