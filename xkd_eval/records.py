"""Typed frozen records shared by every layer: items to ask, and scores of answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AudioRef:
    """Where an item's audio lives: a file on disk, or the encoded bytes of one (VoiceBench parquet).

    Decoding is deferred (``xkd_eval.audio.load_audio``) so that text-only runs never touch audio.
    """

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def describe(self) -> str:
        if self.path:
            return self.path
        if self.data is not None:
            return f"<embedded audio, {len(self.data)} bytes>"
        return "<no audio>"


QUESTION_AUDIO = "question_audio"  # Item.metadata key: a clip of a multiple-choice question without its options


@dataclass(frozen=True)
class Item:
    """One benchmark question, answerable written (``prompt``) and, where ``audio`` is set, spoken."""

    id: str
    task: str
    prompt: str
    references: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    audio: AudioRef | None = None
    scorer: str | None = None
    # domain / accent / subtask / difficulty, and whatever fields a scorer needs (ifeval kwargs, ...)
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def reference(self) -> str | None:
        return self.references[0] if self.references else None


@dataclass(frozen=True)
class Score:
    """The verdict of one scorer on one response.

    ``value`` is on the scorer's own scale (1.0/0.0 for binary scorers, 1-5 for judges) and is None
    when nothing could be scored (no answer extracted, judge unreachable). ``correct`` is the binary
    verdict where the scorer has one.
    """

    value: float | None
    correct: bool | None = None
    extracted: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def failed(self) -> bool:
        """True when the scorer could not reach a verdict (an extraction failure)."""
        return self.value is None
