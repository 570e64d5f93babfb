"""``audioflamingo3``: NVIDIA's Audio Flamingo 3 (``AudioFlamingo3ForConditionalGeneration`` + its processor).

The processor cuts each audio into 30 s windows (up to its ``max_audio_len``), pads each to 30 s with a feature
mask, and expands the ``<sound>`` placeholder of the prompt to one token per encoder frame after pooling. Its own
text padding default is left; the adapter always names the side the caller asked for, for the text alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xkd_eval.audio import TARGET_SAMPLE_RATE
from xkd_eval.models.base import Query
from xkd_eval.models.hf import HFChatAdapter, pick_dtype


class AudioFlamingo3Adapter(HFChatAdapter):
    adapter = "audioflamingo3"
    supports_audio = True

    @classmethod
    def load(cls, model_id: str, *, revision: str | None, device: str, dtype: str | None):
        from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

        processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        model = AudioFlamingo3ForConditionalGeneration.from_pretrained(
            model_id, revision=revision, dtype=pick_dtype(device, dtype)
        )
        return model.to(device), processor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def messages(self, query: Query) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if query.audio is not None:
            content.append({"type": "audio", "path": f"{query.item_id}.wav"})
        content.append({"type": "text", "text": query.text})
        return [{"role": "user", "content": content}]

    def encode(self, prompts: list[str], queries: Sequence[Query]) -> dict[str, Any]:
        audios = [q.audio for q in queries if q.audio is not None]
        if audios and len(audios) != len(queries):
            raise ValueError("a batch mixes text and speech queries; the runner batches one arm at a time")
        # padding named for the text only: a top-level ``padding`` would also reach the feature extractor and
        # pad the audio windows to the longest instead of to 30 s
        kwargs: dict[str, Any] = {
            "text": prompts,
            "return_tensors": "pt",
            "text_kwargs": {"padding": True, "padding_side": self.tokenizer.padding_side},
        }
        if audios:
            kwargs |= {"audio": audios, "sampling_rate": TARGET_SAMPLE_RATE}
        batch = dict(self.processor(**kwargs))
        batch.pop("num_audio_tokens", None)  # bookkeeping of the processor, not a model input
        return batch
