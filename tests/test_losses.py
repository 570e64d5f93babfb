"""Distillation losses: hand-computed values, independent references, top-k, masking, alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import rel_entr

from xkd_eval.distill.losses import (
    KINDS,
    TopK,
    align_response,
    channel_loss,
    check_vocab_compatible,
    combined_loss,
    divergence,
    response_labels,
    shared_vocab_logits,
)
from xkd_eval.errors import XkdError


def _logits(*probs: list[float]) -> torch.Tensor:
    """[N, V] logits whose softmax is exactly each given distribution."""
    return torch.tensor(probs, dtype=torch.float64).log()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- hand-computed values ----------------------------------------------------------------------------

P = [0.5, 0.5]  # teacher
Q = [0.9, 0.1]  # student


def test_forward_kl_by_hand():
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert expected == pytest.approx(0.5108, abs=1e-4)
    got = divergence(_logits(Q), _logits(P), kind="forward_kl")
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_reverse_kl_by_hand():
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert expected == pytest.approx(0.3681, abs=1e-4)
    assert divergence(_logits(Q), _logits(P), kind="reverse_kl").item() == pytest.approx(expected, rel=1e-9)


def test_jsd_by_hand():
    m = [0.5 * 0.5 + 0.5 * 0.9, 0.5 * 0.5 + 0.5 * 0.1]  # [0.7, 0.3]
    kl_pm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_qm = 0.9 * math.log(0.9 / m[0]) + 0.1 * math.log(0.1 / m[1])
    expected = 0.5 * kl_pm + 0.5 * kl_qm
    assert expected == pytest.approx(0.10175, abs=1e-4)
    assert divergence(_logits(Q), _logits(P), kind="jsd", beta=0.5).item() == pytest.approx(expected, rel=1e-9)
    # beta = 0.2: the mixture puts weight 0.2 on the teacher
    m = [0.2 * 0.5 + 0.8 * 0.9, 0.2 * 0.5 + 0.8 * 0.1]
    expected = 0.2 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.8 * (
        0.9 * math.log(0.9 / m[0]) + 0.1 * math.log(0.1 / m[1])
    )
    assert divergence(_logits(Q), _logits(P), kind="jsd", beta=0.2).item() == pytest.approx(expected, rel=1e-9)


def test_temperature_by_hand():
    # at tau = 2 the student [0.9, 0.1] becomes sqrt-normalised: [3/4, 1/4]; the teacher stays [1/2, 1/2]
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    got = divergence(_logits(Q), _logits(P), kind="forward_kl", temperature=2.0)
    assert got.item() == pytest.approx(4 * kl, rel=1e-9)  # times tau^2
    assert got.item() == pytest.approx(0.57536, abs=1e-4)


def test_mean_over_tokens_and_reductions():
    s = _logits(Q, P)
    t = _logits(P, P)
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert divergence(s, t).item() == pytest.approx(kl / 2, rel=1e-9)
    assert divergence(s, t, reduction="sum").item() == pytest.approx(kl, rel=1e-9)
    assert divergence(s, t, reduction="none").tolist() == pytest.approx([kl, 0.0], abs=1e-12)


# ---- independent references on random logits ---------------------------------------------------------


def _reference(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, kind: str, beta: float, tau: float) -> float:
    """Per-token divergences by F.kl_div (KL kinds) and scipy's rel_entr (JSD), float64, averaged."""
    s, t = s[mask].double(), t[mask].double()
    log_q, log_p = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
    if kind == "forward_kl":
        per = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)  # KL(p || q)
    elif kind == "reverse_kl":
        per = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)  # KL(q || p)
    else:
        p, q = log_p.exp().numpy(), log_q.exp().numpy()
        m = beta * p + (1 - beta) * q
        per = torch.from_numpy(beta * rel_entr(p, m).sum(-1) + (1 - beta) * rel_entr(q, m).sum(-1))
    return float(per.mean()) * tau**2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_matches_reference_on_random_logits(kind, tau):
    g = _gen(1)
    s = torch.randn(3, 7, 50, generator=g) * 3
    t = torch.randn(3, 7, 50, generator=g) * 3
    mask = torch.rand(3, 7, generator=g) > 0.3
    for beta in [0.1, 0.5, 0.9] if kind == "jsd" else [0.5]:
        got = divergence(s, t, mask, kind=kind, beta=beta, temperature=tau)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(_reference(s, t, mask, kind, beta, tau), rel=1e-4, abs=1e-6)


def test_half_precision_inputs_are_computed_in_fp32():
    g = _gen(2)
    s = (torch.randn(4, 30, generator=g) * 4).to(torch.bfloat16)
    t = (torch.randn(4, 30, generator=g) * 4).to(torch.float16)
    got = divergence(s, t, kind="jsd", temperature=2.0)
    assert got.dtype == torch.float32
    ref = divergence(s.double(), t.double(), kind="jsd", temperature=2.0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


# ---- JSD conventions (TRL's generalized_jsd_loss) ------------------------------------------------------


def test_jsd_endpoints_and_limits_follow_trl():
    g = _gen(3)
    s, t = torch.randn(5, 20, generator=g, dtype=torch.float64), torch.randn(5, 20, generator=g, dtype=torch.float64)
    fkl = divergence(s, t, kind="forward_kl").item()
    rkl = divergence(s, t, kind="reverse_kl").item()
    # TRL: beta = 0 is forward KL(teacher || student), beta = 1 is reverse KL(student || teacher)
    assert divergence(s, t, kind="jsd", beta=0.0).item() == pytest.approx(fkl, rel=1e-12)
    assert divergence(s, t, kind="jsd", beta=1.0).item() == pytest.approx(rkl, rel=1e-12)
    # the formula itself: JSD_beta ~ beta * forward KL near 0, ~ (1 - beta) * reverse KL near 1
    eps = 1e-4
    assert divergence(s, t, kind="jsd", beta=eps).item() / eps == pytest.approx(fkl, rel=1e-2)
    assert divergence(s, t, kind="jsd", beta=1 - eps).item() / eps == pytest.approx(rkl, rel=1e-2)


def test_jsd_symmetric_at_half_zero_for_identical_and_bounded():
    g = _gen(4)
    s, t = torch.randn(6, 40, generator=g) * 5, torch.randn(6, 40, generator=g) * 5
    a = divergence(s, t, kind="jsd", beta=0.5)
    b = divergence(t, s, kind="jsd", beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert divergence(s, t, kind="jsd", beta=0.3).item() != pytest.approx(divergence(t, s, kind="jsd", beta=0.3).item())
    assert 0 < a.item() <= math.log(2)
    for kind in KINDS:
        assert divergence(s, s.clone(), kind=kind).item() == pytest.approx(0.0, abs=1e-6)


# ---- top-k teacher -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_topk_with_k_equal_v_matches_full(kind, tau):
    g = _gen(5)
    s = torch.randn(2, 5, 30, generator=g, dtype=torch.float64) * 3
    t = torch.randn(2, 5, 30, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(2, 5, generator=g) > 0.2
    full = divergence(s, t, mask, kind=kind, beta=0.3, temperature=tau)
    perm = torch.argsort(torch.rand(2, 5, 30, generator=g), dim=-1)  # any order of the k tokens
    as_logits = TopK(t.gather(-1, perm), perm)
    as_logprobs = TopK(F.log_softmax(t, -1).gather(-1, perm), perm)  # log-probs at tau 1 work too
    for teacher in (as_logits, as_logprobs, TopK.from_logits(t, 30)):
        got = divergence(s, teacher, mask, kind=kind, beta=0.3, temperature=tau)
        assert got.item() == pytest.approx(full.item(), rel=1e-10)


def test_topk_with_k_below_v_is_sane():
    g = _gen(6)
    v, k = 64, 8
    teacher = torch.randn(40, v, generator=g, dtype=torch.float64) * 2
    student = torch.randn(40, v, generator=g, dtype=torch.float64) * 2
    top = TopK.from_logits(teacher, k)
    for kind in KINDS:
        got = divergence(student, top, kind=kind, reduction="none")
        assert torch.isfinite(got).all() and (got >= -1e-12).all()
    # JSD is bounded by the binary entropy of beta, whatever the support
    beta = 0.3
    bound = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
    assert divergence(student, top, kind="jsd", beta=beta, reduction="none").max().item() <= bound
    # reverse KL restricted to the teacher's k tokens, times the student's mass there, is at most the
    # full reverse KL (chain rule of KL: the within-set part never exceeds the whole)
    log_q = F.log_softmax(student, -1)
    mass = log_q.gather(-1, top.indices).exp().sum(-1)
    restricted = divergence(student, top, kind="reverse_kl", reduction="none")
    full = divergence(student, teacher, kind="reverse_kl", reduction="none")
    assert (mass * restricted <= full + 1e-12).all()


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_topk_equals_dense_teacher_with_tail_ruled_out(kind):
    # forward KL and JSD against the renormalised top-k teacher are exact: they equal the full-vocab
    # computation with the teacher's logits outside its k tokens set to -inf
    g = _gen(17)
    teacher = torch.randn(12, 40, generator=g, dtype=torch.float64) * 2
    student = torch.randn(12, 40, generator=g, dtype=torch.float64) * 2
    top = TopK.from_logits(teacher, 6)
    dense = torch.full_like(teacher, float("-inf")).scatter(-1, top.indices, top.values)
    for beta in (0.1, 0.5, 0.9):
        got = divergence(student, top, kind=kind, beta=beta, temperature=2.0)
        ref = divergence(student, dense, kind=kind, beta=beta, temperature=2.0)
        assert got.item() == pytest.approx(ref.item(), rel=1e-10)


def test_topk_close_to_full_when_teacher_mass_is_in_top_k():
    g = _gen(7)
    v, k = 200, 16
    teacher = torch.randn(30, v, generator=g, dtype=torch.float64)
    teacher[:, :k] += 25.0  # the top k tokens hold all but ~1e-7 of the mass
    student = teacher + 0.3 * torch.randn(30, v, generator=g, dtype=torch.float64)
    top = TopK.from_logits(teacher, k)
    for kind in KINDS:
        full = divergence(student, teacher, kind=kind)
        sparse = divergence(student, top, kind=kind)
        assert sparse.item() == pytest.approx(full.item(), rel=1e-3)


def test_topk_indices_out_of_range_raise():
    with pytest.raises(XkdError, match="student's vocabulary"):
        divergence(torch.randn(2, 10), TopK(torch.randn(2, 3), torch.tensor([[0, 1, 12], [0, 1, 2]])))
    with pytest.raises(XkdError, match="same shape"):
        TopK(torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.long))


# ---- masking, -inf, gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_do_not_change_the_result(kind):
    g = _gen(8)
    s = torch.randn(2, 6, 20, generator=g)
    t = torch.randn(2, 6, 20, generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0]], dtype=torch.bool)
    base = divergence(s, t, mask, kind=kind, temperature=2.0)
    assert base.item() == pytest.approx(divergence(s[mask], t[mask], kind=kind, temperature=2.0).item(), rel=1e-6)
    s2, t2 = s.clone().requires_grad_(), t.clone()
    with torch.no_grad():
        s2[~mask] = float("nan")
        t2[~mask] = 1e30
    got = divergence(s2, t2, mask, kind=kind, temperature=2.0)
    assert got.item() == pytest.approx(base.item(), rel=1e-6)
    got.backward()
    assert (s2.grad[~mask] == 0).all() and torch.isfinite(s2.grad).all()
    # top-k teacher too
    top = TopK.from_logits(t, 5)
    assert divergence(s2, top, mask, kind=kind).item() == pytest.approx(divergence(s, top, mask, kind=kind).item())


def test_empty_mask_gives_zero_with_a_graph():
    s = torch.randn(2, 3, 10, requires_grad=True)
    loss = divergence(s, torch.randn(2, 3, 10), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert (s.grad == 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_minus_inf_logits_give_finite_values_and_gradients(kind):
    g = _gen(9)
    s = torch.randn(4, 12, generator=g)
    t = torch.randn(4, 12, generator=g)
    s[:, -3:] = float("-inf")  # a vocabulary slice masked on both sides
    t[:, -3:] = float("-inf")
    s = s.requires_grad_()
    loss = divergence(s, t, kind=kind, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # a token only the teacher rules out: forward KL and JSD stay finite, reverse KL is truly infinite
    t[:, 0] = float("-inf")
    s.grad = None
    loss = divergence(s, t, kind=kind, temperature=2.0)
    if kind == "reverse_kl":
        assert loss.item() == math.inf
    else:
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    padded = TopK(torch.tensor([[2.0, 1.0, float("-inf")]] * 4), torch.tensor([[1, 2, 3]] * 4))
    s3 = torch.randn(4, 12, requires_grad=True)
    loss = divergence(s3, padded, kind=kind)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s3.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_student_only(kind):
    g = _gen(10)
    s = torch.randn(3, 4, 16, generator=g, requires_grad=True)
    t = torch.randn(3, 4, 16, generator=g, requires_grad=True)
    divergence(s, t, kind=kind, temperature=2.0).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    tk_values = t.detach().topk(4, -1).values.requires_grad_()
    s.grad = None
    divergence(s, TopK(tk_values, t.detach().topk(4, -1).indices), kind=kind).backward()
    assert tk_values.grad is None and s.grad.abs().sum() > 0


def test_forward_kl_gradient_is_softmax_difference():
    g = _gen(11)
    s = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 9, generator=g, dtype=torch.float64)
    tau = 2.0
    divergence(s, t, kind="forward_kl", temperature=tau).backward()
    # d/ds [tau^2 KL(p || softmax(s/tau))] / N = tau * (q - p) / N
    expected = tau * (F.softmax(s.detach() / tau, -1) - F.softmax(t / tau, -1)) / 5
    torch.testing.assert_close(s.grad, expected)


def test_bad_settings_raise():
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    with pytest.raises(XkdError, match="unknown divergence kind"):
        divergence(s, t, kind="kl")
    with pytest.raises(XkdError, match="beta"):
        divergence(s, t, kind="jsd", beta=1.5)
    with pytest.raises(XkdError, match="temperature"):
        divergence(s, t, temperature=0.0)
    with pytest.raises(XkdError, match="mask"):
        divergence(s, t, torch.ones(3, dtype=torch.bool))


# ---- vocabulary ------------------------------------------------------------------------------------


def test_shared_vocab_logits_compares_over_the_tokenizer_ids():
    g = _gen(12)
    s = torch.randn(2, 3, 10, generator=g)
    t = torch.randn(2, 3, 12, generator=g)  # two padding rows
    with pytest.raises(XkdError, match="shared_vocab_logits"):
        divergence(s, t)
    s2, t2 = shared_vocab_logits(s, t)
    assert s2.shape[-1] == t2.shape[-1] == 10
    torch.testing.assert_close(t2, t[..., :10])
    s3, t3 = shared_vocab_logits(s, t, shared_size=8)
    assert divergence(s3, t3).item() == pytest.approx(divergence(s[..., :8], t[..., :8]).item())
    with pytest.raises(XkdError, match="shared_size"):
        shared_vocab_logits(s, t, shared_size=11)


def test_check_vocab_compatible():
    teacher = {"a": 0, "b": 1, "c": 2, "d": 3}
    student = {**teacher, "<|AUDIO|>": 4}  # an added audio token after the text vocabulary is fine
    assert check_vocab_compatible(student, teacher) == 4
    swapped = {"a": 0, "c": 1, "b": 2, "d": 3, "<|AUDIO|>": 4}
    with pytest.raises(XkdError) as err:
        check_vocab_compatible(swapped, teacher)
    msg = str(err.value)
    assert "2 of 4 shared token ids hold different tokens" in msg
    assert "2 of 4 shared tokens have different ids" in msg
    assert "id 1: student 'c' vs teacher 'b'" in msg
    assert "'b': student id 2 vs teacher id 1" in msg
    # a placeholder that reuses a reserved id can be left out of the comparison
    reuse = {"a": 0, "b": 1, "<|AUDIO|>": 2, "d": 3}
    with pytest.raises(XkdError, match="1 of 4 shared token ids"):
        check_vocab_compatible(reuse, teacher)
    assert check_vocab_compatible(reuse, teacher, ignore_tokens={"<|AUDIO|>", "c"}) == 2


def test_check_vocab_compatible_tolerates_clashing_control_tokens():
    """Qwen2.5-Omni's modality markers sit on ids Qwen2.5 gives other control tokens: allowed, and the
    comparison stops below the first of them; text tokens must still agree."""
    text = {"a": 0, "b": 1, "c": 2, "<|im_end|>": 3}
    teacher = {**text, "<|object_ref_start|>": 4, "<|box_start|>": 5}
    student = {**text, "<|AUDIO|>": 4, "<|audio_bos|>": 5, "<|vision_bos|>": 6}
    specials = {"<|im_end|>", "<|object_ref_start|>", "<|box_start|>", "<|AUDIO|>", "<|audio_bos|>", "<|vision_bos|>"}
    with pytest.raises(XkdError, match="2 of 6 shared token ids hold different tokens"):
        check_vocab_compatible(student, teacher)
    assert check_vocab_compatible(student, teacher, special_tokens=specials) == 4
    # a control token that moved is tolerated the same way (below its lower id) ...
    moved = {**text, "<|AUDIO|>": 4, "<|box_start|>": 6}
    assert check_vocab_compatible(moved, teacher, special_tokens=specials) == 4
    # ... but a clash on a text token is still refused
    bad = {"a": 0, "c": 1, "b": 2, "<|im_end|>": 3}
    with pytest.raises(XkdError, match="2 of 4 shared token ids"):
        check_vocab_compatible(bad, teacher, special_tokens=specials)


# ---- cross-prompt alignment ----------------------------------------------------------------------------


def _batch(prompt_lens, resp_lens, pad_side, vocab, g, width):
    """Random logits for rows [prompt | response] padded to ``width``; returns (logits, resp_mask, ids, starts)."""
    b = len(prompt_lens)
    logits = torch.randn(b, width, vocab, generator=g)
    mask = torch.zeros(b, width, dtype=torch.bool)
    ids = torch.zeros(b, width, dtype=torch.long)
    starts = []
    for i, (p, r) in enumerate(zip(prompt_lens, resp_lens, strict=True)):
        offset = width - (p + r) if pad_side == "left" else 0
        mask[i, offset + p : offset + p + r] = True
        starts.append(offset + p)
    return logits, mask, ids, starts


@pytest.mark.parametrize("s_side", ["left", "right"])
@pytest.mark.parametrize("t_side", ["left", "right"])
def test_align_response_equals_hand_slicing(s_side, t_side):
    g = _gen(13)
    resp = [3, 5, 1]
    width_r = max(resp)
    s_logits, s_mask, s_ids, s_starts = _batch([9, 14, 6], resp, s_side, 11, g, 22)  # audio prompts: longer
    t_logits, t_mask, t_ids, t_starts = _batch([2, 4, 3], resp, t_side, 11, g, 10)
    tokens = [torch.randint(0, 11, (r,), generator=g) for r in resp]
    for i, r in enumerate(resp):
        s_ids[i, s_starts[i] : s_starts[i] + r] = tokens[i]
        t_ids[i, t_starts[i] : t_starts[i] + r] = tokens[i]

    s, t, mask = align_response(s_logits, s_mask, t_logits, t_mask, student_input_ids=s_ids, teacher_input_ids=t_ids)
    assert s.shape == (3, width_r, 11) and t.shape == (3, width_r, 11) and mask.shape == (3, width_r)
    for i, r in enumerate(resp):
        # the logits at position start-1 .. start+r-2 predict the r response tokens
        torch.testing.assert_close(s[i, width_r - r :], s_logits[i, s_starts[i] - 1 : s_starts[i] + r - 1])
        torch.testing.assert_close(t[i, width_r - r :], t_logits[i, t_starts[i] - 1 : t_starts[i] + r - 1])
        assert mask[i].tolist() == [False] * (width_r - r) + [True] * r
    labels = response_labels(s_ids, s_mask)
    assert torch.equal(labels, response_labels(t_ids, t_mask))
    for i, r in enumerate(resp):
        assert labels[i, width_r - r :].tolist() == tokens[i].tolist()
        assert (labels[i, : width_r - r] == -100).all()

    # the same logits placed after different prompts: zero divergence once aligned
    t_logits2 = t_logits.clone()
    for i, r in enumerate(resp):
        t_logits2[i, t_starts[i] - 1 : t_starts[i] + r - 1] = s_logits[i, s_starts[i] - 1 : s_starts[i] + r - 1]
    s, t2, mask = align_response(s_logits, s_mask, t_logits2, t_mask)
    assert divergence(s, t2, mask).item() == pytest.approx(0.0, abs=1e-6)

    # a top-k teacher aligns the same way
    _, t_top, _ = align_response(s_logits, s_mask, TopK.from_logits(t_logits, 4), t_mask)
    assert torch.equal(t_top.values, TopK.from_logits(t, 4).values)


def test_align_response_gradients_reach_student_positions():
    g = _gen(14)
    s_logits, s_mask, _, _ = _batch([6, 8], [2, 3], "left", 7, g, 12)
    t_logits, t_mask, _, _ = _batch([2, 2], [2, 3], "right", 7, g, 6)
    s_logits.requires_grad_()
    s, t, mask = align_response(s_logits, s_mask, t_logits, t_mask)
    divergence(s, t, mask).backward()
    predictors = torch.zeros_like(s_mask)
    predictors[:, :-1] = s_mask[:, 1:]
    touched = s_logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, predictors)


def test_align_response_errors():
    g = _gen(15)
    s_logits, s_mask, s_ids, _ = _batch([6, 8], [2, 3], "left", 7, g, 12)
    t_logits, t_mask, t_ids, _ = _batch([2, 2], [2, 4], "right", 7, g, 6)
    with pytest.raises(XkdError, match=r"response lengths differ.*row 1: student 3 vs teacher 4"):
        align_response(s_logits, s_mask, t_logits, t_mask)
    t_logits, t_mask, t_ids, _ = _batch([2, 2], [2, 3], "right", 7, g, 6)
    t_ids[t_mask] = 1
    with pytest.raises(XkdError, match="response tokens differ"):
        align_response(s_logits, s_mask, t_logits, t_mask, student_input_ids=s_ids, teacher_input_ids=t_ids)
    no_prompt = torch.zeros_like(t_mask)
    no_prompt[0, :2] = True
    no_prompt[1, :3] = True
    with pytest.raises(XkdError, match="position 0"):
        align_response(s_logits, s_mask, t_logits, no_prompt)


# ---- channel and combined losses -----------------------------------------------------------------------


def test_channel_loss_defaults_and_parts():
    g = _gen(16)
    s = torch.randn(2, 4, 9, generator=g, requires_grad=True)
    t = torch.randn(2, 4, 9, generator=g)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    labels = torch.randint(0, 9, (2, 4), generator=g).masked_fill(~mask, -100)
    total, parts = channel_loss(s, labels, t, mask)
    ce = F.cross_entropy(s[mask], labels[mask])
    kl = F.kl_div(
        F.log_softmax(s[mask] / 2, -1), F.log_softmax(t[mask] / 2, -1), reduction="batchmean", log_target=True
    )
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert parts["kd"] == pytest.approx(4 * kl.item(), rel=1e-5)  # tau^2 = 4, lambda = 0.5
    assert total.item() == pytest.approx(ce.item() + 0.5 * 4 * kl.item(), rel=1e-5)
    assert set(parts) == {"ce", "kd", "total"} and all(isinstance(v, float) for v in parts.values())
    total.backward()
    assert s.grad is not None
    total2, parts2 = channel_loss(s, labels, TopK.from_logits(t, 9), mask, lam=1.0, temperature=1.0, kind="jsd")
    assert parts2["total"] == pytest.approx(parts2["ce"] + parts2["kd"], rel=1e-6)


def test_channel_loss_sums_and_compares_over_the_shared_vocabulary():
    # what KDLoss trains with: flattened response tokens, sums, a student vocabulary larger than the teacher's
    g = _gen(17)
    s = torch.randn(5, 11, generator=g)
    t = torch.randn(5, 9, generator=g)
    labels = torch.randint(0, 11, (5,), generator=g)
    total, parts = channel_loss(s, labels, t, lam=0.5, temperature=2.0, shared_size=9, reduction="sum")
    ce = F.cross_entropy(s, labels, reduction="sum")  # over the student's whole vocabulary
    kl = F.kl_div(F.log_softmax(s[:, :9] / 2, -1), F.log_softmax(t / 2, -1), reduction="sum", log_target=True)
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-5) and parts["kd"] == pytest.approx(4 * kl.item(), rel=1e-5)
    assert total.item() == pytest.approx(ce.item() + 2 * kl.item(), rel=1e-5)
    mean, _ = channel_loss(s, labels, t, shared_size=9)
    assert mean.item() == pytest.approx(total.item() / 5, rel=1e-5)
    with pytest.raises(XkdError, match="reduction"):
        channel_loss(s, labels, t, shared_size=9, reduction="none")


def test_combined_loss():
    a, b = torch.tensor(2.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    total, parts = combined_loss({"t2t": (a, 1.0), "s2t": (b, 0.5)})
    assert total.item() == pytest.approx(3.5)
    assert parts == {"t2t": 2.0, "s2t": 3.0, "total": 3.5}
    total.backward()
    assert a.grad.item() == 1.0 and b.grad.item() == 0.5
    with pytest.raises(XkdError):
        combined_loss({})
    with pytest.raises(XkdError, match="weight"):
        combined_loss({"t2t": (a, -1.0)})


def test_reference_helper_agrees_with_numpy_by_hand():
    # guard the test's own reference: scipy rel_entr on the hand example
    p, q = np.array(P), np.array(Q)
    assert rel_entr(p, q).sum() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
