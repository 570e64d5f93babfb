"""``voxtral``: Mistral's Voxtral speech LLMs (``VoxtralForConditionalGeneration`` + ``VoxtralProcessor``).

Voxtral's tokenizer is mistral-common's tekken (``MistralCommonBackend``), and its processor takes audio only
through ``apply_chat_template``: the tokenizer encodes each conversation itself, audio included (an audio part
becomes ``[BEGIN_AUDIO]`` and one ``[AUDIO]`` per 80 ms of the audio padded to whole 30 s chunks), and the
processor adds the log-mel features of those chunks. That works batched, with either padding side, and with audio
of any mix of lengths. Audio arrays are handed over as base64 WAV in 32-bit float, so they reach the model
bit-exact. There is no template text to render: the recorded prompt is the decoded token sequence, with each run
of ``[AUDIO]`` shown as one placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from xkd_eval.audio import wav_base64
from xkd_eval.errors import XkdError
from xkd_eval.models.base import Query
from xkd_eval.models.hf import pick_dtype
from xkd_eval.models.qwen2_audio import ProcessorSpeechAdapter

AUDIO_RUN = re.compile(r"(?:\[AUDIO\])+")


def require_mistral_common() -> None:
    import importlib.util

    if importlib.util.find_spec("mistral_common") is None:
        raise XkdError(
            "the voxtral adapter needs Voxtral's tokenizer, which comes from mistral-common: "
            "pip install 'mistral-common[audio]'"
        )


class VoxtralAdapter(ProcessorSpeechAdapter):
    adapter = "voxtral"

    @classmethod
    def load(cls, model_id: str, *, revision: str | None, device: str, dtype: str | None):
        require_mistral_common()
        from transformers import AutoProcessor, VoxtralForConditionalGeneration

        processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        if type(processor.tokenizer).__name__ != "MistralCommonBackend":  # no other tokenizer can take audio
            raise XkdError(
                f"{model_id}: Voxtral's processor loaded a {type(processor.tokenizer).__name__} tokenizer; "
                "it needs the tekken tokenizer (tekken.json) through mistral-common"
            )
        model = VoxtralForConditionalGeneration.from_pretrained(
            model_id, revision=revision, dtype=pick_dtype(device, dtype)
        )
        return model.to(device), processor

    @classmethod
    def audio_part(cls, query: Query) -> dict[str, Any]:
        return {"type": "audio", "base64": wav_base64(query.audio)}

    def render_prompt(self, query: Query) -> str:
        ids = self.tokenizer.apply_chat_template(self.messages(query), tokenize=True, return_dict=False)
        return AUDIO_RUN.sub("[AUDIO]", self.tokenizer.decode(ids, skip_special_tokens=False))

    def encode(self, prompts: list[str], queries: Sequence[Query]) -> dict[str, Any]:
        self.audios_of(queries)  # refuses a mixed batch
        batch = self.processor.apply_chat_template([self.messages(q) for q in queries])
        return dict(batch)

    def _suffix_ids(self, prompt: str, suffix: str) -> list[int]:
        # mistral-common encodes an assistant turn's text on its own, after [/INST]: no merge across the boundary
        return list(self.tokenizer.encode(suffix, add_special_tokens=False))
