"""``hf-text``: any causal LM with a chat template (the base LLM of a speech LLM, or a cascade's LLM)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xkd_eval.models.base import Query
from xkd_eval.models.hf import HFChatAdapter, pick_dtype


class HFTextAdapter(HFChatAdapter):
    adapter = "hf-text"
    supports_audio = False

    @classmethod
    def load(cls, model_id: str, *, revision: str | None, device: str, dtype: str | None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, dtype=pick_dtype(device, dtype))
        return model.to(device), tokenizer

    @property
    def tokenizer(self):
        tokenizer = self.processor
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @classmethod
    def chat_messages(cls, query: Query) -> list[dict[str, Any]]:
        return [{"role": "user", "content": query.text}]

    def encode(self, prompts: list[str], queries: Sequence[Query]) -> dict[str, Any]:
        return dict(self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False))
