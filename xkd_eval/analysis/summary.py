"""From the per-item results table to the run's summary: scores, CIs, forgetting, gap, decomposition.

The table has one row per (task, item_id, arm). Within a task every statistic is computed over the
same items: an item counts only if every arm that ran on the task has a usable result for it, so
``base_text - slm_speech == forgetting + gap`` holds exactly and the paired tests pair real pairs.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xkd_eval.analysis.stats import (
    N_BOOT,
    agreement,
    bootstrap_ci,
    mcnemar_exact,
    paired_bootstrap_ci,
    resolution,
    wilcoxon_p,
)
from xkd_eval.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

ARMS = ("base_text", "slm_text", "slm_speech")
# name -> (reference arm, compared arm); delta = reference - compared, so positive means worse
COMPARISONS = {"forgetting": ("base_text", "slm_text"), "gap": ("slm_text", "slm_speech")}
REQUIRED_COLUMNS = ("task", "item_id", "arm", "score", "scorer", "binary")
MAX_REASONS = 5


def build_summary(
    df: pd.DataFrame,
    *,
    model: str | None,
    base: str | None,
    breakdowns: Mapping[str, Sequence[str]],
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """The run's summary as a JSON-ready dict (no NaN: missing numbers are None).

    Scores are percent for binary scorers (an extraction failure counts as wrong) and 1-5 for graded
    ones (a judge failure leaves the item out of every arm). ``extraction_failure_rate`` is a percent:
    of the scored items for binary scorers, of the arm's answered items for graded ones (whose
    failures are excluded, so the scored items have none). ``agreement`` values are percents of the
    scored items. Arms that did not run, and comparisons that need them, are absent.
    """
    _check_table(df)
    tasks = [
        _task_summary(str(task), df[df["task"] == task], list(breakdowns.get(task, ())), seed, n_boot)
        for task in dict.fromkeys(df["task"])
    ]
    return _clean({"model": model, "base": base, "tasks": tasks})


def write_tables(df: pd.DataFrame, out_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """Write ``items.parquet``, ``items.csv`` (one row per task, item, arm) and ``summary.json``.

    Each file is written atomically, so an interrupted run never leaves a truncated table behind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = _ordered(df)
    atomic_write_bytes(out / "items.parquet", _parquet_bytes(table))
    atomic_write_text(out / "items.csv", table.to_csv(index=False))
    atomic_write_text(out / "summary.json", json.dumps(_clean(summary), indent=2, allow_nan=False) + "\n")


def _task_summary(task: str, rows: pd.DataFrame, keys: list[str], seed: int, n_boot: int) -> dict[str, Any]:
    import pandas as pd

    binary = bool(_one(rows, "binary", task))
    # graded scores in [0, 1] (e.g. 1 - WER) are reported in percent too; judge scores keep 1-5
    unit = _one(rows, "unit", task) if "unit" in rows.columns else ("percent" if binary else "1-5")
    scale = 100.0 if unit == "percent" else 1.0
    arms = [arm for arm in ARMS if (rows["arm"] == arm).any()]
    items = list(dict.fromkeys(rows["item_id"]))
    keep, excluded = _exclusions(rows, arms, items, binary)
    used = keep.index[keep]

    frames = {arm: rows[rows["arm"] == arm].set_index("item_id") for arm in arms}
    raw: dict[str, np.ndarray] = {}  # 0/1 or 1-5 per used item, the scale the tests need
    arm_stats: dict[str, dict[str, Any]] = {}
    for arm in arms:
        frame = frames[arm].reindex(used)
        score = pd.to_numeric(frame["score"], errors="coerce")
        failed = score.isna()
        if "extraction_failed" in frame.columns:
            failed |= frame["extraction_failed"].map(lambda v: _is_set(v) and bool(v))
        if binary:
            raw[arm] = score.fillna(0.0).to_numpy(dtype=float)
            failure_rate = 100.0 * float(failed.mean()) if len(used) else None
        else:
            raw[arm] = score.to_numpy(dtype=float)
            answered = frames[arm]
            if "error" in answered.columns:
                answered = answered[~answered["error"].map(_is_set)]
            failure_rate = 100.0 * float(answered["score"].isna().mean()) if len(answered) else None
        values = scale * raw[arm]
        arm_stats[arm] = {
            "score": scale * float(raw[arm].mean()) if len(values) else None,
            "ci": list(bootstrap_ci(values, seed=seed, n_boot=n_boot)),
            "n": len(values),
            "extraction_failure_rate": failure_rate,
        }

    summary: dict[str, Any] = {
        "task": task,
        "n": len(used),
        "scorer": _one(rows, "scorer", task),
        "scale": unit,
        "mcq_mode": _one(rows, "mcq_mode", task),
        "excluded": excluded,
        "arms": arm_stats,
    }
    for name, (ref, other) in COMPARISONS.items():
        if ref not in arm_stats or other not in arm_stats:
            continue
        comparison = _compare(raw[ref], raw[other], binary=binary, scale=scale, seed=seed, n_boot=n_boot)
        if name == "gap":
            extracted = {
                arm: frames[arm].reindex(used)["extracted"].tolist()
                if "extracted" in frames[arm].columns
                else [None] * len(used)
                for arm in (ref, other)
            }
            verdicts = (raw[ref] == 1.0, raw[other] == 1.0) if binary else (None, None)
            shares = agreement(extracted[ref], extracted[other], *verdicts)
            comparison["agreement"] = {k: None if v is None else 100.0 * v for k, v in shares.items()}
        summary[name] = comparison
    if all(arm in arm_stats for arm in ARMS) and len(used):
        base, text, speech = (arm_stats[arm]["score"] for arm in ARMS)
        summary["decomposition"] = {"total": base - speech, "forgetting": base - text, "gap": text - speech}
    summary["breakdowns"] = _breakdowns(rows, keys, used, {arm: scale * raw[arm] for arm in arms})
    return summary


def _compare(ref: np.ndarray, other: np.ndarray, *, binary: bool, scale: float, seed: int, n_boot: int) -> dict:
    """One arm against another over the same items; ``ref`` and ``other`` are on the scorer's scale."""
    test = "mcnemar-exact" if binary else "wilcoxon"
    if not len(ref):
        return {
            "delta": None,
            "ci": [None, None],
            "p_value": None,
            "test": test,
            "relative_pct": None,
            "resolvable": None,
        }
    ref_score, other_score = scale * float(ref.mean()), scale * float(other.mean())
    # the difference of the two reported scores, so that the report's numbers add up as printed
    delta = ref_score - other_score
    return {
        "delta": delta,
        "ci": list(paired_bootstrap_ci(scale * ref, scale * other, seed=seed, n_boot=n_boot)),
        "p_value": mcnemar_exact(ref, other) if binary else wilcoxon_p(ref, other),
        "test": test,
        "relative_pct": 100.0 * delta / ref_score if ref_score else None,
        # the smallest Δ these items detect 4 times in 5 (paired t): a CI across zero below it is no finding
        "resolvable": resolution(scale * (ref - other))["resolvable"],
    }


def _breakdowns(
    rows: pd.DataFrame, keys: list[str], used: pd.Index, values: dict[str, np.ndarray]
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key in keys:
        if key not in rows.columns:
            continue
        # a breakdown value belongs to the item, whichever arm's row carries it
        labels = rows.groupby("item_id", sort=False)[key].first().reindex(used)
        labels = np.array([str(v) if _is_set(v) else None for v in labels], dtype=object)
        groups: dict[str, dict[str, Any]] = {}
        for label in sorted({v for v in labels if v is not None}):
            mask = labels == label
            groups[label] = {arm: float(v[mask].mean()) for arm, v in values.items()} | {"n": int(mask.sum())}
        out[key] = groups
    return out


def _exclusions(rows: pd.DataFrame, arms: list[str], items: list[Any], binary: bool) -> tuple[pd.Series, dict]:
    """Which items have a usable result in every arm, and why the others were left out."""
    import pandas as pd

    has_error = rows["error"].map(_is_set) if "error" in rows.columns else pd.Series(False, index=rows.index)
    usable = ~has_error.astype(bool)
    if not binary:  # a judge failure has no score; a binary extraction failure scores 0 instead
        usable &= rows["score"].notna()
    grid = (
        rows.assign(_usable=usable.astype(float))
        .pivot(index="item_id", columns="arm", values="_usable")
        .reindex(index=items, columns=arms)
    )
    ok = grid.eq(1.0)  # NaN, an item with no row for an arm, is not usable either
    keep = ok.all(axis=1)

    reasons: list[str] = []
    if not keep.all():
        cells = rows.assign(_has_error=has_error).set_index(["item_id", "arm"])
        for item in keep.index[~keep]:
            for arm in arms:
                if ok.at[item, arm] or len(reasons) >= MAX_REASONS:
                    continue
                if pd.isna(grid.at[item, arm]):
                    why = "no result for this arm"
                else:
                    cell = cells.loc[(item, arm)]
                    why = str(cell["error"]) if cell["_has_error"] else "no judge score"
                reasons.append(f"{item} [{arm}]: {why}")
    excluded = {
        "n": int((~keep).sum()),
        "by_arm": {arm: int((~ok[arm]).sum()) for arm in arms},
        "reasons": reasons,
    }
    return keep, excluded


def _check_table(df: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}")
    unknown = sorted(set(df["arm"]) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; expected {list(ARMS)}")
    dup = df.duplicated(["task", "item_id", "arm"])
    if dup.any():
        first = df.loc[dup, ["task", "item_id", "arm"]].head(3).to_dict("records")
        raise ValueError(f"results table has {int(dup.sum())} duplicate (task, item_id, arm) rows, e.g. {first}")


def _one(rows: pd.DataFrame, column: str, task: str) -> Any:
    if column not in rows.columns:
        return None
    values = [v for v in dict.fromkeys(rows[column]) if _is_set(v)]
    if len(values) > 1 and column == "binary":
        raise ValueError(f"task {task!r} mixes binary and graded scorers")
    # several scorers or modes within one task are unusual; name them all rather than pick one
    if len(values) > 1:
        return "+".join(map(str, values))
    return values[0] if values else None


def _is_set(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return not (isinstance(value, str) and not value.strip())


def _clean(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars become Python ones, NaN and infinities become None."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    task = pd.factorize(df["task"])[0]
    item = pd.factorize(df["item_id"])[0]  # first appearance: the dataset's own order
    arm = df["arm"].map({a: i for i, a in enumerate(ARMS)}).fillna(len(ARMS)).to_numpy()
    return df.iloc[np.lexsort((arm, item, task))].reset_index(drop=True)


def _parquet_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    try:
        table.to_parquet(buffer, index=False)
    except (TypeError, ValueError):  # pyarrow's ArrowInvalid/ArrowTypeError derive from these
        # a column mixing e.g. lists and strings has no Arrow type; keep it as JSON text instead
        table = table.copy()
        for column in table.select_dtypes(include="object").columns:
            if not table[column].map(lambda v: v is None or isinstance(v, (str, bool, int, float))).all():
                table[column] = table[column].map(lambda v: None if v is None else json.dumps(v, default=str))
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
    return buffer.getvalue()
