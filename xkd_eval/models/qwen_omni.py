"""``qwen2.5-omni``: the thinker of Qwen2.5-Omni (``Qwen2_5OmniThinkerForConditionalGeneration``), text output only.

A full Qwen2.5-Omni checkpoint (model_type ``qwen2_5_omni``: thinker, talker and token2wav) loads its thinker
alone: the thinker's config and the ``thinker.`` weights, nothing of the speech-output half. A thinker-only
checkpoint (``qwen2_5_omni_thinker``) loads as it is.

Inputs come from ``Qwen2_5OmniProcessor`` where it can load. It cannot without torchvision (it always builds its
video processor, which needs it; a CPU-only torch has no matching torchvision on PyPI): then
:class:`OmniAudioTextProcessor` does the processor's text-and-audio work from the same checkpoint files (its
tokenizer, chat template and Whisper feature extractor), with transformers' own token-count formula.

Both arms carry Qwen2.5-Omni's documented default system prompt, the one its model card uses throughout.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from xkd_eval.audio import TARGET_SAMPLE_RATE
from xkd_eval.models.hf import pick_dtype
from xkd_eval.models.qwen2_audio import ProcessorSpeechAdapter

DEFAULT_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)


class OmniAudioTextProcessor:
    """What ``Qwen2_5OmniProcessor`` does for text and audio: the Whisper features of each audio (padded to 30 s,
    with their mask as ``feature_attention_mask``) and each ``<|AUDIO|>`` of the text expanded to one token per
    audio frame the encoder yields."""

    def __init__(self, tokenizer: Any, feature_extractor: Any, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.chat_template = chat_template or tokenizer.chat_template
        self.audio_token = getattr(tokenizer, "audio_token", None) or "<|AUDIO|>"

    @classmethod
    def from_pretrained(cls, model_id: str, *, revision: str | None = None) -> OmniAudioTextProcessor:
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        return cls(tokenizer, WhisperFeatureExtractor.from_pretrained(model_id, revision=revision))

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, **kwargs)

    def save_pretrained(self, save_dir: str) -> None:
        """The tokenizer (with the chat template) and the feature extractor: what ``from_pretrained`` reads."""
        self.tokenizer.chat_template = self.chat_template
        self.tokenizer.save_pretrained(save_dir)
        self.feature_extractor.save_pretrained(save_dir)

    def __call__(
        self,
        text: list[str],
        audio: list[Any] | None = None,
        *,
        sampling_rate: int = TARGET_SAMPLE_RATE,
        text_kwargs: dict[str, Any] | None = None,
        return_tensors: str = "pt",
    ) -> dict[str, Any]:
        from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

        data: dict[str, Any] = {}
        if audio:
            features = self.feature_extractor(
                audio,
                sampling_rate=sampling_rate,
                padding="max_length",
                return_attention_mask=True,
                return_tensors=return_tensors,
            )
            data["input_features"] = features["input_features"]
            data["feature_attention_mask"] = features["attention_mask"]
            counts = iter(_get_feat_extract_output_lengths(features["attention_mask"].sum(-1)).tolist())
            expanded = []
            for prompt in text:
                pieces = prompt.split(self.audio_token)
                out = pieces[0]
                for piece in pieces[1:]:
                    out += self.audio_token * next(counts) + piece
                expanded.append(out)
            text = expanded
            if next(counts, None) is not None:
                raise ValueError("more audio than audio placeholders in the prompts")
        encoded = self.tokenizer(text, **{"padding": True, **(text_kwargs or {})}, return_tensors=return_tensors)
        return {**encoded, **data}


class QwenOmniThinkerAdapter(ProcessorSpeechAdapter):
    adapter = "qwen2.5-omni"
    audio_key = "audio"
    pad_text_only = True  # the processor's own default side is left
    system_prompt = DEFAULT_SYSTEM_PROMPT

    @classmethod
    def load(cls, model_id: str, *, revision: str | None, device: str, dtype: str | None):
        model = cls.load_weights(model_id, revision=revision, device=device, dtype=dtype)
        processor = cls.load_processor(model_id, revision=revision)
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
        return model, processor

    @classmethod
    def load_weights(cls, model_id: str, *, revision: str | None, device: str, dtype: str | None):
        from transformers import AutoConfig, Qwen2_5OmniThinkerForConditionalGeneration

        config = AutoConfig.from_pretrained(model_id, revision=revision)
        options: dict[str, Any] = {"revision": revision, "dtype": pick_dtype(device, dtype)}
        if config.model_type == "qwen2_5_omni":  # the whole model: its thinker's config and weights only
            options |= {"config": config.thinker_config, "key_mapping": {r"^thinker\.": ""}}
        return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(model_id, **options).to(device)

    @classmethod
    def load_processor(cls, model_id: str, *, revision: str | None = None):
        if importlib.util.find_spec("torchvision") is not None:
            from transformers import Qwen2_5OmniProcessor

            try:
                return Qwen2_5OmniProcessor.from_pretrained(model_id, revision=revision)
            except OSError:  # a checkpoint saved without the vision processors' configs
                pass
        return OmniAudioTextProcessor.from_pretrained(model_id, revision=revision)
