"""``qwen2-audio``: Qwen2-Audio-style speech LLMs (``Qwen2AudioForConditionalGeneration``).

The text arm sends the written query alone through the same chat template (no audio tokens), which
exercises the language-model path exactly as the base LLM would be asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xkd_eval.audio import TARGET_SAMPLE_RATE
from xkd_eval.models.base import Query
from xkd_eval.models.hf import HFChatAdapter, pick_dtype


class Qwen2AudioAdapter(HFChatAdapter):
    adapter = "qwen2-audio"
    supports_audio = True
    model_class = "Qwen2AudioForConditionalGeneration"

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

    def messages(self, query: Query) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if query.audio is not None:
            content.append({"type": "audio", "audio_url": f"{query.item_id}.wav"})
        content.append({"type": "text", "text": query.text})
        return [{"role": "user", "content": content}]

    def encode(self, prompts: list[str], queries: Sequence[Query]) -> dict[str, Any]:
        audios = [q.audio for q in queries if q.audio is not None]
        if audios and len(audios) != len(queries):
            raise ValueError("a batch mixes text and speech queries; the runner batches one arm at a time")
        kwargs: dict[str, Any] = {"text": prompts, "return_tensors": "pt", "padding": True}
        if audios:
            kwargs |= {"audio": audios, "sampling_rate": TARGET_SAMPLE_RATE}
        return dict(self.processor(**kwargs))
