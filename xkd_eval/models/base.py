"""The model contract every adapter fulfils, and the shared machinery of transformers-based ones.

A speech LLM answers in two arms: ``text`` (the written query through its language-model path, no
audio) and ``speech`` (the audio, with a fixed instruction). Both go through the same chat template
and the same generation settings; the rendered prompt is recorded with every result.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from xkd_eval.errors import XkdError

if TYPE_CHECKING:
    import torch

SPEECH_INSTRUCTION = "Listen to the audio and respond to the question or request it contains."


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, identical for every arm; part of each result's cache key."""

    max_new_tokens: int = 96  # longest answer generated
    do_sample: bool = False  # greedy by default: reruns give the same answer
    temperature: float = 1.0  # only used when do_sample
    top_p: float = 1.0  # only used when do_sample
    seed: int = 0  # only used when do_sample

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Query:
    """What one arm sends a model for one item: text (the written query, or the fixed instruction of
    the speech arm) and, for the speech arm, audio as mono float32 at 16 kHz."""

    item_id: str
    text: str
    audio: np.ndarray | None = None

    @property
    def modality(self) -> str:
        return "speech" if self.audio is not None else "text"


class ModelAdapter(abc.ABC):
    """One model behind the common interface. Subclasses register under ``adapter``."""

    adapter: ClassVar[str]
    supports_audio: ClassVar[bool | None] = False  # None: the served model decides (known once loaded)
    backend: ClassVar[str] = "transformers"  # what computes the answers (recorded in summary.json)
    # the engine schedules its own batches (continuous batching, requests in flight): the runner hands it at
    # least this many items at a time, whatever --batch-size says (answers do not depend on it)
    engine_batch: ClassVar[int] = 1

    def __init__(self, model_id: str, *, revision: str | None = None) -> None:
        self.model_id = model_id
        self.revision = revision

    @property
    def spec(self) -> str:
        return f"{self.adapter}:{self.model_id}"

    def identity(self) -> dict[str, Any]:
        """What makes results of this model distinct (part of the cache key)."""
        return {"adapter": self.adapter, "model_id": self.model_id, "revision": self.revision}

    @abc.abstractmethod
    def render_prompt(self, query: Query) -> str:
        """The exact prompt text the model sees (audio shown by its placeholder), for the record."""

    @abc.abstractmethod
    def generate(self, queries: Sequence[Query], settings: GenerationSettings) -> list[str]:
        """One response per query, batched."""

    @abc.abstractmethod
    def continuation_logits(
        self, queries: Sequence[Query], continuations: Sequence[str]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Teacher-forced: for each (query, continuation as the assistant's reply), the float32 logits
        [T, V] that predict the continuation's T tokens, and those token ids [T]."""

    def continuation_logprobs(self, queries: Sequence[Query], continuations: Sequence[str]) -> list[float]:
        """Sum of log-probabilities of each continuation (log-likelihood scoring of MCQ options)."""
        import torch

        totals = []
        for logits, ids in self.continuation_logits(queries, continuations):
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            totals.append(float(logprobs.gather(-1, ids.unsqueeze(-1)).sum()))
        return totals

    def vocabulary(self) -> dict[str, int] | None:
        """token -> id, for checks that two models share a vocabulary; None when not applicable."""
        return None

    @classmethod
    def check_available(cls) -> None:
        """Raise if what this adapter runs on is not installed here (checked before any work starts)."""
        return None

    def close(self) -> None:
        """Give back what the model holds beyond its memory (an engine's processes); a no-op for most."""
        return None

    def check_can_rank(self, mcq_mode: str) -> None:
        """Raise before any item is asked if this model cannot score options by log-likelihood (a local model
        always can)."""
        return None

    def check_can_take_audio(self) -> None:
        if not self.supports_audio:
            raise XkdError(
                f"model {self.spec} cannot take audio, so it has no speech arm; use a speech LLM adapter "
                f"(qwen2-audio, voxtral, qwen2.5-omni, audioflamingo3) or a cascade:ASR+LLM"
            )
