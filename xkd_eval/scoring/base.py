"""The scorer contract: a pure function (item, response) -> Score, plus how scores aggregate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from xkd_eval.records import Item, Score

COMPAT_MODES = ("voicebench", "robust")


class ScoreFn(Protocol):
    def __call__(self, item: Item, response: str, **options: Any) -> Score: ...


def summarize_binary(scores: Sequence[Score]) -> dict[str, Any]:
    """Accuracy in percent over all items; an extraction failure counts as wrong and is reported.

    Where the official VoiceBench code draws a random letter, we count a failure instead: the score is
    deterministic, and the failure rate says how much a lucky guess could have added.
    """
    n = len(scores)
    failures = sum(s.failed for s in scores)
    correct = sum(bool(s.correct) for s in scores)
    return {
        "score": 100.0 * correct / n if n else float("nan"),
        "n": n,
        "extraction_failures": failures,
        "extraction_failure_rate": 100.0 * failures / n if n else float("nan"),
        "scale": "percent",
    }


@dataclass(frozen=True)
class ScorerSpec:
    name: str
    fn: ScoreFn = field(repr=False)
    description: str
    required_fields: tuple[str, ...] = ()  # record fields `xkd-eval score` needs besides `response`
    compat_modes: tuple[str, ...] = ()
    default_compat: str | None = None
    summarize: Callable[[Sequence[Score]], dict[str, Any]] = field(default=summarize_binary, repr=False)
    binary: bool = True  # False: graded (judge 1-5, 1 - WER), paired tests use Wilcoxon
    unit: str = "percent"  # how scores are reported: "percent" (values in [0, 1] x 100) or "1-5" (judges)

    def score(self, item: Item, response: str, *, compat: str | None = None, **options: Any) -> Score:
        if self.compat_modes:
            mode = compat or self.default_compat
            if mode not in self.compat_modes:
                raise ValueError(f"scorer {self.name!r}: compat must be one of {self.compat_modes}, got {mode!r}")
            options["compat"] = mode
        elif compat not in (None, "robust", "voicebench"):
            raise ValueError(f"scorer {self.name!r} has no compat mode {compat!r}")
        return self.fn(item, response, **options)
