"""Paired statistics over per-item scores: bootstrap CIs, exact McNemar, Wilcoxon, answer agreement.

Every function is pure. The bootstrap ones take a ``seed`` so that a rerun of the same table gives the
same intervals, digit for digit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

N_BOOT = 2000
# Resample in blocks: one (n_boot x n) index matrix would take 320 MB at 20k items.
_BLOCK_CELLS = 2_000_000


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{name} contains NaN: drop or fill the failed items before the statistics")
    return x


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired inputs differ in length: {x.size} vs {y.size}")
    return x, y


def bootstrap_ci(values: ArrayLike, seed: int = 0, n_boot: int = N_BOOT, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean; (nan, nan) for no values."""
    x = _vector(values, "values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    block = max(1, _BLOCK_CELLS // x.size)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_bootstrap_ci(
    a: ArrayLike, b: ArrayLike, seed: int = 0, n_boot: int = N_BOOT, level: float = 0.95
) -> tuple[float, float]:
    """Interval of mean(a - b), resampling items jointly (so the pairing's correlation is kept)."""
    x, y = _pair(a, b)
    return bootstrap_ci(x - y, seed=seed, n_boot=n_boot, level=level)


def _binary(values: np.ndarray, name: str) -> np.ndarray:
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold only 0/1 (or booleans) for McNemar's test")
    return values.astype(bool)


def mcnemar_exact(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes (1.0 when no pair is discordant)."""
    x, y = _pair(a, b)
    x, y = _binary(x, "a"), _binary(y, "b")
    only_a = int(np.sum(x & ~y))
    only_b = int(np.sum(~x & y))
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    from scipy.stats import binom

    # the same statistic statsmodels' mcnemar(exact=True) computes: 2 * P(X <= min) under Bin(n, 1/2)
    return float(min(1.0, 2.0 * binom.cdf(min(only_a, only_b), discordant, 0.5)))


def wilcoxon_p(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired graded scores (1.0 when no pair differs).

    Tied pairs are dropped (scipy's default ``zero_method="wilcox"``): they say nothing about which
    arm is better.
    """
    x, y = _pair(a, b)
    if not np.any(x != y):
        return 1.0
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        # with few differing pairs scipy warns that the normal approximation is coarse; p stays valid
        warnings.simplefilter("ignore")
        p = float(wilcoxon(x, y).pvalue)
    return 1.0 if math.isnan(p) else p


def _answer(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().casefold()
    return text or None


def _right(value: Any) -> bool:
    return _answer(value) is not None and bool(value)


def agreement(
    a_extracted: Sequence[Any],
    b_extracted: Sequence[Any],
    a_correct: Sequence[Any] | None = None,
    b_correct: Sequence[Any] | None = None,
) -> dict[str, float | None]:
    """Shares (0-1) of paired items on which two arms agree.

    ``same_answer``: both arms extracted an answer and it is the same (case and surrounding space
    ignored); None when neither arm extracted anything (open-ended tasks). ``same_correctness``: both
    right or both wrong, a missing verdict counting as wrong; None when no verdicts are given.
    """
    if len(a_extracted) != len(b_extracted):
        raise ValueError(f"paired inputs differ in length: {len(a_extracted)} vs {len(b_extracted)}")
    n = len(a_extracted)
    answers = [(_answer(x), _answer(y)) for x, y in zip(a_extracted, b_extracted, strict=True)]
    same_answer: float | None = None
    if n and any(x is not None or y is not None for x, y in answers):
        same_answer = sum(x is not None and x == y for x, y in answers) / n
    same_correctness: float | None = None
    if a_correct is not None and b_correct is not None:
        if len(a_correct) != n or len(b_correct) != n:
            raise ValueError("correctness inputs must have the same length as the answers")
        if n:
            same_correctness = sum(_right(x) == _right(y) for x, y in zip(a_correct, b_correct, strict=True)) / n
    return {"same_answer": same_answer, "same_correctness": same_correctness}


def resolution(differences: ArrayLike, power: float = 0.8, alpha: float = 0.05) -> dict[str, float | int | None]:
    """What a paired comparison over these items can resolve, by a two-sided paired t-test.

    ``differences`` are the per-item paired differences (after − before, or one arm − another).
    ``resolvable``: the smallest mean difference that this many items detect with probability
    ``power`` at level ``alpha``, given the spread of the observed differences. ``items_needed``: how
    many items like these would detect the observed mean difference with that probability (None when
    it is zero or the items cannot say: fewer than 2 or no spread). Tells "no effect" apart from "too
    few items to see one": a CI that includes zero at n items says little about a change under
    ``resolvable``.
    """
    x = _vector(differences, "differences")
    if not 0.0 < power < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"power and alpha must be in (0, 1), got {power} and {alpha}")
    n = x.size
    spread = float(np.std(x, ddof=1)) if n >= 2 else 0.0
    if n < 2 or spread == 0.0:
        return {"n": int(n), "resolvable": None, "items_needed": None, "power": power, "alpha": alpha}
    from statsmodels.stats.power import TTestPower

    solver = TTestPower()
    effect = solver.solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")
    observed = abs(float(np.mean(x))) / spread
    needed = None
    if observed > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statsmodels warns while its root finder brackets the answer
            found = solver.solve_power(effect_size=observed, alpha=alpha, power=power, alternative="two-sided")
        needed = int(math.ceil(float(np.squeeze(found)))) if np.isfinite(found) else None
    return {
        "n": int(n),
        "resolvable": float(np.squeeze(effect)) * spread,
        "items_needed": needed,
        "power": power,
        "alpha": alpha,
    }
