"""The spoken training example: its record, its JSONL reader and writer, its audio.

A ``SpokenExample``'s user turn is the clip of ``spoken_text`` followed by ``instruction``; the model is
trained on ``response``. Clips are synthesised where an example has none (``xkd_eval.tts``, a voice per
example id, cached) and read back as 16 kHz mono.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xkd_eval.errors import DataFormatError, XkdError

FIELDS = ("id", "instruction", "spoken_text", "response", "audio")


@dataclass(frozen=True)
class SpokenExample:
    """One training pair: the user turn is the audio of ``spoken_text`` followed by ``instruction``."""

    id: str
    instruction: str
    spoken_text: str
    response: str
    audio: str | None = None  # path of a 16 kHz WAV, once synthesised (or given by user data)
    task: str = "user"  # the family that made it
    voice: str | None = None

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def example_id(task: str, instruction: str, spoken_text: str) -> str:
    digest = hashlib.sha256(json.dumps([task, instruction, spoken_text]).encode()).hexdigest()
    return f"{task}-{digest[:12]}"


def examples_digest(examples: Iterable[SpokenExample]) -> str:
    """sha256 of the examples' ids and texts (not their audio): recorded in ``training.json``, so a
    change of the generator that would stop a recipe from rebuilding its adapter is caught."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.id, e.instruction, e.spoken_text, e.response]).encode() + b"\n")
    return digest.hexdigest()


def synthesize_examples(
    examples: Sequence[SpokenExample],
    voices: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> list[SpokenExample]:
    """Examples without audio get a clip of their spoken text (voice picked by example id, cached by
    ``xkd_eval.tts``); examples with audio are kept as they are."""
    from xkd_eval.tts import DEFAULT_VOICES, assign_voice, synthesize

    voices = tuple(voices or DEFAULT_VOICES)
    todo: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        if example.audio is None:
            todo.setdefault(assign_voice(example.id, voices), []).append(index)
    out = list(examples)
    for voice in voices:
        indices = todo.get(voice, [])
        if not indices:
            continue
        paths = synthesize([examples[i].spoken_text for i in indices], voice, cache, progress=progress)
        for i, path in zip(indices, paths, strict=True):
            out[i] = dataclasses.replace(out[i], audio=str(path), voice=voice)
    return out


def load_example_audio(examples: Iterable[SpokenExample]) -> list[np.ndarray]:
    """Each example's clip as mono float32 at 16 kHz (the evaluation's decoder)."""
    from xkd_eval.audio import decode_audio

    clips = []
    for example in examples:
        if example.audio is None:
            raise XkdError(f"example {example.id!r} has no audio; synthesise it first")
        clips.append(decode_audio(example.audio))
    return clips


def read_examples_jsonl(path: str | os.PathLike) -> list[SpokenExample]:
    """User adaptation data: one JSON object a line with ``instruction``, ``spoken_text``, ``response``
    and optionally ``id`` (default: a content hash) and ``audio`` (a path, relative to the file; when
    absent, the spoken text is synthesised)."""
    from xkd_eval.tasks.jsonl import read_whole_jsonl, resolve_path

    path = Path(path).expanduser()
    examples: list[SpokenExample] = []
    ids: set[str] = set()
    for number, record in read_whole_jsonl(path):
        missing = [k for k in ("instruction", "spoken_text", "response") if not str(record.get(k) or "").strip()]
        if missing and not (missing == ["spoken_text"] and record.get("audio")):
            raise DataFormatError(f"{path}:{number}: missing {', '.join(missing)}")
        instruction, spoken = str(record["instruction"]), str(record.get("spoken_text") or "")
        example_id_ = str(record.get("id") or example_id("user", instruction, spoken))
        if example_id_ in ids:
            raise DataFormatError(f"{path}:{number}: duplicate id {example_id_!r}")
        ids.add(example_id_)
        audio = resolve_path(record["audio"], path.parent) if record.get("audio") is not None else None
        examples.append(
            SpokenExample(
                example_id_,
                instruction,
                spoken,
                str(record["response"]),
                audio=audio,
                task=str(record.get("task") or "user"),
                voice=record.get("voice"),
            )
        )
    if not examples:
        raise DataFormatError(f"{path} holds no examples")
    return examples


def write_examples_jsonl(examples: Iterable[SpokenExample], path: str | os.PathLike) -> Path:
    """The examples as JSONL (audio paths as given), written atomically."""
    from xkd_eval.io import atomic_write_jsonl

    return atomic_write_jsonl(path, (e.record() for e in examples))


__all__ = [
    "FIELDS",
    "SpokenExample",
    "example_id",
    "examples_digest",
    "load_example_audio",
    "read_examples_jsonl",
    "synthesize_examples",
    "write_examples_jsonl",
]
