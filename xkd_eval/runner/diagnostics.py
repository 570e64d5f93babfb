"""Judge-free, distribution-level diagnostics (``--diagnostics kl``).

Teacher-forced on the same response tokens, the mean token-level KL divergence
- KL(base(text) ‖ slm(text)): forgetting in distribution space;
- KL(slm(text) ‖ slm(speech)): the modality gap in distribution space.
The responses are the base model's own text answers where the base ran, else the references.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.models.base import SPEECH_INSTRUCTION, ModelAdapter, Query


def check_same_vocabulary(first: ModelAdapter, second: ModelAdapter) -> None:
    a, b = first.vocabulary(), second.vocabulary()
    if a is None or b is None:
        raise XkdError(f"KL diagnostics need token-level models; {first.spec} or {second.spec} has no vocabulary")
    shared = a.keys() & b.keys()
    differing = [t for t in shared if a[t] != b[t]]
    if differing or len(shared) < min(len(a), len(b)):
        raise XkdError(
            f"KL diagnostics need one vocabulary, but {first.spec} ({len(a)} tokens) and {second.spec} "
            f"({len(b)} tokens) map tokens to ids differently ({len(differing)} shared tokens differ, "
            f"{len(a.keys() ^ b.keys())} tokens in only one); drop --diagnostics kl for this pair"
        )


def mean_token_kl(p_logits, q_logits) -> float:
    """Mean over positions of KL(p ‖ q), computed in float32 over the shared leading vocabulary."""
    import torch

    width = min(p_logits.shape[-1], q_logits.shape[-1])  # padding rows beyond the tokenizer differ in size
    log_p = torch.log_softmax(p_logits[..., :width].float(), dim=-1)
    log_q = torch.log_softmax(q_logits[..., :width].float(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def kl_between(
    first: ModelAdapter,
    first_queries: Sequence[Query],
    second: ModelAdapter,
    second_queries: Sequence[Query],
    responses: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[float]:
    values: list[float] = []
    for start in range(0, len(responses), batch_size):
        chunk = slice(start, start + batch_size)
        p = first.continuation_logits(first_queries[chunk], responses[chunk])
        q = second.continuation_logits(second_queries[chunk], responses[chunk])
        for (p_logits, p_ids), (q_logits, q_ids) in zip(p, q, strict=True):
            if len(p_ids) == 0 or not bool((p_ids == q_ids).all()):
                continue  # empty response, or tokenised differently: nothing comparable
            values.append(mean_token_kl(p_logits, q_logits))
    return values


def kl_diagnostics(
    slm: ModelAdapter,
    base: ModelAdapter | None,
    items: Sequence[Any],
    responses: Sequence[str],
    audio: dict[str, Any],
    *,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Per task: mean KLs over items with a non-empty response (and, for the gap, usable audio)."""
    import statistics

    keep = [(i, r) for i, r in zip(items, responses, strict=True) if r and r.strip()]
    out: dict[str, Any] = {"n_responses": len(keep)}
    text = [Query(i.id, i.prompt) for i, _ in keep]
    if base is not None:
        check_same_vocabulary(base, slm)
        values = kl_between(base, text, slm, text, [r for _, r in keep], batch_size=batch_size)
        out["kl_base_text_slm_text"] = statistics.fmean(values) if values else None
        out["n_forgetting"] = len(values)
    spoken = [(i, r) for i, r in keep if i.id in audio]
    if spoken and slm.supports_audio:
        speech_queries = [
            Query(i.id, str(i.metadata.get("speech_instruction") or SPEECH_INSTRUCTION), audio[i.id]) for i, _ in spoken
        ]
        text_queries = [Query(i.id, i.prompt) for i, _ in spoken]
        values = kl_between(slm, text_queries, slm, speech_queries, [r for _, r in spoken], batch_size=batch_size)
        out["kl_slm_text_slm_speech"] = statistics.fmean(values) if values else None
        out["n_gap"] = len(values)
    return out
