"""Distillation losses as pure functions: divergences, vocabulary checks, cross-prompt alignment.

Cross-modal KD compares the teacher (text LLM, reading the text prompt) and the student (speech LLM,
hearing the spoken prompt) on the *same* response tokens that follow two *different* prompts. The
pieces, each testable without a model:

- :func:`align_response` gathers, in each sequence, the logits that predict each response token and
  right-aligns them (by position from the end of the response) into ``[B, R, V]`` tensors with a
  shared mask; :func:`response_labels` gives the matching ``[B, R]`` labels.
- :func:`divergence` is the token-level divergence (forward KL, reverse KL or generalised JSD) with
  temperature, against full teacher logits or a :class:`TopK` teacher (a cache of its k best tokens).
- :func:`channel_loss` is one channel's ``CE(response) + λ·τ²·D_τ(teacher, student)`` (the paper's
  λ = 0.5, τ = 2); :func:`combined_loss` weights the T→T and S→T channels into one loss.
- :func:`check_vocab_compatible` and :func:`shared_vocab_logits` make sure token ids mean the same
  thing on both sides before any of this is computed.

Conventions (p = teacher, q = student, both softmaxed at temperature τ, in fp32):

- ``forward_kl`` = KL(p ‖ q) = Σ p·(log p − log q) (mode-covering; the paper's loss);
  ``reverse_kl`` = KL(q ‖ p) (mode-seeking);
  ``jsd`` = JSD_β = β·KL(p ‖ m) + (1−β)·KL(q ‖ m) with m = β·p + (1−β)·q. This is TRL's
  ``GKDTrainer.generalized_jsd_loss`` convention (mixture weight β on the teacher), including its
  end points: β = 0 *is* forward KL and β = 1 *is* reverse KL (TRL special-cases them, and so do we).
  Note that the formula itself tends to 0 at both ends: JSD_β ≈ β·KL(p ‖ q) as β → 0 and
  ≈ (1−β)·KL(q ‖ p) as β → 1, so small β behaves like a scaled forward KL, which is what the GKD
  paper's "β → 0 is like forward KL" means. At β = 0.5 it is the symmetric Jensen-Shannon divergence
  (bounded by log 2).
- Every divergence is multiplied by τ² (Hinton et al.'s scaling, which keeps gradient magnitudes
  comparable across temperatures; TRL's function does not scale). It is averaged over the tokens
  where ``mask`` is true. Masked-out positions are never read, so padding may hold anything.
- The teacher is always detached: gradients flow to the student logits only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from xkd_eval.errors import XkdError

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd"]
KINDS: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")
IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "KINDS",
    "TopK",
    "align_response",
    "channel_loss",
    "check_vocab_compatible",
    "combined_loss",
    "divergence",
    "response_labels",
    "shared_vocab_logits",
]


# --------------------------------------------------------------------------------------------------
# Top-k teacher
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopK:
    """A teacher given by its k most likely tokens per position (a sparse logits cache).

    ``values[..., j]`` is the teacher's logit *or* log-probability (at temperature 1) of token
    ``indices[..., j]``; either works, because the teacher distribution is renormalised over its k
    tokens (``softmax(values / τ)`` over the last axis), which removes any per-position constant.
    Positions may carry fewer than k real entries: pad ``values`` with ``-inf`` (any in-range index).
    Indices must be distinct within a position and are ids of the *student's* vocabulary too.
    """

    values: torch.Tensor  # [..., k] float
    indices: torch.Tensor  # [..., k] integer token ids

    def __post_init__(self) -> None:
        if self.values.shape != self.indices.shape:
            raise XkdError(
                f"TopK values and indices must have the same shape, got {tuple(self.values.shape)} "
                f"and {tuple(self.indices.shape)}"
            )
        if self.values.dim() < 1 or self.values.shape[-1] < 1:
            raise XkdError(f"TopK needs at least one token per position, got shape {tuple(self.values.shape)}")
        if self.indices.dtype.is_floating_point or self.indices.dtype == torch.bool:
            raise XkdError(f"TopK indices must be integer token ids, got dtype {self.indices.dtype}")

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> TopK:
        """The k largest logits of each position (what a teacher cache stores)."""
        values, indices = torch.topk(logits, k, dim=-1)
        return cls(values, indices)

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """The positions' shape: ``values.shape[:-1]``."""
        return self.values.shape[:-1]

    def __getitem__(self, key) -> TopK:
        """Index the positions (not the k axis), e.g. ``topk[mask]`` or ``topk[rows, cols]``."""
        return TopK(self.values[key], self.indices[key])

    def detach(self) -> TopK:
        return TopK(self.values.detach(), self.indices.detach())


Teacher = torch.Tensor | TopK


# --------------------------------------------------------------------------------------------------
# Divergences
# --------------------------------------------------------------------------------------------------


def _check_settings(kind: str, beta: float, temperature: float) -> None:
    if kind not in KINDS:
        raise XkdError(f"unknown divergence kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0.0 <= beta <= 1.0:
        raise XkdError(f"beta must be in [0, 1], got {beta}")
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise XkdError(f"temperature must be a positive number, got {temperature}")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (half and bfloat16 logits are cast; fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _kl_terms(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ a·(log a − log b) over the last axis, with 0·log 0 = 0 (entries where a = 0 contribute nothing).

    Written so that ``-inf`` log-probabilities (masked vocabulary entries, padded top-k slots) give
    neither NaN values nor NaN gradients.
    """
    a = log_a.exp()
    present = a > 0
    diff = torch.where(present, log_a, 0.0) - torch.where(present, log_b, 0.0)
    return (a * diff).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """log(β·p + (1−β)·q), stably; entries where both are zero get a finite placeholder (never read,
    since both KL terms skip them) so that no NaN reaches the gradients."""
    dead = torch.isneginf(log_p) & torch.isneginf(log_q)
    return torch.logaddexp(
        torch.where(dead, 0.0, log_p) + math.log(beta), torch.where(dead, 0.0, log_q) + math.log1p(-beta)
    )


def _per_token_dense(s: torch.Tensor, t: torch.Tensor, kind: str, beta: float, temperature: float) -> torch.Tensor:
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl_terms(log_p, log_q)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl_terms(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl_terms(log_p, log_m) + (1.0 - beta) * _kl_terms(log_q, log_m)


def _per_token_topk(s: torch.Tensor, t: TopK, kind: str, beta: float, temperature: float) -> torch.Tensor:
    vocab = s.shape[-1]
    idx = t.indices.long()
    if idx.numel():
        lo, hi = torch.stack(torch.aminmax(idx)).tolist()  # one device sync
        if lo < 0 or hi >= vocab:
            raise XkdError(
                f"top-k teacher token ids must lie in [0, {vocab}) (the student's vocabulary), "
                f"got ids from {lo} to {hi}"
            )
    log_q_full = F.log_softmax(s / temperature, dim=-1)
    log_q = log_q_full.gather(-1, idx)  # student log-probs (normalised over the full vocabulary)
    log_p = F.log_softmax(_upcast(t.values) / temperature, dim=-1)  # teacher renormalised over its k
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        # exact KL(p̃ ‖ q): p̃ is zero outside its k tokens, so they are the only terms
        return _kl_terms(log_p, log_q)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        # KL(q ‖ p̃) is infinite as soon as the student puts mass outside the teacher's k tokens;
        # the finite choice is to restrict the student to those tokens too: KL(q̃ ‖ p̃) (padded
        # slots, with teacher value -inf, are left out like the tokens outside the k).
        log_q_k = log_q.masked_fill(torch.isneginf(log_p), float("-inf"))
        log_q_k = log_q_k - torch.logsumexp(log_q_k, dim=-1, keepdim=True)
        return _kl_terms(log_q_k, log_p)
    # Exact JSD against p̃: outside the k tokens m = (1−β)·q, so each tail token contributes
    # q·log(q / ((1−β)·q)) = −q·log(1−β) to KL(q ‖ m); summed, the student's tail mass times −log(1−β).
    log_m = _log_mixture(log_p, log_q, beta)
    tail = -torch.expm1(torch.logsumexp(log_q, dim=-1).clamp(max=0.0))
    kl_q_m = _kl_terms(log_q, log_m) + tail * -math.log1p(-beta)
    return beta * _kl_terms(log_p, log_m) + (1.0 - beta) * kl_q_m


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: Teacher,
    mask: torch.Tensor | None = None,
    *,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Token-level divergence between teacher and student next-token distributions, times τ².

    Args:
        student_logits: ``[..., V]`` (half / bfloat16 are cast to fp32 inside; fp64 stays fp64).
        teacher_logits: ``[..., V]`` full logits (same V as the student: see
            :func:`shared_vocab_logits`), or a :class:`TopK` with positions shaped ``[...]``.
        mask: ``[...]`` bool, true where the token counts; None counts every position.
        kind: ``"forward_kl"`` KL(teacher ‖ student), ``"reverse_kl"`` KL(student ‖ teacher), or
            ``"jsd"`` the generalised JSD with mixture ``m = β·teacher + (1−β)·student`` (see the
            module docstring; β = 0 / 1 are exactly forward / reverse KL, as in TRL).
        beta: the JSD's β in [0, 1]; ignored by the KL kinds.
        temperature: τ > 0; both distributions are ``softmax(logits / τ)`` and the result is × τ².
        reduction: ``"mean"`` over masked tokens (0 when there are none), ``"sum"``, or ``"none"``
            (the per-token values of the masked positions, flattened, in row-major order).

    With a :class:`TopK` teacher, the teacher distribution is renormalised over its k tokens and the
    student's log-probs (normalised over its full vocabulary) are gathered at those ids. Forward KL
    and JSD are then exact divergences against that renormalised teacher (JSD accounts for the
    student's mass outside the k tokens in closed form). Reverse KL against it would be infinite
    whenever the student puts mass elsewhere, so it is computed with the student renormalised over
    the same k tokens. With k = V every kind equals the full-vocabulary result.
    """
    _check_settings(kind, beta, temperature)
    positions = student_logits.shape[:-1]
    if isinstance(teacher_logits, TopK):
        if teacher_logits.shape != positions:
            raise XkdError(
                f"top-k teacher positions {tuple(teacher_logits.shape)} do not match the student's {tuple(positions)}"
            )
    elif teacher_logits.shape != student_logits.shape:
        hint = ""
        if teacher_logits.shape[:-1] == positions:
            hint = " (vocabulary sizes differ: compare over the shared ids with shared_vocab_logits)"
        raise XkdError(
            f"teacher logits {tuple(teacher_logits.shape)} do not match student logits "
            f"{tuple(student_logits.shape)}{hint}"
        )
    if mask is None:
        mask = torch.ones(positions, dtype=torch.bool, device=student_logits.device)
    elif mask.shape != positions:
        raise XkdError(f"mask {tuple(mask.shape)} does not match the logits' positions {tuple(positions)}")
    mask = mask.bool()

    # select the counted positions first: padding is never read, and the fp32 copies stay small
    s = _upcast(student_logits[mask])
    if isinstance(teacher_logits, TopK):
        per_token = _per_token_topk(s, teacher_logits[mask].detach(), kind, beta, temperature)
    else:
        t = _upcast(teacher_logits[mask].detach())
        per_token = _per_token_dense(s, t, kind, beta, temperature)
    per_token = per_token * temperature**2

    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / max(per_token.shape[0], 1)
    raise XkdError(f"unknown reduction {reduction!r}; choose mean, sum or none")


# --------------------------------------------------------------------------------------------------
# Vocabulary alignment
# --------------------------------------------------------------------------------------------------


def shared_vocab_logits(
    student_logits: torch.Tensor, teacher_logits: Teacher, shared_size: int | None = None
) -> tuple[torch.Tensor, Teacher]:
    """Both logits restricted to the first ``shared_size`` token ids (default ``min(V_s, V_t)``).

    For teacher and student that share a tokenizer but whose output embeddings differ in size
    (padding rows, e.g. 151936 vs 152064): the ids beyond the tokenizer mean nothing, so compare over
    the tokenizer's ids only; pass ``shared_size`` (as returned by :func:`check_vocab_compatible`)
    to also drop padding rows both happen to have. Both distributions are then normalised over the
    shared ids. A :class:`TopK` teacher already speaks in token ids and is returned unchanged.
    """
    v_s = student_logits.shape[-1]
    if isinstance(teacher_logits, TopK):
        n = v_s if shared_size is None else shared_size
        if not 0 < n <= v_s:
            raise XkdError(f"shared_size {shared_size} must be in [1, {v_s}] (student vocabulary {v_s})")
        return student_logits[..., :n], teacher_logits
    v_t = teacher_logits.shape[-1]
    n = min(v_s, v_t) if shared_size is None else shared_size
    if not 0 < n <= min(v_s, v_t):
        raise XkdError(
            f"shared_size {shared_size} must be in [1, {min(v_s, v_t)}] (student vocabulary {v_s}, teacher {v_t})"
        )
    return student_logits[..., :n], teacher_logits[..., :n]


def _examples(items: list[str], limit: int = 5) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_vocab_compatible(
    student_vocab: Mapping[str, int],
    teacher_vocab: Mapping[str, int],
    *,
    ignore_tokens: Collection[str] = (),
    special_tokens: Collection[str] = (),
) -> int:
    """Check that token ids mean the same thing for student and teacher; return the shared size.

    Distillation compares the two next-token distributions id by id, so every id both vocabularies
    define must hold the same token, and every token both define must have the same id (e.g.
    ``tokenizer.get_vocab()`` of each). Ids that only one side has (a speech LLM's added audio
    tokens, appended after the text vocabulary) are allowed; ``ignore_tokens`` leaves named tokens
    out of the comparison (say, an audio placeholder that reuses a reserved id).

    A disagreement between two ``special_tokens`` (added control tokens, not text) is allowed too: a
    speech LLM's modality markers often take ids its base tokenizer gave to other control tokens
    (Qwen2.5-Omni's ``<|AUDIO|>`` is Qwen2.5's ``<|object_ref_start|>``, id 151646). Responses are text,
    so the comparison then stops below the first such id.

    Returns the number of leading ids ``0 .. n−1`` both vocabularies define and agree on (pass it as
    ``shared_size`` to :func:`shared_vocab_logits`). Raises :class:`XkdError` saying how many ids and
    tokens differ, with examples, before any training step is spent on meaningless targets.
    """
    ignored = set(ignore_tokens)
    s_by_id = {i: tok for tok, i in student_vocab.items() if tok not in ignored}
    t_by_id = {i: tok for tok, i in teacher_vocab.items() if tok not in ignored}
    common_ids = sorted(s_by_id.keys() & t_by_id.keys())
    id_clash = [i for i in common_ids if s_by_id[i] != t_by_id[i]]
    common_tokens = sorted((student_vocab.keys() & teacher_vocab.keys()) - ignored)
    moved = [tok for tok in common_tokens if student_vocab[tok] != teacher_vocab[tok]]
    moved.sort(key=lambda tok: teacher_vocab[tok])
    special = set(special_tokens)
    tolerated = [i for i in id_clash if s_by_id[i] in special and t_by_id[i] in special]
    tolerated += [min(student_vocab[tok], teacher_vocab[tok]) for tok in moved if tok in special]
    id_clash = [i for i in id_clash if not (s_by_id[i] in special and t_by_id[i] in special)]
    moved = [tok for tok in moved if tok not in special]

    if id_clash or moved:
        lines = [
            f"student and teacher tokenizers disagree: {len(id_clash)} of {len(common_ids)} shared token ids "
            f"hold different tokens and {len(moved)} of {len(common_tokens)} shared tokens have different ids."
        ]
        if id_clash:
            lines.append(
                "Ids: "
                + _examples([f"id {i}: student {s_by_id[i]!r} vs teacher {t_by_id[i]!r}" for i in id_clash])
                + "."
            )
        if moved:
            lines.append(
                "Tokens: "
                + _examples(
                    [f"{tok!r}: student id {student_vocab[tok]} vs teacher id {teacher_vocab[tok]}" for tok in moved]
                )
                + "."
            )
        lines.append(
            "Token-level distillation needs one tokenizer on both sides: use a student built on the "
            "teacher's tokenizer, or map the vocabularies first."
        )
        raise XkdError(" ".join(lines))

    n = 0
    while n in s_by_id and n in t_by_id:
        n += 1
    n = min([n, *tolerated])
    if n == 0:
        raise XkdError("student and teacher vocabularies share no token ids starting at id 0")
    return n


# --------------------------------------------------------------------------------------------------
# Cross-prompt alignment
# --------------------------------------------------------------------------------------------------


def _response_index(response_mask: torch.Tensor, who: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a ``[B, L]`` response mask: the number of response tokens per row, and the (row, position)
    of every response token with its rank from the end of the response (0 = last token)."""
    if response_mask.dim() != 2:
        raise XkdError(f"the {who} response mask must be [batch, length], got shape {tuple(response_mask.shape)}")
    m = response_mask.bool()
    if bool(m[:, 0].any()):
        rows = m[:, 0].nonzero().flatten().tolist()
        raise XkdError(
            f"the {who} response starts at position 0 in rows {rows}: no logit predicts the first token of a "
            "sequence, so a prompt (at least one token) must precede the response"
        )
    lengths = m.sum(dim=1)
    from_end = m.flip(1).cumsum(1).flip(1) - 1
    rows, pos = m.nonzero(as_tuple=True)
    return lengths, torch.stack([rows, pos]), from_end[rows, pos]


def _right_aligned_index(
    response_mask: torch.Tensor, width: int, who: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, width]`` positions of the logits that predict each response token (right-aligned), the
    positions of the tokens themselves, and the per-row lengths."""
    lengths, (rows, pos), from_end = _response_index(response_mask, who)
    cols = width - 1 - from_end
    predictors = torch.zeros(response_mask.shape[0], width, dtype=torch.long, device=response_mask.device)
    tokens = torch.zeros_like(predictors)
    predictors[rows, cols] = pos - 1
    tokens[rows, cols] = pos
    return predictors, tokens, lengths


def _gather_positions(logits: Teacher, index: torch.Tensor) -> Teacher:
    rows = torch.arange(index.shape[0], device=index.device)[:, None]
    return logits[rows, index]


def align_response(
    student_logits: torch.Tensor,
    student_response_mask: torch.Tensor,
    teacher_logits: Teacher,
    teacher_response_mask: torch.Tensor,
    *,
    student_input_ids: torch.Tensor | None = None,
    teacher_input_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Teacher, torch.Tensor]:
    """Gather the logits that predict each response token, right-aligned, from two differently
    prompted sequences.

    Args:
        student_logits: ``[B, L_s, V]`` (e.g. audio prompt + response).
        student_response_mask: ``[B, L_s]`` bool, true at the response *tokens*.
        teacher_logits: ``[B, L_t, V]`` or a :class:`TopK` over ``[B, L_t]`` positions (text prompt +
            the same response).
        teacher_response_mask: ``[B, L_t]`` bool, true at the response tokens.
        student_input_ids / teacher_input_ids: optional ``[B, L]`` ids; when both are given, the
            response tokens are also checked to be identical.

    Returns ``(s, t, mask)``: ``s`` ``[B, R, V]``, ``t`` ``[B, R, V]`` (or a :class:`TopK` over
    ``[B, R]``) and ``mask`` ``[B, R]`` bool, where ``R`` is the longest response in the batch. The
    response token at position i is predicted by the logits at position i−1; column ``R − 1 − j``
    holds the predictor of the j-th response token from the end, so each row's response occupies its
    last ``n_b`` columns (mask true there) whatever the padding side and prompt lengths. Columns
    outside the mask hold arbitrary logits. Raises :class:`XkdError` when a row's response lengths
    (or, given ids, tokens) differ between student and teacher.
    """
    if student_response_mask.shape != student_logits.shape[:2]:
        raise XkdError(
            f"student response mask {tuple(student_response_mask.shape)} does not match student logits "
            f"{tuple(student_logits.shape)}"
        )
    t_positions = teacher_logits.shape if isinstance(teacher_logits, TopK) else teacher_logits.shape[:-1]
    if teacher_response_mask.shape != t_positions[:2]:
        raise XkdError(
            f"teacher response mask {tuple(teacher_response_mask.shape)} does not match teacher positions "
            f"{tuple(t_positions)}"
        )
    if student_response_mask.shape[0] != teacher_response_mask.shape[0]:
        raise XkdError(
            f"student and teacher batches differ: {student_response_mask.shape[0]} vs "
            f"{teacher_response_mask.shape[0]} rows"
        )
    s_len = student_response_mask.bool().sum(1)
    t_len = teacher_response_mask.bool().sum(1)
    bad = (s_len != t_len).nonzero().flatten().tolist()
    if bad:
        detail = ", ".join(f"row {b}: student {int(s_len[b])} vs teacher {int(t_len[b])}" for b in bad[:5])
        raise XkdError(
            f"response lengths differ between student and teacher in {len(bad)} row(s) ({detail}): both must be "
            "scored on the same response tokens; tokenize the response once and append it to both prompts"
        )
    width = int(s_len.max()) if s_len.numel() else 0
    s_pred, s_tok, _ = _right_aligned_index(student_response_mask, width, "student")
    t_pred, t_tok, _ = _right_aligned_index(teacher_response_mask, width, "teacher")
    mask = torch.arange(width, device=s_len.device)[None, :] >= (width - s_len)[:, None]

    if student_input_ids is not None and teacher_input_ids is not None:
        s_ids = torch.gather(student_input_ids, 1, s_tok.to(student_input_ids.device))
        t_ids = torch.gather(teacher_input_ids, 1, t_tok.to(teacher_input_ids.device)).to(s_ids.device)
        differs = ((s_ids != t_ids) & mask.to(s_ids.device)).any(1).nonzero().flatten().tolist()
        if differs:
            raise XkdError(
                f"the response tokens differ between student and teacher in {len(differs)} row(s) "
                f"(rows {differs[:10]}): both must be scored on the same response token ids"
            )

    s = _gather_positions(student_logits, s_pred.to(student_logits.device))
    t_device = teacher_logits.values.device if isinstance(teacher_logits, TopK) else teacher_logits.device
    t = _gather_positions(teacher_logits, t_pred.to(t_device))
    return s, t, mask


def response_labels(input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The response token ids, right-aligned like :func:`align_response`, ``-100`` elsewhere: ``[B, R]``.

    ``response_labels(ids, mask)[b, c]`` is the token that ``align_response(...)[0][b, c]`` predicts.
    """
    if input_ids.shape != response_mask.shape:
        raise XkdError(f"input ids {tuple(input_ids.shape)} and response mask {tuple(response_mask.shape)} differ")
    lengths = response_mask.bool().sum(1)
    width = int(lengths.max()) if lengths.numel() else 0
    _, tokens, _ = _right_aligned_index(response_mask, width, "response")
    labels = torch.gather(input_ids, 1, tokens.to(input_ids.device))
    valid = torch.arange(width, device=input_ids.device)[None, :] >= (width - lengths.to(input_ids.device))[:, None]
    return labels.masked_fill(~valid, IGNORE_INDEX)


# --------------------------------------------------------------------------------------------------
# Channel and combined losses
# --------------------------------------------------------------------------------------------------


def _floats(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Scalars to Python floats with one device sync."""
    numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
    return dict(zip(values.keys(), numbers, strict=True))


def channel_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits_aligned: Teacher,
    mask: torch.Tensor | None = None,
    *,
    lam: float = 0.5,
    temperature: float = 2.0,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    shared_size: int | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """One channel's loss: ``CE(response) + λ·τ²·D_τ(teacher, student)`` (paper: λ = 0.5, τ = 2); the
    loss ``KDLoss`` trains with, channel by channel.

    All inputs are aligned (as returned by :func:`align_response` / :func:`response_labels`), so the
    logits at ``[..., c]`` predict ``labels[..., c]``; no shift happens here. CE is at temperature 1 over
    the student's whole vocabulary, on the tokens whose label is not ``-100``; the divergence is
    ``divergence(..., temperature=τ)``, which already includes the τ² factor, over ``mask`` (default: the
    labelled tokens) and, with ``shared_size``, over the ids the two vocabularies share
    (:func:`shared_vocab_logits`). ``reduction``: ``"mean"`` per counted token, or ``"sum"`` (a training
    step divides by all its micro-batches' tokens).

    Returns ``(total, parts)`` with ``parts = {"ce", "kd", "total"}`` as floats for logging, where
    ``kd`` is the τ²-scaled divergence (the term λ multiplies).
    """
    if lam < 0 or not math.isfinite(lam):
        raise XkdError(f"lam must be a non-negative number, got {lam}")
    if reduction not in ("mean", "sum"):
        raise XkdError(f"unknown reduction {reduction!r}; choose mean or sum")
    if labels.shape != student_logits.shape[:-1]:
        raise XkdError(f"labels {tuple(labels.shape)} do not match student logits {tuple(student_logits.shape)}")
    valid = labels != IGNORE_INDEX
    ce = F.cross_entropy(_upcast(student_logits[valid]), labels[valid], reduction="sum")
    if reduction == "mean":
        ce = ce / valid.sum().clamp(min=1)
    student_kd, teacher_kd = student_logits, teacher_logits_aligned
    if shared_size is not None:
        student_kd, teacher_kd = shared_vocab_logits(student_logits, teacher_logits_aligned, shared_size)
    kd = divergence(
        student_kd,
        teacher_kd,
        valid if mask is None else mask,
        kind=kind,
        beta=beta,
        temperature=temperature,
        reduction=reduction,
    )
    total = ce + lam * kd
    return total, _floats({"ce": ce, "kd": kd, "total": total})


def combined_loss(channels: Mapping[str, tuple[torch.Tensor, float]]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum ``Σ weight·loss`` of channel losses (e.g. ``{"t2t": (l1, 1.0), "s2t": (l2, 1.0)}``).

    The weights are not renormalised. Returns ``(total, parts)`` with each channel's unweighted
    loss and ``"total"`` as floats.
    """
    if not channels:
        raise XkdError("combined_loss needs at least one channel")
    if "total" in channels:
        raise XkdError("a channel may not be named 'total' (it names the combined loss)")
    total = None
    for name, (loss, weight) in channels.items():
        if weight < 0 or not math.isfinite(weight):
            raise XkdError(f"channel {name!r} has weight {weight}; weights must be non-negative numbers")
        if loss.numel() != 1:
            raise XkdError(f"channel {name!r} loss must be a scalar, got shape {tuple(loss.shape)}")
        term = weight * loss.reshape(())
        total = term if total is None else total + term
    parts = _floats({**{name: loss for name, (loss, _) in channels.items()}, "total": total})
    return total, parts
