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
        processor = cls.load_processor(model_id, revision=revision)
        return cls.load_weights(model_id, revision=revision, device=device, dtype=dtype), processor

    @classmethod
    def load_weights(cls, model_id: str, *, revision: str | None, device: str, dtype: str | None):
        """The model alone, on ``device`` (what training needs; ``load`` adds the processor)."""
        import transformers

        model_class = getattr(transformers, cls.model_class)
        return model_class.from_pretrained(model_id, revision=revision, dtype=pick_dtype(device, dtype)).to(device)

    @classmethod
    def load_processor(cls, model_id: str, *, revision: str | None = None):
        """The family's processor alone (tokenizer, chat template, feature extractor), no weights."""
        import transformers

        return transformers.AutoProcessor.from_pretrained(model_id, revision=revision)

    @classmethod
    def conversation(cls, text: str, audio_name: str | None = None) -> list[dict[str, Any]]:
        """The chat turns of one query, as this family's evaluation sends them: the system turn where the
        family has one, then the audio part (when ``audio_name`` is given) and the text."""
        content: list[dict[str, Any]] = [{"type": "audio", cls.audio_key: audio_name}] if audio_name else []
        content.append({"type": "text", "text": text})
        turns: list[dict[str, Any]] = []
        if cls.system_prompt:
            turns.append({"role": "system", "content": [{"type": "text", "text": cls.system_prompt}]})
        return [*turns, {"role": "user", "content": content}]

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @classmethod
    def audio_part(cls, query: Query) -> dict[str, Any]:
        return {"type": "audio", cls.audio_key: f"{query.item_id}.wav"}

    @classmethod
    def chat_messages(cls, query: Query) -> list[dict[str, Any]]:
        turns = cls.conversation(query.text)
        if query.audio is not None:
            turns[-1]["content"].insert(0, cls.audio_part(query))
        return turns

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
    """``encoder_cache=True`` (or a folder) keeps each clip's audio-encoder output on disk, keyed by the
    clip and the encoder: a rerun with other prompts or settings, or the same clips before and after a
    training that leaves the encoder frozen, skips the encoder (the 30 s window costs the same for any
    clip)."""

    adapter = "qwen2-audio"
    model_class = "Qwen2AudioForConditionalGeneration"

    def __init__(self, model_id: str, *, encoder_cache: bool | str | None = None, **options: Any) -> None:
        super().__init__(model_id, **options)
        self.feature_cache = None
        if encoder_cache:
            from xkd_eval.models.encoder import FeatureCache

            root = None if encoder_cache is True else encoder_cache
            self.feature_cache = FeatureCache.for_model(self.model, self.processor.feature_extractor, root=root)

    def encode(self, prompts: list[str], queries: Sequence[Query]) -> dict[str, Any]:
        audios = self.audios_of(queries)
        if not audios or self.feature_cache is None:
            return super().encode(prompts, queries)
        from xkd_eval.models.encoder import compute_features, expand_audio_tokens

        features = compute_features(
            self.model, self.processor.feature_extractor, audios, self.feature_cache, progress=False
        )
        expanded = [expand_audio_tokens(p, [f.shape[0]]) for p, f in zip(prompts, features, strict=True)]
        batch = dict(self.tokenizer(expanded, padding=True, return_tensors="pt", add_special_tokens=False))
        return batch | {"audio_features": features}

    def model_inputs(self, batch: dict[str, Any], *, generation: bool) -> dict[str, Any]:
        if "audio_features" not in batch:
            return batch
        from xkd_eval.models.encoder import build_inputs_embeds

        batch = dict(batch)
        features = batch.pop("audio_features")
        batch["inputs_embeds"] = build_inputs_embeds(self.model, batch["input_ids"], features)
        if not generation:  # a forward takes embeddings or ids, not both; generate tracks the ids
            batch.pop("input_ids")
        return batch
