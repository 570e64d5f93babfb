"""IFEval with lm-evaluation-harness's implementation of Google's instruction checkers.

Strict: the response as is. Loose: also tries it with ``*`` removed and without its first and/or last
line. Prompt level: every instruction followed; instruction level: the share of instructions.
VoiceBench's IFEval score ("final") is the mean of the four: strict and loose, prompt and instruction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from xkd_eval.records import Item, Score

_checkers = None


def _lm_eval_ifeval():
    global _checkers
    if _checkers is None:
        from xkd_eval.scoring.nltk_data import ensure_punkt

        ensure_punkt()  # before lm-eval's import-time download attempt
        from lm_eval.tasks.ifeval import instructions_registry, utils

        try:  # the response-language checker asks langdetect, which samples: unseeded, a short answer
            from langdetect import DetectorFactory  # ("Bonjour!") is French on one call, Albanian on the next

            DetectorFactory.seed = 0
        except ImportError:  # pragma: no cover - lm-eval's ifeval extra brings it
            pass
        _checkers = (utils, instructions_registry)
    return _checkers


def _kwargs_list(raw: Any, n: int) -> list[dict]:
    if isinstance(raw, str):
        raw = json.loads(raw)
    if raw is None:
        raw = [{} for _ in range(n)]
    if not isinstance(raw, list) or len(raw) != n:
        raise ValueError(f"ifeval: 'kwargs' must be a list of {n} objects, one per instruction")
    return [dict(k or {}) for k in raw]


def score_ifeval(item: Item, response: str) -> Score:
    utils, registry = _lm_eval_ifeval()
    instruction_ids = list(item.metadata.get("instruction_id_list") or [])
    if not instruction_ids:
        raise ValueError(f"ifeval: item {item.id!r} has no 'instruction_id_list'")
    unknown = [i for i in instruction_ids if i not in registry.INSTRUCTION_DICT]
    if unknown:
        raise ValueError(f"ifeval: item {item.id!r} names unknown instructions {unknown}")
    example = utils.InputExample(
        key=item.metadata.get("key", item.id),
        instruction_id_list=instruction_ids,
        prompt=item.metadata.get("ifeval_prompt", item.prompt),
        kwargs=_kwargs_list(item.metadata.get("kwargs"), len(instruction_ids)),
    )
    response = response or ""
    strict = utils.test_instruction_following_strict(example, response)
    loose = utils.test_instruction_following_loose(example, response)
    return Score(
        value=1.0 if strict.follow_all_instructions else 0.0,
        correct=bool(strict.follow_all_instructions),
        details={
            "strict_prompt": bool(strict.follow_all_instructions),
            "strict_instructions": [bool(x) for x in strict.follow_instruction_list],
            "loose_prompt": bool(loose.follow_all_instructions),
            "loose_instructions": [bool(x) for x in loose.follow_instruction_list],
        },
    )


def summarize_ifeval(scores: Sequence[Score]) -> dict[str, Any]:
    n = len(scores)

    def mean(values: list[bool]) -> float:
        return 100.0 * sum(values) / len(values) if values else float("nan")

    strict_prompt = mean([s.details["strict_prompt"] for s in scores])
    loose_prompt = mean([s.details["loose_prompt"] for s in scores])
    strict_inst = mean([x for s in scores for x in s.details["strict_instructions"]])
    loose_inst = mean([x for s in scores for x in s.details["loose_instructions"]])
    return {
        "score": (strict_prompt + strict_inst + loose_prompt + loose_inst) / 4,
        "n": n,
        "prompt_level_strict": strict_prompt,
        "instruction_level_strict": strict_inst,
        "prompt_level_loose": loose_prompt,
        "instruction_level_loose": loose_inst,
        "extraction_failures": 0,
        "extraction_failure_rate": 0.0,
        "scale": "percent",
    }
