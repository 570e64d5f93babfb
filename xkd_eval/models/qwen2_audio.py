"""Speech LLMs driven by a transformers processor, and ``qwen2-audio`` (``Qwen2AudioForConditionalGeneration``).

The text arm sends the written query alone through the same chat template (no audio part), which
exercises the language-model path exactly as the base LLM would be asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from xkd_eval.audio import TARGET_SAMPLE_RATE
from xkd_eval.models.base import Query
from xkd_eval.models.hf import HFChatAdapter, pick_dtype


class ProcessorSpeechAdapter(HFChatAdapter):
    """A speech LLM whose processor turns (chat-rendered prompts, 16 kHz audio) into model inputs.

    Families differ in their model class, how an audio part of a message is written, whether padding
    options must be addressed to the text alone, and an optional system turn.
    """

    supports_audio = True
    model_class: ClassVar[str]
    audio_key: ClassVar[str] = "audio_url"  # the key of a message's audio part in the family's template
    pad_text_only: ClassVar[bool] = False  # True: a top-level `padding` would also pad the audio windows
    system_prompt: ClassVar[str | None] = None

    @classmethod
    def load(cls, model_id: str, *, revision: str | None, device: str, dtype: str | None):
        import transformers

        processor = transformers.AutoProcessor.from_pretrained(model_id, revision=revision)
        model_class = getattr(transformers, cls.model_class)
        model = model_class.from_pretrained(model_id, revision=revision, dtype=pick_dtype(device, dtype))
        return model.to(device), processor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def audio_part(self, query: Query) -> dict[str, Any]:
        return {"type": "audio", self.audio_key: f"{query.item_id}.wav"}

    def messages(self, query: Query) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [self.audio_part(query)] if query.audio is not None else []
        content.append({"type": "text", "text": query.text})
        turns: list[dict[str, Any]] = []
        if self.system_prompt:
            turns.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return [*turns, {"role": "user", "content": content}]

    @staticmethod
    def audios_of(queries: Sequence[Query]) -> list[Any]:
        audios = [q.audio for q in queries if q.audio is not None]
        if audios and len(audios) != len(queries):
            raise ValueError("a batch mixes text and speech queries; the runner batches one arm at a time")
        return audios

    def encode(self, prompts: list[str], queries: Sequence[Query]) -> dict[str, Any]:
        audios = self.audios_of(queries)
        kwargs: dict[str, Any] = {"text": prompts, "return_tensors": "pt"}
        if self.pad_text_only:
            kwargs["text_kwargs"] = {"padding": True, "padding_side": self.tokenizer.padding_side}
        else:
            kwargs["padding"] = True
        if audios:
            kwargs |= {"audio": audios, "sampling_rate": TARGET_SAMPLE_RATE}
        batch = dict(self.processor(**kwargs))
        batch.pop("num_audio_tokens", None)  # the processor's bookkeeping, not a model input
        return batch


class Qwen2AudioAdapter(ProcessorSpeechAdapter):
    adapter = "qwen2-audio"
    model_class = "Qwen2AudioForConditionalGeneration"
