"""The teacher's logits over each response, teacher-forced on its *text* prompt, computed once and stored.

One file per (teacher identity, prompt ids, response ids, k, shared vocabulary size): the logits that
predict each response token (``[R, ·]``, in response order), either the top-k (fp16 values + int32
indices) or the exact full vocabulary (fp16, or fp32 with ``dtype="float32"``). With the cache filled the
teacher need not be resident while the student trains.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xkd_eval.distill.losses import TopK, align_response
from xkd_eval.errors import XkdError
from xkd_eval.io import atomic_write_bytes

FORMAT = "xkd-teacher-logits-1"


def teacher_identity(model: Any) -> str:
    """A content hash of the teacher: its config and a sample of its weights (embeddings, final norm). Not
    where it was loaded from: the same teacher in another folder (another machine's cache) reuses the cache."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        settings = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    else:
        h.update(type(model).__name__.encode())
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        h.update(emb.detach().flatten()[:65536].float().cpu().numpy().tobytes())
        h.update(emb.detach().float().sum(0).cpu().numpy().tobytes())
        params = list(model.parameters())
        h.update(params[-1].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """Top-k (``k``) or full-vocabulary (``k=None``) teacher logits on disk, keyed by content."""

    def __init__(
        self, root: str | os.PathLike, identity: str, k: int | None, shared_size: int, dtype: str = "float16"
    ) -> None:
        if k is not None and k < 1:
            raise XkdError(f"top_k must be >= 1 (or None for the full vocabulary), got {k}")
        self.root, self.identity, self.k, self.shared_size, self.dtype = Path(root), identity, k, shared_size, dtype
        self.stats = {"computed": 0, "reused": 0, "bytes": 0}

    def key(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> str:
        parts = [FORMAT, self.identity, list(prompt_ids), list(response_ids), self.k, self.shared_size]
        if self.dtype != "float16":  # the default keeps the keys it always had
            parts.append(self.dtype)
        payload = json.dumps(parts)
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / self.identity[:16] / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> TopK | torch.Tensor | None:
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = load_file(str(path))
        except Exception:
            return None
        if "indices" in data:
            return TopK(data["values"], data["indices"].long())
        return data["logits"]

    def put_topk(self, key: str, top: TopK) -> TopK:
        """Store one example's top-k as given (an engine's log-probabilities: the loss renormalises over k)."""
        from safetensors.torch import save

        values = top.values.to(getattr(torch, self.dtype)).contiguous()
        indices = top.indices.to(torch.int32).contiguous()
        data = save({"values": values, "indices": indices}, metadata={"format": FORMAT, "identity": self.identity})
        atomic_write_bytes(self.path(key), data)
        self.stats["computed"] += 1
        self.stats["bytes"] += len(data)
        return TopK(values, indices.long())

    def put(self, key: str, logits: torch.Tensor) -> TopK | torch.Tensor:
        """Store one example's ``[R, V]`` response logits (reduced to top-k / the shared ids here)."""
        from safetensors.torch import save

        logits = logits[..., : self.shared_size].float()
        dtype = getattr(torch, self.dtype)
        if self.k is not None:
            k = min(self.k, logits.shape[-1])
            values, indices = torch.topk(logits, k, dim=-1)
            item: TopK | torch.Tensor = TopK(values.to(dtype).contiguous(), indices.to(torch.int32).contiguous())
            tensors = {"values": item.values, "indices": item.indices}
            item = TopK(item.values, item.indices.long())
        else:
            item = logits.to(dtype).contiguous()
            tensors = {"logits": item}
        data = save(tensors, metadata={"format": FORMAT, "identity": self.identity})
        atomic_write_bytes(self.path(key), data)
        self.stats["computed"] += 1
        self.stats["bytes"] += len(data)
        return item


def teacher_response_logits(
    model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> list[torch.Tensor]:
    """The teacher's logits predicting each response token (``[R_i, V]`` per example), teacher-forced on
    prompt + response in one right-padded batch; gathered with ``align_response``."""
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[row, : len(s)] = torch.tensor(s)
        attention[row, : len(s)] = 1
        mask[row, len(p) : len(s)] = True
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
    aligned, _, valid = align_response(logits, mask.to(device), logits[..., :1], mask.to(device))
    return [aligned[row][valid[row]] for row in range(len(seqs))]


def _cached(
    cache: TeacherCache,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    progress: Callable[[int], None] | None,
) -> tuple[list[str], list[Any], list[int]]:
    """(keys, what the cache holds (None where missing), the missing examples, shortest first)."""
    keys = [cache.key(p, r) for p, r in zip(prompts, responses, strict=True)]
    out: list[Any] = [cache.load(k) for k in keys]
    reused = sum(x is not None for x in out)
    cache.stats["reused"] += reused
    if progress and reused:
        progress(reused)
    missing = sorted((i for i, x in enumerate(out) if x is None), key=lambda i: len(prompts[i]) + len(responses[i]))
    return keys, out, missing


def fill_teacher_cache(
    cache: TeacherCache,
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[TopK | torch.Tensor]:
    """Every example's cached teacher logits, computing the missing ones (teacher in eval, no grad)."""
    keys, out, missing = _cached(cache, prompts, responses, progress)
    if missing:
        model.eval()
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            with torch.no_grad():
                logits = teacher_response_logits(
                    model, [prompts[i] for i in chunk], [responses[i] for i in chunk], pad_id
                )
            for i, item in zip(chunk, logits, strict=True):
                if item.shape[0] != len(responses[i]):
                    raise XkdError(f"teacher logits of example {i} cover {item.shape[0]} of {len(responses[i])} tokens")
                out[i] = cache.put(keys[i], item.cpu())
            if progress:
                progress(len(chunk))
    return out


def topk_of_positions(positions: Sequence[dict[int, tuple[float, int | None]]], k: int, shared_size: int) -> TopK:
    """An engine's per-position top-k (token id -> (log-probability, rank)) as a :class:`TopK` ``[R, k]``: the k
    best ranks of each position, ids beyond the shared vocabulary dropped, short rows padded with ``-inf``."""
    values = torch.full((len(positions), k), float("-inf"))
    indices = torch.zeros((len(positions), k), dtype=torch.long)
    for row, position in enumerate(positions):
        ranked = sorted((rank, token, logprob) for token, (logprob, rank) in position.items() if rank is not None)
        kept = [(token, logprob) for rank, token, logprob in ranked if rank <= k and token < shared_size][:k]
        if not kept:
            raise XkdError(f"response position {row}: none of the engine's top-{k} tokens is in the shared vocabulary")
        for column, (token, logprob) in enumerate(kept):
            values[row, column], indices[row, column] = logprob, token
    return TopK(values, indices)


def fill_teacher_cache_vllm(
    cache: TeacherCache,
    teacher: str,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[TopK | torch.Tensor]:
    """:func:`fill_teacher_cache` with the teacher in vLLM (``vllm:`` + the teacher's spec): the missing examples'
    top-k from ``prompt_logprobs``, ``batch_size`` examples per engine call (the engine batches within it; each
    call's results are stored before the next), in the same format."""
    from xkd_eval.models import load_model

    keys, out, missing = _cached(cache, prompts, responses, progress)
    if missing:
        engine = load_model(f"vllm:{teacher}", max_logprobs=cache.k)
        try:
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                tops = engine.response_topk([prompts[i] for i in chunk], [responses[i] for i in chunk], cache.k)
                for i, positions in zip(chunk, tops, strict=True):
                    out[i] = cache.put_topk(keys[i], topk_of_positions(positions, cache.k, cache.shared_size))
                if progress:
                    progress(len(chunk))
        finally:
            engine.close()
    return out


__all__ = [
    "TeacherCache",
    "fill_teacher_cache",
    "fill_teacher_cache_vllm",
    "teacher_identity",
    "teacher_response_logits",
    "topk_of_positions",
]
