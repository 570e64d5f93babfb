"""The runner: every (model, task, item, arm) answered once, batched, cached, scored.

Arms: ``base_text`` (the base LLM reads the written query), ``slm_text`` (the speech LLM reads it),
``slm_speech`` (the speech LLM hears it, with a fixed instruction). Items are sharded across
processes by rank (torchrun / accelerate set RANK and WORLD_SIZE); rank 0 merges.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xkd_eval.audio import load_all_audio, samples_digest
from xkd_eval.errors import DataFormatError, EndpointError, PartialFailure, XkdError
from xkd_eval.models.base import SPEECH_INSTRUCTION, GenerationSettings, ModelAdapter, Query
from xkd_eval.records import QUESTION_AUDIO, AudioRef, Item, Score
from xkd_eval.runner.store import ResultStore, result_key
from xkd_eval.scoring import SCORERS, ScorerSpec
from xkd_eval.scoring.mcq_options import MCQ_MODES, OptionSet, option_set
from xkd_eval.scoring.open_judge import JudgeConfig
from xkd_eval.tasks.base import LoadedTask, TaskSpec

log = logging.getLogger(__name__)

ARMS: dict[str, tuple[str, str]] = {
    "base_text": ("base", "text"),
    "slm_text": ("slm", "text"),
    "slm_speech": ("slm", "speech"),
}


@dataclass(frozen=True)
class RunConfig:
    """How a measurement runs. Everything that changes answers is part of each result's cache key."""

    out_dir: Path
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    # generate | letter | cloze (option log-likelihood); None: what the measured model recommends (its
    # registry entry: the organism family, cloze), else generate (``measure`` resolves it first)
    mcq_mode: str | None = "generate"
    mcq_mode_source: str | None = None  # where the mode came from, for the report (``with_mcq_mode`` sets it)
    batch_size: int = 8  # items per forward pass; results do not depend on it
    limit: int | None = None  # first N items of each task
    data_dir: Path | None = None  # local copy of the benchmark data
    compat: str | None = None  # scorer mode for mcq/bbh/refusal (voicebench | robust)
    scorer: str | None = None  # override the task's scorer
    judge: JudgeConfig | None = None  # the 'open' scorer's judge; None = open tasks are not judged
    lm_eval_include: Path | None = None  # folder of extra lm-eval task YAMLs (lm-eval's --include_path)
    rank: int = 0
    world_size: int = 1
    # False: an arm first drops its model's answers of other revisions (an older adapter) from the result
    # files, so that a reference report's folder holds only what its summary uses
    keep_other_revisions: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.mcq_mode is not None and self.mcq_mode not in MCQ_MODES:
            raise XkdError(f"--mcq-mode must be one of {', '.join(MCQ_MODES)}, got {self.mcq_mode!r}")
        if self.batch_size < 1:
            raise XkdError("--batch-size must be >= 1")

    def with_out(self, out_dir: Path) -> RunConfig:
        return replace(self, out_dir=Path(out_dir))

    @classmethod
    def sharded_from_env(cls, **kwargs: Any) -> RunConfig:
        """Rank and world size from torchrun/accelerate's environment (RANK, WORLD_SIZE)."""
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        return cls(rank=rank, world_size=world, **kwargs)


# metadata keys a report breaks scores down by, when a user task carries them
BREAKDOWN_KEYS = ("domain", "accent", "subtask", "category", "difficulty", "speaker", "mmau_task", "sub_category")


@dataclass
class TaskRun:
    spec: TaskSpec
    loaded: LoadedTask
    scorer: ScorerSpec | None  # None: lm-eval scores the task itself
    breakdowns: tuple[str, ...] = ()

    @property
    def items(self) -> tuple[Item, ...]:
        return self.loaded.items

    @property
    def is_lm_eval(self) -> bool:
        return self.scorer is None


def guess_scorer(items: Sequence[Item]) -> str:
    """A user task's scorer when its lines name none: from the shape of its first item."""
    from xkd_eval.scoring.mcq import options_of

    item = items[0]
    if item.scorer:
        return item.scorer
    if "instruction_id_list" in item.metadata:
        return "ifeval"
    if item.choices and item.reference in item.choices:
        return "mmau"
    if (item.reference or "").strip("() ").upper() in ("A", "B", "C", "D") and len(options_of(item)) >= 2:
        return "mcq"
    return "qa" if item.references else "open"


def infer_breakdowns(items: Sequence[Item]) -> tuple[str, ...]:
    keys = []
    for key in BREAKDOWN_KEYS:
        values = {item.metadata.get(key) for item in items} - {None}
        if 1 < len(values) <= 40:
            keys.append(key)
    return tuple(keys)


def prepare_tasks(names: Sequence[str], config: RunConfig, *, audio: bool = True) -> list[TaskRun]:
    """Resolve and load the tasks; ``audio=False`` (no speech arm) loads them without making clips."""
    from xkd_eval.tasks import get_task

    runs = []
    for name in names:
        spec = get_task(name)
        if spec.scorer == "lm-eval":
            runs.append(TaskRun(spec, LoadedTask(spec.name, ()), None))
            continue
        try:
            loaded = spec.load(config.data_dir, limit=config.limit, audio=audio)
        except XkdError:
            raise
        except Exception as exc:  # hub unreachable, dataset missing: one line, and what to do
            where = f"--data-dir {config.data_dir}" if config.data_dir else "the hub (offline?)"
            raise XkdError(
                f"cannot load task {name} from {where}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}; "
                "pass --data-dir with a local copy in the hub's layout"
            ) from exc
        for problem in loaded.problems:
            log.warning("%s: %s: %s", name, problem.where, problem.reason)
        if not loaded.items:
            raise XkdError(f"task {name} has no items")
        scorer_name = config.scorer or spec.scorer
        if scorer_name == "auto":
            scorer_name = guess_scorer(loaded.items)
        breakdowns = spec.breakdowns or infer_breakdowns(loaded.items)
        runs.append(TaskRun(spec, loaded, SCORERS.get(scorer_name), breakdowns))
    return runs


def check_speech_ready(runs: Sequence[TaskRun]) -> None:
    """A speech arm on a task without audio is an error before any work starts."""
    for run in runs:
        if run.is_lm_eval or not run.loaded.has_audio:
            raise XkdError(f"task {run.spec.name} has no audio, so it has no speech arm; run `forgetting` on it")


def _shard(items: Sequence[Item], config: RunConfig) -> list[Item]:
    return list(items[config.rank :: config.world_size])


def _heard_items(items: Sequence[Item], run: TaskRun, config: RunConfig) -> list[Item]:
    """The clips the speech arm hears: a cloze-scored MCQ's written query is the bare question, so where
    the task has a clip of the question alone (``metadata['question_audio']``, the built-in tasks) the
    spoken query is that clip and both arms ask the same words; elsewhere the clip as given, options read."""
    if config.mcq_mode != "cloze" or run.scorer.name != "mcq":
        return list(items)
    return [
        replace(item, audio=AudioRef(path=str(item.metadata[QUESTION_AUDIO])))
        if item.metadata.get(QUESTION_AUDIO) and _options_or_refusal(item, run, config)[0]
        else item
        for item in items
    ]


def _options_or_refusal(item: Item, run: TaskRun, config: RunConfig) -> tuple[OptionSet | None, str | None]:
    """The item's options to rank, or why it is refused (a cloze MCQ whose options cannot be told apart
    from its question): that item gets an error row, the others are answered."""
    try:
        return option_set(item, run.scorer.name, config.mcq_mode), None
    except DataFormatError as exc:
        return None, str(exc)


def _query_text(item: Item, modality: str, options: OptionSet | None) -> str:
    if modality == "speech":
        return str(item.metadata.get("speech_instruction") or SPEECH_INSTRUCTION)
    return options.written_query if options else item.prompt


Progress = Callable[[int], None]


def run_arm(
    model: ModelAdapter,
    model_name: str,
    arm: str,
    run: TaskRun,
    config: RunConfig,
    *,
    advance: Progress | None = None,
    answered: Progress | None = None,
) -> list[dict[str, Any]]:
    """Answer this rank's share of a task in one arm; returns the per-item rows (cached or new).

    `advance` hears of every item done, `answered` only of those the model answered in this call.
    """
    modality = ARMS[arm][1]
    store = ResultStore(config.out_dir / "results", model_name, run.spec.name, rank=config.rank)
    if not config.keep_other_revisions:
        store.drop_other_revisions(model.identity())
    if run.is_lm_eval:
        return run_lm_eval_arm(model, model_name, arm, run, config, store, advance=advance, answered=answered)
    items = _shard(run.items, config)
    audio: dict[str, Any] = {}
    failed: dict[str, str] = {}
    if modality == "speech":
        model.check_can_take_audio()
        audio, failures = load_all_audio(_heard_items(items, run, config))
        failed = {f.item_id: f.reason for f in failures}

    identity = model.identity()
    pending: list[tuple[Item, Query, OptionSet | None, str, str]] = []
    rows: list[dict[str, Any]] = []
    for item in items:
        if item.id in failed:
            rows.append(_error_row(run, item, arm, model_name, failed[item.id], config))
            continue
        options, refused = _options_or_refusal(item, run, config)
        if refused:
            log.warning("%s", refused)
            rows.append(_error_row(run, item, arm, model_name, refused, config))
            if advance:
                advance(1)
            continue
        query = Query(item.id, _query_text(item, modality, options), audio.get(item.id))
        prompt = model.render_prompt(query)
        # the rendered speech prompt only holds a placeholder for the clip: its samples are part of the key,
        # so re-synthesised or edited audio is answered afresh (written queries keep their keys)
        heard = {"audio": samples_digest(query.audio)} if query.audio is not None else {}
        key = result_key(
            model=identity, task=run.spec.name, item=item.id, modality=modality, prompt=prompt,
            settings=config.settings.record(), mcq_mode=config.mcq_mode if options else "generate",
            continuations=options.continuations if options else None, **heard,
        )  # fmt: skip
        if key in store:
            rows.append(_row(run, item, arm, model_name, store.get(key), config))
            if advance:
                advance(1)
        else:
            pending.append((item, query, options, prompt, key))

    # longest first: similar lengths share a batch, and a memory error shows up at once
    pending.sort(key=lambda p: -(p[1].audio.size if p[1].audio is not None else len(p[3])))
    if any(options is not None for _, _, options, _, _ in pending):
        model.check_can_rank(config.mcq_mode)  # before any item is asked
    step = max(config.batch_size, model.engine_batch)  # an engine batches the requests itself
    for start in range(0, len(pending), step):
        batch = pending[start : start + step]
        try:
            records = _answer_batch(model, batch, config, identity)
        except BatchAborted as aborted:  # keep what the engine answered before it went away
            store.append(r for r in aborted.records if r.get("error") is None)
            raise aborted.cause from None
        store.append(r for r in records if r.get("error") is None)
        for (item, *_), record in zip(batch, records, strict=True):
            rows.append(_row(run, item, arm, model_name, record, config))
        if advance:
            advance(len(batch))
        if answered:
            answered(len(batch))
    return rows


class BatchAborted(Exception):
    """The engine cannot go on (``EndpointError``) after answering part of a batch: ``records`` holds what was
    answered, to be saved before the run stops."""

    def __init__(self, records: list[dict[str, Any]], cause: EndpointError) -> None:
        super().__init__(str(cause))
        self.records, self.cause = records, cause


def _answer_batch(model: ModelAdapter, batch, config: RunConfig, identity) -> list[dict[str, Any]]:
    """Answer a batch; if it fails, answer item by item so one bad item does not sink the rest."""
    try:
        return _answer(model, batch, config, identity)
    except (BatchAborted, EndpointError):
        raise
    except Exception as exc:  # any model failure: isolate it
        if len(batch) == 1:
            item, query, options, prompt, key = batch[0]
            log.warning("item %s failed: %s", item.id, exc)
            return [{"key": key, "item_id": item.id, "prompt": prompt, "error": f"{type(exc).__name__}: {exc}"}]
        return [r for one in batch for r in _answer_batch(model, [one], config, identity)]


def _ask(call: Callable[[], list[Any]], size: int) -> tuple[list[Any], dict[int, str], EndpointError | None]:
    """(answers, failed positions, a fatal error): an engine that reports failures per query keeps the rest."""
    try:
        return call(), {}, None
    except PartialFailure as partial:
        if len(partial.answers) != size:
            raise
        return partial.answers, partial.failures, partial.fatal


def _answer(model: ModelAdapter, batch, config: RunConfig, identity) -> list[dict[str, Any]]:
    started = time.perf_counter()
    ranked = [b for b in batch if b[2] is not None]
    free = [b for b in batch if b[2] is None]
    answers: dict[str, dict[str, Any]] = {}
    fatal: EndpointError | None = None
    if free:
        responses, failures, fatal = _ask(lambda: model.generate([b[1] for b in free], config.settings), len(free))
        for at, ((item, *_), response) in enumerate(zip(free, responses, strict=True)):
            answers[item.id] = {"error": failures[at]} if at in failures else {"response": response}
            answers[item.id]["mcq_mode"] = "generate"
    if ranked and fatal is None:
        queries, continuations = [], []
        for _, query, options, _, _ in ranked:
            queries.extend([query] * len(options.continuations))
            continuations.extend(options.continuations)
        logprobs, failures, fatal = _ask(lambda: model.continuation_logprobs(queries, continuations), len(queries))
        at = 0
        for item, _, options, _, _ in ranked:
            span = range(at, at + len(options.continuations))
            at += len(options.continuations)
            failed = [failures[i] for i in span if i in failures]
            if failed:
                answers[item.id] = {"error": failed[0], "mcq_mode": config.mcq_mode}
                continue
            scores = [logprobs[i] for i in span]
            best = max(range(len(scores)), key=scores.__getitem__)
            answers[item.id] = {
                "response": options.labels[best],
                "mcq_mode": config.mcq_mode,
                "option_logprobs": dict(zip(options.labels, scores, strict=True)),
            }
    latency = (time.perf_counter() - started) / len(batch)
    records = [
        {"key": key, "item_id": item.id, "prompt": prompt, "latency_s": latency, "model": identity, **answers[item.id]}
        for item, _, _, prompt, key in batch
        if item.id in answers
    ]
    if fatal is not None:
        raise BatchAborted(records, fatal)
    for record in records:
        if record.get("error"):
            log.warning("item %s failed: %s", record["item_id"], record["error"])
    return records


def score_response(scorer: ScorerSpec, item: Item, response: str, config: RunConfig) -> Score:
    if scorer.name == "open":
        if config.judge is None:  # judging is opt-in: no endpoint, no HTTP calls
            return Score(value=None, details={"judge_error": "no judge configured (--judge-url)"})
        return scorer.score(item, response, judge=config.judge)
    return scorer.score(item, response, compat=config.compat)


def _breakdown_values(run: TaskRun, item: Item) -> dict[str, Any]:
    return {key: item.metadata.get(key) for key in run.breakdowns}


def run_lm_eval_arm(
    model: ModelAdapter,
    model_name: str,
    arm: str,
    run: TaskRun,
    config: RunConfig,
    store: ResultStore,
    *,
    advance: Progress | None,
    answered: Progress | None = None,
) -> list[dict[str, Any]]:
    """An lm-eval task, run by lm-eval on rank 0. lm-eval has no per-item resume, so the whole task is
    the unit of caching: its rows and a completion record are appended together."""
    if config.rank != 0:
        return []
    done_key = result_key(model=model.identity(), task=run.spec.name, limit=config.limit, lm_eval="complete")
    if done_key not in store:
        from xkd_eval.lmeval import run_lm_eval_task

        started = time.perf_counter()
        rows = run_lm_eval_task(
            model, run.spec.name, limit=config.limit, batch_size=config.batch_size, include_path=config.lm_eval_include
        )
        latency = (time.perf_counter() - started) / max(len(rows), 1)
        records = [
            {**{k: row.get(k) for k in ("item_id", "prompt", "response", "score", "correct", "extracted", "metric")},
             "key": result_key(done=done_key, item=row["item_id"]), "latency_s": latency, "lm_eval_run": done_key}
            for row in rows
        ]  # fmt: skip
        store.append([*records, {"key": done_key, "complete": True, "metric": rows.metric, "n": len(rows)}])
        if answered:
            answered(len(rows))
    results = [r for r in store.records() if r.get("lm_eval_run") == done_key]
    if advance:
        advance(len(results))
    return [
        {
            "task": run.spec.name, "item_id": r["item_id"], "arm": arm, "model": model_name,
            "response": r["response"], "extracted": None if r["extracted"] is None else str(r["extracted"]),
            "correct": r["correct"], "score": r["score"], "extraction_failed": False, "error": None,
            "scorer": f"lm-eval:{r['metric']}", "binary": r["correct"] is not None, "unit": "percent",
            "mcq_mode": "lm-eval",
            "prompt": r["prompt"], "latency_s": r["latency_s"],
        }
        for r in results
    ]  # fmt: skip


def _row(run: TaskRun, item: Item, arm: str, model_name: str, record: dict[str, Any], config: RunConfig):
    if record.get("error"):
        return _error_row(run, item, arm, model_name, record["error"], config, prompt=record.get("prompt"))
    score = score_response(run.scorer, item, record["response"], config)
    return {
        "task": run.spec.name, "item_id": item.id, "arm": arm, "model": model_name,
        "response": record["response"], "extracted": score.extracted, "correct": score.correct,
        "score": score.value, "extraction_failed": score.failed, "error": None,
        "scorer": run.scorer.name, "binary": run.scorer.binary, "unit": run.scorer.unit,
        "mcq_mode": record.get("mcq_mode", "generate"),
        "prompt": record["prompt"], "latency_s": record.get("latency_s"),
        **_breakdown_values(run, item),
    }  # fmt: skip


def _error_row(run: TaskRun, item: Item, arm: str, model_name: str, error: str, config: RunConfig, prompt=None):
    return {
        "task": run.spec.name, "item_id": item.id, "arm": arm, "model": model_name,
        "response": None, "extracted": None, "correct": None, "score": None, "extraction_failed": False,
        "error": error, "scorer": run.scorer.name, "binary": run.scorer.binary, "unit": run.scorer.unit,
        "mcq_mode": config.mcq_mode, "prompt": prompt, "latency_s": None,
        **_breakdown_values(run, item),
    }  # fmt: skip


def release(model: ModelAdapter | None) -> None:
    """Free a model's memory before the next one loads."""
    if model is None:
        return
    model.close()
    del model
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
