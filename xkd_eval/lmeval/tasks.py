"""``lm-eval/<task>``: lm-evaluation-harness tasks, built and scored by lm-eval itself.

The forgetting arm asks the base LLM and the speech LLM's text path the same lm-eval tasks. Items of
these tasks never pass through xkd-eval's loaders and scorers: :func:`run_lm_eval_task` hands the
model (wrapped as :class:`~xkd_eval.lmeval.adapter.XkdLM`) to ``lm_eval.simple_evaluate`` and turns
its logged samples into one row per document.

Nothing here imports lm-eval at import time (it is slow), and the family does not list lm-eval's
registry: any ``lm-eval/<name>`` resolves, and an unknown name fails when it is run.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xkd_eval.errors import UnknownNameError, XkdError
from xkd_eval.registry import unknown_name_message
from xkd_eval.tasks.base import LoadedTask, TaskSpec

if TYPE_CHECKING:
    from xkd_eval.lmeval.adapter import XkdLM
    from xkd_eval.models.base import ModelAdapter

FAMILY = "lm-eval"
SCORER = "lm-eval"
PREFIX = FAMILY + "/"
BINARY_METRICS = frozenset({"acc", "acc_norm", "acc_bytes", "acc_mutual_info", "exact_match", "em"})
LOGLIKELIHOOD_TYPES = ("multiple_choice", "loglikelihood")


# ---------------------------------------------------------------------- the task family


def lm_eval_task_name(name: str) -> str:
    """``lm-eval/arc_easy`` -> ``arc_easy`` (a bare lm-eval name is returned as it is)."""
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def resolve(rest: str) -> TaskSpec:
    """``lm-eval/<task>`` -> a TaskSpec whose items only lm-eval can build."""
    if not rest:
        raise UnknownNameError(
            f"task {FAMILY!r} needs an lm-evaluation-harness task name: {FAMILY}/<task>, e.g. {FAMILY}/arc_easy"
        )

    def loader(data_dir: Path | None, _limit: int | None) -> LoadedTask:
        raise XkdError(
            f"task {PREFIX}{rest} is built and scored by lm-evaluation-harness itself, not loaded as items; "
            f"run it with xkd_eval.lmeval.run_lm_eval_task(adapter, {rest!r})"
        )

    return TaskSpec(
        name=PREFIX + rest,
        scorer=SCORER,
        description=f"lm-evaluation-harness task {rest!r} (text only; prompts and metrics are lm-eval's)",
        speech=False,
        loader=loader,
    )


def known_names() -> list[str]:
    return [PREFIX + "<task>"]


# ---------------------------------------------------------------------- running a task


class LmEvalRows(list):
    """One row (a dict) per document, in lm-eval's document order, plus lm-eval's aggregate.

    Attributes: ``task`` (the lm-eval name run), ``metric`` (the primary metric, the first the task
    reports), ``value`` (its aggregate over the documents), ``aggregate`` (every aggregate lm-eval
    reported for the task, keyed ``"metric,filter"``), ``results`` (lm-eval's whole results dict,
    without the samples).
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        *,
        task: str,
        metric: str | None,
        value: float | None,
        aggregate: dict[str, Any],
        results: dict[str, Any],
    ) -> None:
        super().__init__(rows)
        self.task = task
        self.metric = metric
        self.value = value
        self.aggregate = aggregate
        self.results = results


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: tuple[str, ...], include_defaults: bool):
    """lm-eval's TaskManager; building the index of its built-in tasks takes seconds, so it is kept."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) or None, include_defaults=include_defaults)


def _load_tasks(manager: Any, name: str) -> tuple[list[Any], dict[str, Any]]:
    """(what to hand simple_evaluate, {leaf task name: Task}) for a task, group, tag or YAML path."""
    try:
        loaded = manager.load([name])
    except KeyError:
        raise UnknownNameError(unknown_name_message("lm-eval task", name, manager.all_tasks)) from None
    tasks, groups = loaded["tasks"], loaded["groups"]
    if name in groups:
        return [groups[name]], tasks
    if name in tasks:
        return [tasks[name]], tasks
    return list(tasks.values()), tasks  # a tag, a glob or a path: its tasks


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _plain(value: Any) -> Any:
    """A per-document metric value as JSON-friendly data (numpy scalars, tuples of them)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _row(task_name: str, task: Any, sample: dict[str, Any], extra: list[dict[str, Any]], prefix: bool) -> dict:
    output_type = task.get_config("output_type") if task is not None else None
    arguments = sample["arguments"]
    metric = sample["metrics"][0] if sample["metrics"] else None
    score = _number(sample.get(metric)) if metric else None
    if score is not None and math.isnan(score):
        score = None
    correct = None
    if score is not None and metric in BINARY_METRICS and score in (0.0, 1.0):
        correct = score == 1.0
    response, extracted = "", None
    if output_type in LOGLIKELIHOOD_TYPES:
        lls = [resp[0] for resp in sample["filtered_resps"]]
        choices: list[str] = []
        if output_type == "multiple_choice":
            choices = [str(c) for c in task.doc_to_choice(sample["doc"])]
        if not choices:  # a single continuation (lambada-style), or choices not recoverable
            choices = [str(args[1]) for args in arguments]
        lls = lls[: len(choices)]  # acc_mutual_info appends the unconditional scores
        best = max(range(len(lls)), key=lls.__getitem__) if lls else None
        if best is not None:
            response = choices[best].strip()
            extracted = str(best)
    elif output_type == "generate_until":
        response = str(sample["resps"][0][0])
        filtered = sample["filtered_resps"][0]
        extracted = str(filtered[0] if isinstance(filtered, list) and filtered else filtered)
    metrics: dict[str, Any] = {}
    for s in [sample, *extra]:
        for name in s["metrics"]:
            metrics[f"{name},{s['filter']}"] = _plain(s[name])
    doc_id = str(sample["doc_id"])
    return {
        "item_id": f"{task_name}/{doc_id}" if prefix else doc_id,
        "prompt": str(arguments[0][0]) if arguments else "",
        "response": response,
        "score": score,
        "correct": correct,
        "extracted": extracted,
        "metric": metric,
        "task": task_name,
        "target": _plain(sample.get("target")),
        "filter": sample["filter"],
        "metrics": metrics,
    }


def _aggregate(results: dict[str, Any], name: str, leaf_names: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in ("groups", "results"):
        if name in results.get(key, {}):
            found = results[key][name]
            break
    else:
        if len(leaf_names) == 1:
            found = results["results"].get(leaf_names[0], {})
    return {k: _plain(v) for k, v in found.items()}


def _primary(aggregate: dict[str, Any], metric: str | None, filter_key: str | None) -> tuple[str | None, float | None]:
    if metric and filter_key and f"{metric},{filter_key}" in aggregate:
        return metric, _number(aggregate[f"{metric},{filter_key}"])
    for key, value in aggregate.items():
        if "," in key and "_stderr" not in key:
            return key.split(",", 1)[0], _number(value)
    return metric, None


def run_lm_eval_task(
    adapter: ModelAdapter | XkdLM,
    task: str,
    *,
    limit: int | float | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    seed: int = 0,
    num_fewshot: int | None = None,
    apply_chat_template: bool | str = False,
    fewshot_as_multiturn: bool = True,
    system_instruction: str | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    batch_size: int | None = None,
    include_defaults: bool = True,
    bootstrap_iters: int = 1000,
) -> LmEvalRows:
    """Run one lm-eval task (or group, or tag) on a model and return one row per document.

    ``task`` is an lm-eval name, with or without the ``lm-eval/`` prefix. ``include_path`` adds
    folders of task YAMLs (lm-eval's ``--include_path``); ``include_defaults=False`` skips indexing
    lm-eval's built-in tasks. ``seed`` seeds Python's ``random`` with ``seed`` and numpy, torch and
    few-shot sampling with ``1234 + seed``, so ``seed=0`` is exactly lm-eval's default seeding.
    Prompts are raw text unless ``apply_chat_template`` (then the adapter's chat template renders
    them). ``bootstrap_iters`` only affects the stderr of bootstrapped metrics (lm-eval: 100000).

    Each row: ``item_id`` (the doc id; ``<subtask>/<doc id>`` when the name covers several tasks),
    ``prompt`` (the rendered context of the document's first request), ``response`` (the generated
    text, or the option with the highest log-likelihood), ``score`` (the document's value of the
    task's first metric; None when that value is not a number, e.g. perplexity's pairs),
    ``correct`` (for 0/1 metrics such as acc and exact_match, else None), ``extracted`` (the filtered
    answer of generation tasks, the chosen option's index for log-likelihood ones), ``metric``,
    ``task``, ``target``, ``filter`` (the first of the task's filters, which the row reports) and
    ``metrics`` (every per-document metric under every filter, keyed ``"metric,filter"``).
    """
    import lm_eval

    from xkd_eval.lmeval.adapter import XkdLM

    name = lm_eval_task_name(task)
    if not name:
        raise UnknownNameError(f"name an lm-evaluation-harness task, e.g. {PREFIX}arc_easy")
    if isinstance(adapter, XkdLM):
        lm = adapter
        if batch_size is not None:
            lm.batch_size = int(batch_size)
    else:
        lm = XkdLM(adapter, batch_size=batch_size)
    paths: list[str | Path] = []
    if include_path is not None:
        paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    manager = _task_manager(tuple(str(Path(p).expanduser().resolve()) for p in paths), include_defaults)
    to_run, leaves = _load_tasks(manager, name)
    other_seed = 1234 + seed
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=to_run,
        task_manager=manager,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=True,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
        system_instruction=system_instruction,
        gen_kwargs=gen_kwargs,
        bootstrap_iters=bootstrap_iters,
        random_seed=seed,
        numpy_random_seed=other_seed,
        torch_random_seed=other_seed,
        fewshot_random_seed=other_seed,
    )
    if results is None:  # only on a non-zero rank of a distributed run, which XkdLM never is
        raise XkdError(f"lm-eval returned no results for task {name!r}")
    samples: dict[str, list[dict[str, Any]]] = results.pop("samples", {}) or {}
    prefix = len(leaves) > 1
    rows: list[dict[str, Any]] = []
    first_metric = first_filter = None
    for task_name in leaves:
        by_doc: dict[Any, list[dict[str, Any]]] = {}
        for sample in samples.get(task_name, []):
            by_doc.setdefault(sample["doc_id"], []).append(sample)
        for per_filter in by_doc.values():
            row = _row(task_name, leaves[task_name], per_filter[0], per_filter[1:], prefix)
            first_metric = first_metric or row["metric"]
            first_filter = first_filter or row["filter"]
            rows.append(row)
    aggregate = _aggregate(results, name, list(leaves))
    metric, value = _primary(aggregate, first_metric, first_filter)
    return LmEvalRows(rows, task=name, metric=metric, value=value, aggregate=aggregate, results=results)


__all__ = ["FAMILY", "LmEvalRows", "known_names", "lm_eval_task_name", "resolve", "run_lm_eval_task"]
