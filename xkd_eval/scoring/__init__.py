"""Scorers: pure functions (item, response) -> Score, registered by name.

``mcq``, ``bbh`` and ``refusal`` have an official-compatible mode (``compat="voicebench"``) and a
robust one; ``ifeval`` uses lm-evaluation-harness's IFEval checkers; ``mmau`` is MMAU's token-set
match; ``qa`` is PEDANT's reference-in-answer rule; ``open`` asks a judge LLM (opt-in).
"""

from __future__ import annotations

from xkd_eval.registry import Registry
from xkd_eval.scoring.base import COMPAT_MODES, ScorerSpec, summarize_binary
from xkd_eval.scoring.bbh import score_bbh
from xkd_eval.scoring.ifeval import score_ifeval, summarize_ifeval
from xkd_eval.scoring.mcq import score_mcq
from xkd_eval.scoring.mmau import score_mmau
from xkd_eval.scoring.open_judge import score_open, summarize_open
from xkd_eval.scoring.overall import voicebench_overall
from xkd_eval.scoring.qa import score_qa, summarize_qa
from xkd_eval.scoring.refusal import score_refusal

SCORERS: Registry[ScorerSpec] = Registry("scorer")
for _spec in (
    ScorerSpec("mcq", score_mcq, "4-option multiple choice, reference A-D", ("reference",), COMPAT_MODES, "voicebench"),
    ScorerSpec(
        "bbh",
        score_bbh,
        "VoiceBench BBH: yes/no and (A)/(B) by subtask",
        ("reference", "id"),
        COMPAT_MODES,
        "voicebench",
    ),
    ScorerSpec(
        "ifeval",
        score_ifeval,
        "IFEval instruction following (lm-eval checkers)",
        ("prompt", "instruction_id_list", "kwargs"),
        summarize=summarize_ifeval,
    ),
    ScorerSpec("refusal", score_refusal, "refusal of harmful requests (higher is safer)", (), COMPAT_MODES, "robust"),
    ScorerSpec("mmau", score_mmau, "MMAU token-set answer match", ("choices", "answer")),
    ScorerSpec(
        "qa", score_qa, "short answer: normalised reference in the answer", ("reference",), summarize=summarize_qa
    ),
    ScorerSpec(
        "open",
        score_open,
        "open-ended, judge LLM scores 1-5",
        ("prompt",),
        summarize=summarize_open,
        binary=False,
        unit="1-5",
    ),
):
    SCORERS.add(_spec.name, _spec, aliases=("harm",) if _spec.name == "refusal" else ())


def get_scorer(name: str) -> ScorerSpec:
    return SCORERS.get(name)


__all__ = ["SCORERS", "ScorerSpec", "get_scorer", "summarize_binary", "voicebench_overall"]

from xkd_eval.scoring.wer import WER_SPEC  # noqa: E402  (the built-in listen subset)

SCORERS.add(WER_SPEC.name, WER_SPEC)
