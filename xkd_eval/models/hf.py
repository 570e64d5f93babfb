"""Shared machinery of transformers-based adapters: batching, left-padded generation, and
teacher-forced continuation logits with right padding."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from xkd_eval.errors import AudioError
from xkd_eval.models.base import GenerationSettings, ModelAdapter, Query


def pick_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, dtype: str | None = None):
    import torch

    if dtype:
        return getattr(torch, dtype)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def suffix_ids(tokenizer: Any, prompt: str, suffix: str) -> list[int]:
    """Token ids the suffix adds after the prompt (tokenised jointly, as the model will see it)."""
    whole = tokenizer(prompt + suffix, add_special_tokens=False)["input_ids"]
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if whole[: len(head)] != head:  # a merge across the boundary: fall back to separate pieces
        return tokenizer(suffix, add_special_tokens=False)["input_ids"]
    return whole[len(head) :]


def shared_prefix_logits(
    model: Any, prompt_inputs: dict[str, Any], owner: Sequence[int], suffixes: Sequence[Sequence[int]], pad_id: int
) -> list[tuple[Any, Any]]:
    """Teacher-forced logits of several continuations per prompt, each prompt run once.

    ``prompt_inputs`` are the model's inputs for the distinct prompts, left-padded (``attention_mask``
    included); continuation ``i`` follows prompt ``owner[i]`` and has token ids ``suffixes[i]``. The prompt
    pass's cache is repeated per continuation and the continuations run in one more pass. Returns, per
    continuation, the float32 logits [T, V] that predict its T tokens and those ids [T] (on the CPU)."""
    import torch

    with torch.inference_mode():
        prefix = model(**prompt_inputs, use_cache=True)
        last = prefix.logits[:, -1].float()
        cache = prefix.cache
        index = torch.tensor(list(owner), device=last.device)
        cache.reorder_cache(index)  # one cache row per continuation
        width = max(1, max(len(s) for s in suffixes))
        ids = torch.full((len(owner), width), pad_id, dtype=torch.long, device=last.device)
        for row, suffix in enumerate(suffixes):
            ids[row, : len(suffix)] = torch.tensor(list(suffix), dtype=torch.long)
        prompt_mask = prompt_inputs["attention_mask"].index_select(0, index)
        suffix_mask = (
            torch.arange(width, device=last.device)[None, :]
            < torch.tensor([len(s) for s in suffixes], device=last.device)[:, None]
        ).to(prompt_mask.dtype)
        # the prompt pass placed its tokens at 0..P-1, pads included: continue from P (RoPE only sees
        # differences, so the left pads shift nothing)
        position_ids = prompt_mask.shape[1] + torch.arange(width, device=last.device)[None, :]
        logits = model(
            input_ids=ids,
            attention_mask=torch.cat([prompt_mask, suffix_mask], dim=1),
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        ).logits.float()
    out = []
    for row, suffix in enumerate(suffixes):
        rows = [last[owner[row]][None, :]]
        if len(suffix) > 1:
            rows.append(logits[row, : len(suffix) - 1])
        out.append((torch.cat(rows, dim=0).cpu(), torch.tensor(list(suffix))))
    return out


class HFChatAdapter(ModelAdapter):
    """A transformers model with a chat template. Subclasses load the model and build batches."""

    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        super().__init__(model_id, revision=revision)
        self.device = pick_device(device)
        if model is None:
            model, processor = self.load(model_id, revision=revision, device=self.device, dtype=dtype)
        self.model = model.eval()
        self.processor = processor

    # ------------------------------------------------------------------ per family

    @classmethod
    @abc.abstractmethod
    def load(cls, model_id: str, *, revision: str | None, device: str, dtype: str | None) -> tuple[Any, Any]:
        """(model on device, processor-or-tokenizer), from a hub id or a local folder."""

    @property
    @abc.abstractmethod
    def tokenizer(self):
        """The text tokenizer (for suffix lengths, decoding, vocabulary)."""

    @classmethod
    @abc.abstractmethod
    def chat_messages(cls, query: Query) -> list[dict[str, Any]]:
        """The chat messages for one query (a class method: serving backends render the same turns without
        loading the weights)."""

    def messages(self, query: Query) -> list[dict[str, Any]]:
        return self.chat_messages(query)

    @abc.abstractmethod
    def encode(self, prompts: list[str], queries: Sequence[Query]) -> dict[str, Any]:
        """Tokenise rendered prompts (with their audio) into a padded batch of model inputs (on CPU)."""

    # ------------------------------------------------------------------ shared

    def render_prompt(self, query: Query) -> str:
        template_owner = self.processor if hasattr(self.processor, "apply_chat_template") else self.tokenizer
        return template_owner.apply_chat_template(self.messages(query), tokenize=False, add_generation_prompt=True)

    def heard(self, batch: dict[str, Any], queries: Sequence[Query]) -> dict[str, Any]:
        """The encoded batch, once every query with a clip is seen to carry audio tokens: a speech query
        whose processed prompt holds none would be answered without its audio (a chat template that drops
        the audio part, a processor that ignores it), so it is an error naming the item instead."""
        token = self.audio_token
        if token is None or "input_ids" not in batch:
            return batch
        for row, query in enumerate(queries):
            if query.audio is not None and not bool((batch["input_ids"][row] == token).any()):
                raise AudioError(
                    f"item {query.item_id}: the processed prompt holds no audio token (id {token}): the clip would "
                    f"not reach {self.model_id}; check the adapter's chat template and processor"
                )
        return batch

    @property
    def audio_token(self) -> int | None:
        """The id that stands for audio in this model's prompts (None for a text LLM)."""
        if not self.supports_audio:
            return None
        configs = [self.model.config, getattr(self.model.config, "thinker_config", None)]
        for config in filter(None, configs):
            for name in ("audio_token_id", "audio_token_index"):
                if getattr(config, name, None) is not None:
                    return int(getattr(config, name))
        return None

    def model_inputs(self, batch: dict[str, Any], *, generation: bool) -> dict[str, Any]:
        """The model's keyword arguments for an encoded batch (a hook: cached audio features become
        ``inputs_embeds`` here)."""
        return batch

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        moved = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.model.dtype)
            moved[key] = value
        return moved

    def generate(self, queries: Sequence[Query], settings: GenerationSettings) -> list[str]:
        import torch

        if not queries:
            return []
        prompts = [self.render_prompt(q) for q in queries]
        self.tokenizer.padding_side = "left"
        batch = self._to_device(self.heard(self.encode(prompts, queries), queries))
        options: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if settings.do_sample:
            torch.manual_seed(settings.seed)
            options |= {"temperature": settings.temperature, "top_p": settings.top_p}
        else:
            options |= {"temperature": None, "top_p": None, "top_k": None}
        with torch.inference_mode():
            output = self.model.generate(**self.model_inputs(batch, generation=True), **options)
        sequences = output.sequences if hasattr(output, "sequences") else output
        new_tokens = sequences[:, batch["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _suffix_ids(self, prompt: str, suffix: str) -> list[int]:
        return suffix_ids(self.tokenizer, prompt, suffix)

    def continuation_logits(self, queries: Sequence[Query], continuations: Sequence[str]):
        if not queries:
            return []
        prompts = [self.render_prompt(q) for q in queries]
        suffixes = [self._suffix_ids(p, c) for p, c in zip(prompts, continuations, strict=True)]
        groups: dict[tuple, int] = {}
        owner = [
            groups.setdefault((q.item_id, p, id(q.audio)), len(groups)) for q, p in zip(queries, prompts, strict=True)
        ]
        if len(groups) < len(queries) and self.shares_prefixes:
            return self._shared_prefix_logits(queries, prompts, suffixes, owner, len(groups))
        return self._joint_logits(queries, prompts, suffixes)

    # several continuations of one prompt (MCQ options) reuse one pass over the prompt through the KV cache
    shares_prefixes = True

    def _joint_logits(self, queries, prompts, suffixes):
        import torch

        self.tokenizer.padding_side = "right"
        batch = self.heard(self.encode(prompts, queries), queries)
        # append each continuation after its own prompt, inside the right-padded batch
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        width = max(n + len(s) for n, s in zip(lengths, suffixes, strict=True))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(queries), width), pad, dtype=batch["input_ids"].dtype)
        attention = torch.zeros((len(queries), width), dtype=batch["attention_mask"].dtype)
        for row, (n, suffix) in enumerate(zip(lengths, suffixes, strict=True)):
            input_ids[row, :n] = batch["input_ids"][row, :n]
            input_ids[row, n : n + len(suffix)] = torch.tensor(suffix, dtype=input_ids.dtype)
            attention[row, : n + len(suffix)] = 1
        batch["input_ids"], batch["attention_mask"] = input_ids, attention
        with torch.inference_mode():
            logits = self.model(**self.model_inputs(self._to_device(batch), generation=False)).logits
        out = []
        for row, (n, suffix) in enumerate(zip(lengths, suffixes, strict=True)):
            out.append((logits[row, n - 1 : n - 1 + len(suffix)].float().cpu(), torch.tensor(suffix)))
        return out

    def _shared_prefix_logits(self, queries, prompts, suffixes, owner, n_groups):
        """Left-padded prompts once, with the cache; then every continuation after its prompt's cache."""
        first = {}
        for row, group in enumerate(owner):
            first.setdefault(group, row)
        heads = [first[g] for g in range(n_groups)]
        self.tokenizer.padding_side = "left"
        rows = [queries[r] for r in heads]
        batch = self._to_device(self.heard(self.encode([prompts[r] for r in heads], rows), rows))
        inputs = self.model_inputs(batch, generation=False)
        return shared_prefix_logits(self.model, inputs, owner, suffixes, self.tokenizer.pad_token_id)

    def vocabulary(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()
