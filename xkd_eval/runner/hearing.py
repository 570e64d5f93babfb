"""Does the speech LLM hear the question? (``--diagnostics hearing``)

A modality gap has two very different causes: the model mishears the spoken query, or it hears it and
still answers worse than when it reads it. This diagnostic asks the speech LLM to repeat each clip the
speech arm heard ("Repeat exactly what the speaker says."), scores the repetition as the ``listen``
subset is scored (word accuracy, ``max(0, 1 - WER)``), then splits the task's gap by how well each item
was heard. A gap that lives in the badly heard items is a hearing problem (ASR-style data is the lever);
one that stays in the well-heard items is a reasoning-over-speech problem (what cross-modal KD targets).

Only clips whose words are known are probed: the built-in and TTS-made tasks (their ``spoken_text`` or,
for a cloze MCQ, the bare question), and datasets whose clip reads the written prompt (VoiceBench). A
clip that is not the query (MMAU's sounds) has no words to repeat and is skipped. A model that has
been taught to answer rather than repeat (a distilled student) is probed too, but then the word
accuracy measures obedience as much as hearing: read it before distillation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from xkd_eval.audio import load_all_audio, samples_digest
from xkd_eval.builtin import LISTEN_INSTRUCTION
from xkd_eval.models.base import GenerationSettings, ModelAdapter, Query
from xkd_eval.records import QUESTION_AUDIO, Item

if TYPE_CHECKING:
    import pandas as pd

    from xkd_eval.runner.core import RunConfig, TaskRun

log = logging.getLogger(__name__)

HEARING_INSTRUCTION = LISTEN_INSTRUCTION  # the built-in listen subset's: the same request, scored the same
# word-accuracy bands the gap is split by: misheard, partly heard, heard
BANDS: tuple[tuple[str, float, float], ...] = (("<50%", 0.0, 0.5), ("50–80%", 0.5, 0.8), ("≥80%", 0.8, 1.0))
MAX_REPEAT_TOKENS = 256


def heard_words(item: Item, run: TaskRun, config: RunConfig) -> str | None:
    """The words of the clip this item's speech arm hears, or None where they are not known."""
    from xkd_eval.runner.core import _heard_items
    from xkd_eval.tts import question_text_of, spoken_text_of

    if item.audio is None:
        return None
    [heard] = _heard_items([item], run, config)
    if heard.audio != item.audio and item.metadata.get(QUESTION_AUDIO):
        return question_text_of(item)  # the cloze arm hears the bare question's clip
    if item.metadata.get("spoken_text"):
        return str(item.metadata["spoken_text"])
    if item.metadata.get("speech_instruction"):
        return None  # the clip is not the query (a sound to reason about), so it has no words to repeat
    return spoken_text_of(item)


def repeat_settings(texts: Sequence[str]) -> GenerationSettings:
    """One budget per task (so cached repetitions do not depend on the batching): room for the longest text."""
    longest = max((len(t.split()) for t in texts), default=0)
    return GenerationSettings(max_new_tokens=min(MAX_REPEAT_TOKENS, 2 * longest + 16))


def run_hearing(
    model: ModelAdapter,
    model_name: str,
    run: TaskRun,
    config: RunConfig,
    *,
    advance: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Ask the model to repeat each probed clip of this rank's share; cached like the arms' answers.
    ``total`` hears how many clips will be probed, ``advance`` of each one done.

    A batch that fails is retried item by item; an item that still fails gets a row with its ``error``
    (and no word accuracy), and the probe goes on."""
    from xkd_eval.runner.core import _heard_items, _shard
    from xkd_eval.runner.store import ResultStore, result_key

    probed: list[Item] = []
    if not run.is_lm_eval and model.supports_audio:
        words = {item.id: heard_words(item, run, config) for item in run.items}
        probed = [item for item in _shard(run.items, config) if words[item.id] and words[item.id].strip()]
    if total:
        total(len(probed))
    if not probed:
        return []
    settings = repeat_settings([w for w in words.values() if w])
    audio, failures = load_all_audio(_heard_items(probed, run, config))
    failed = {f.item_id: f.reason for f in failures}
    store = ResultStore(config.out_dir / "results", model_name, run.spec.name, rank=config.rank)
    identity = model.identity()
    rows: list[dict[str, Any]] = []
    pending: list[tuple[Item, Query, str]] = []
    for item in probed:
        if item.id in failed:
            continue  # the arms record the broken clip; there is nothing to repeat
        query = Query(item.id, HEARING_INSTRUCTION, audio[item.id])
        key = result_key(
            model=identity, task=run.spec.name, item=item.id, modality="hearing",
            prompt=model.render_prompt(query), settings=settings.record(), audio=samples_digest(query.audio),
        )  # fmt: skip
        if key in store:
            rows.append(_hearing_row(run, item, words[item.id], store.get(key)["response"]))
        else:
            pending.append((item, query, key))
    if advance:
        advance(len(rows))
    pending.sort(key=lambda p: -p[1].audio.size)
    for start in range(0, len(pending), config.batch_size):
        batch = pending[start : start + config.batch_size]
        transcripts = _repeat(model, [query for _, query, _ in batch], settings)
        store.append(
            {"key": key, "item_id": item.id, "modality": "hearing", "response": text, "model": identity}
            for (item, _, key), text in zip(batch, transcripts, strict=True)
            if not isinstance(text, Exception)
        )
        rows += [
            _hearing_row(run, item, words[item.id], text) for (item, _, _), text in zip(batch, transcripts, strict=True)
        ]
        if advance:
            advance(len(batch))
    return rows


def _repeat(model: ModelAdapter, queries: list[Query], settings: GenerationSettings) -> list[str | Exception]:
    """The batch's repetitions; where the batch fails, each item's own (or its exception)."""
    try:
        return list(model.generate(queries, settings))
    except Exception as exc:  # any model failure: isolate it
        if len(queries) == 1:
            log.warning("hearing: item %s failed: %s", queries[0].item_id, exc)
            return [exc]
        return [text for query in queries for text in _repeat(model, [query], settings)]


def _hearing_row(run: TaskRun, item: Item, reference: str, transcript: str | Exception) -> dict[str, Any]:
    from xkd_eval.scoring.wer import word_errors

    row = {"task": run.spec.name, "item_id": item.id, "heard_text": reference}
    if isinstance(transcript, Exception):
        return row | {"transcript": None, "word_accuracy": None, "exact": None, "error": repr(transcript)}
    errors, n_words = word_errors(reference, transcript or "")
    return row | {
        "transcript": transcript, "word_accuracy": max(0.0, 1.0 - errors / n_words), "exact": errors == 0,
        "error": None,
    }  # fmt: skip


def hearing_split(heard: pd.DataFrame, *, scale_unit: str = "percent", seed: int = 0) -> dict[str, Any]:
    """Summarise one task: ``heard`` has per item ``word_accuracy`` and ``exact``, and the speech LLM's
    ``text`` and ``speech`` scores (NaN where an arm has none), on the scorer's scale (``scale_unit``).

    Returns the mean word accuracy (percent, with a bootstrap CI), the share repeated exactly, the text
    and speech scores and their gap within each band of word accuracy, and Spearman's rank correlation of
    word accuracy with the speech score (does hearing better go with answering better?).
    """
    import numpy as np
    from scipy.stats import spearmanr

    from xkd_eval.analysis.stats import bootstrap_ci

    failed = int(heard["word_accuracy"].isna().sum())
    heard = heard.dropna(subset=["word_accuracy"])
    accuracy = heard["word_accuracy"].to_numpy(dtype=float)
    out: dict[str, Any] = {
        "n": int(len(heard)),
        "n_failed": failed,
        "word_accuracy": float(100 * accuracy.mean()) if len(heard) else None,
        "ci": [100 * v for v in bootstrap_ci(accuracy, seed=seed)] if len(heard) > 1 else None,
        "exact": float(100 * heard["exact"].astype(bool).mean()) if len(heard) else None,
    }
    scored = heard.dropna(subset=["text", "speech"])
    scale = 100.0 if scale_unit == "percent" else 1.0
    bands = []
    for label, low, high in BANDS:
        band = scored[in_band(scored["word_accuracy"], low, high)]
        text, speech = band["text"].mean(), band["speech"].mean()
        bands.append({
            "band": label, "n": int(len(band)),
            "text": _scaled(text, scale), "speech": _scaled(speech, scale), "gap": _scaled(text - speech, scale),
        })  # fmt: skip
    out["bands"] = bands
    varied = len(scored) > 2 and np.ptp(scored["word_accuracy"]) > 0 and np.ptp(scored["speech"]) > 0
    if varied:
        rho, p = spearmanr(scored["word_accuracy"], scored["speech"])
        out["spearman"] = {"rho": float(rho), "p": float(p), "n": int(len(scored))}
    else:
        out["spearman"] = None  # a constant column has no rank correlation
    return out


def in_band(accuracy: pd.Series, low: float, high: float) -> pd.Series:
    """Word accuracy in [low, high); the top band is closed at 1 (an exact repetition)."""
    return (accuracy >= low) & ((accuracy < high) | (high >= 1.0))


def _scaled(value: float, scale: float) -> float | None:
    """An empty band's mean is NaN: recorded as None."""
    import math

    return None if math.isnan(value) else float(scale * value)


def hearing_diagnostics(hearing_rows: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> dict:
    """Per task: the split of the gap by hearing, from the repetitions and the slm arms' per-item scores."""
    import pandas as pd

    heard = pd.DataFrame(list(hearing_rows))
    arms = pd.DataFrame([r for r in rows if r.get("arm") in ("slm_text", "slm_speech")])
    out: dict[str, Any] = {}
    for task, group in heard.groupby("task", sort=False) if not heard.empty else ():
        # in item order, not in the order answered (cached first, then longest first): the bootstrap resamples
        # by position, so a rerun must see the same order
        frame = group.set_index("item_id").sort_index(key=lambda ids: ids.map(str))
        mine = arms[arms["task"] == task] if not arms.empty else arms
        scores = mine.pivot_table(index="item_id", columns="arm", values="score", aggfunc="first") if len(mine) else {}
        for column, arm in (("text", "slm_text"), ("speech", "slm_speech")):
            frame[column] = scores[arm] if arm in scores else float("nan")
        unit = str(mine["unit"].iloc[0]) if len(mine) and "unit" in mine else "percent"
        split = hearing_split(frame.reset_index(), scale_unit=unit)
        out[str(task)] = {"instruction": HEARING_INSTRUCTION, **split}
    return out
