"""One measurement end to end: tasks x arms x models -> per-item table, summary.json, report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.io import atomic_write_text
from xkd_eval.runner.core import ARMS, RunConfig, TaskRun, check_speech_ready, prepare_tasks, release, run_arm
from xkd_eval.runner.hearing import hearing_diagnostics, run_hearing

log = logging.getLogger(__name__)


def _speech_capable(spec: str) -> bool | None:
    """Whether the model can hear, decided without loading it (None: only loading can tell)."""
    from xkd_eval.models import NAMED_MODELS, adapter_class, resolve_adapter

    if spec in NAMED_MODELS:
        return None
    adapter, _ = resolve_adapter(spec)
    adapter_class(adapter).check_available()  # a missing engine is one line before any clip is made
    return adapter_class(adapter).supports_audio


def with_mcq_mode(config: RunConfig, model: str, base: str | None) -> RunConfig:
    """The config with the MCQ mode every arm uses (one mode: the arms are compared item by item) and where
    it came from: the command, else the speech LLM's recommended settings, else the base's, else generation.
    A config whose mode is already resolved is returned as it is."""
    from dataclasses import replace

    from xkd_eval.models import recommended_settings

    if config.mcq_mode_source is not None:
        return config
    if config.mcq_mode is not None:
        return replace(config, mcq_mode_source="set by the command")
    for spec in (model, base):
        mode = recommended_settings(spec).get("mcq_mode") if spec else None
        if mode:
            return replace(config, mcq_mode=mode, mcq_mode_source=f"recommended by {spec}; --mcq-mode overrides it")
    return replace(config, mcq_mode="generate", mcq_mode_source="the default (no recommendation for these models)")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )


def measure(
    *,
    model: str,
    base: str | None,
    tasks: Sequence[str],
    arms: Sequence[str],
    config: RunConfig,
    diagnostics: Sequence[str] = (),
    model_options: dict[str, Any] | None = None,
    base_options: dict[str, Any] | None = None,
) -> Path | None:
    """Run the arms, then (on rank 0) write items.parquet/csv, summary.json, report.md and plots.

    Returns the output folder on rank 0 and None on other ranks.
    """
    from xkd_eval.models import load_model

    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise XkdError(f"unknown arm(s) {unknown}; arms are {', '.join(ARMS)}")
    if "base_text" in arms and not base:
        raise XkdError("the base_text arm needs --base")
    if "hearing" in diagnostics and "slm_speech" not in arms:
        raise XkdError("--diagnostics hearing probes the clips of the speech arm: use it with `gap`")
    speech_capable = {spec: _speech_capable(spec) for spec in (model, base) if spec}  # unknown names fail here
    config = with_mcq_mode(config, model, base)
    timings: dict[str, float] = {}
    answered = 0

    def count_answered(n: int) -> None:
        nonlocal answered
        answered += n

    started = time.perf_counter()
    runs = prepare_tasks(tasks, config, audio="slm_speech" in arms)  # a text-only run makes no clips
    if "slm_speech" in arms:
        check_speech_ready(runs)
        if speech_capable[model] is False:
            raise XkdError(
                f"model {model} cannot take audio, so it has no speech arm (use `forgetting`, or a speech LLM)"
            )
    timings["load tasks"] = time.perf_counter() - started

    rows: list[dict[str, Any]] = []
    hearing_rows: list[dict[str, Any]] = []
    options = model_options or {}
    role_options = {"base": base_options or {}, "slm": options}
    with _progress() as progress:
        for role, spec in (("base", base), ("slm", model)):
            role_arms = [a for a in arms if ARMS[a][0] == role]
            if not role_arms or spec is None:
                continue
            t0 = time.perf_counter()
            adapter = load_model(spec, **role_options[role])
            timings[f"load {role} model"] = time.perf_counter() - t0
            for run in runs:
                for arm in role_arms:
                    share = len(run.items[config.rank :: config.world_size]) if not run.is_lm_eval else None
                    bar = progress.add_task(f"{arm:<10} {run.spec.name}", total=share)
                    t0 = time.perf_counter()
                    rows += run_arm(
                        adapter, spec, arm, run, config,
                        advance=lambda n, b=bar: progress.advance(b, n), answered=count_answered,
                    )  # fmt: skip
                    timings[f"{arm} {run.spec.name}"] = time.perf_counter() - t0
                if role == "slm" and "hearing" in diagnostics:
                    t0 = time.perf_counter()
                    bar = progress.add_task(f"{'hearing':<10} {run.spec.name}", total=None)
                    hearing_rows += run_hearing(
                        adapter, spec, run, config, advance=lambda n, b=bar: progress.advance(b, n),
                        total=lambda n, b=bar: progress.update(b, total=n),
                    )  # fmt: skip
                    timings[f"hearing {run.spec.name}"] = time.perf_counter() - t0
            release(adapter)
            del adapter

    out = Path(config.out_dir)
    if config.world_size > 1:
        rows = _gather(rows, out, config)
        hearing_rows = _gather(hearing_rows, out, config, name="hearing") if "hearing" in diagnostics else []
        if rows is None:
            return None
    diag: dict[str, Any] = {}
    if "kl" in diagnostics:
        diag["kl"] = _kl(model, base, runs, rows, config, options, base_options or {})
    if "hearing" in diagnostics:
        diag["hearing"] = hearing_diagnostics(hearing_rows, rows)
    # a run served wholly from the cache keeps the timings of the run that answered (the other ranks' counts are
    # not known here, so a multi-process run always writes them)
    if answered == 0 and config.world_size == 1 and (Path(config.out_dir) / "timings.json").exists():
        timings = None
    return write_outputs(
        rows,
        runs,
        model=model,
        base=base,
        config=config,
        timings=timings,
        diagnostics=diag,
        hearing=hearing_rows,
    )


def _gather(
    rows: list[dict[str, Any]], out: Path, config: RunConfig, timeout_s: float = 3600, name: str = "rows"
) -> list | None:
    """File-based merge across ranks: each rank writes its rows; rank 0 waits for all, then merges."""
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    atomic_write_text(shards / f"{name}.r{config.rank}.json", json.dumps(rows, default=str))
    if config.rank != 0:
        return None
    expected = [shards / f"{name}.r{r}.json" for r in range(config.world_size)]
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in expected):
        if time.monotonic() > deadline:
            missing = [p.name for p in expected if not p.exists()]
            raise XkdError(
                f"rank 0 waited {timeout_s:.0f}s for {missing}; rerun the missing ranks (results are cached)"
            )
        time.sleep(0.5)
    merged: list[dict[str, Any]] = []
    for path in expected:
        merged += json.loads(path.read_text())
    return merged


def _kl(model: str, base: str | None, runs: list[TaskRun], rows, config: RunConfig, options, base_options) -> dict:
    from xkd_eval.audio import load_all_audio
    from xkd_eval.models import load_model
    from xkd_eval.runner.diagnostics import check_same_vocabulary, kl_diagnostics

    slm = load_model(model, **options)
    base_model = load_model(base, **base_options) if base else None
    if base_model is not None:
        check_same_vocabulary(base_model, slm)
    source_arm = "base_text" if base else "slm_text"
    by_key = {(r["task"], r["item_id"], r["arm"]): r for r in rows}
    result: dict[str, Any] = {}
    for run in runs:
        items = list(run.items)
        responses = []
        for item in items:
            row = by_key.get((run.spec.name, item.id, source_arm))
            response = row["response"] if row and row.get("response") else None
            if response is None or row.get("mcq_mode") != "generate":
                response = item.reference  # ranked options are not free text: use the reference
            responses.append(response or "")
        audio, _ = load_all_audio(items) if slm.supports_audio and run.loaded.has_audio else ({}, [])
        result[run.spec.name] = kl_diagnostics(slm, base_model, items, responses, audio, batch_size=config.batch_size)
        result[run.spec.name]["targets"] = f"{source_arm} responses (references where none)"
    release(slm)
    release(base_model)
    return result


def write_outputs(
    rows,
    runs,
    *,
    model,
    base,
    config: RunConfig,
    timings: dict[str, float] | None,
    diagnostics=None,
    hearing=(),
) -> Path:
    """Write the tables, summary, report and plots; `timings` None leaves an earlier timings.json as it is.

    ``diagnostics`` (name -> per-task results) go into the summary; ``hearing`` rows into ``hearing.csv``.
    """
    import pandas as pd

    from xkd_eval.analysis import build_summary, write_tables
    from xkd_eval.models import backend_of
    from xkd_eval.report import write_report

    out = Path(config.out_dir)
    t0 = time.perf_counter()
    # one canonical row order (tasks, then each task's items, then arms) whatever the cache served first:
    # the bootstrap resamples rows, so the same results must give the same CIs and the same files
    position = {(run.spec.name, item.id): (t, i) for t, run in enumerate(runs) for i, item in enumerate(run.items)}
    arm_order = {arm: i for i, arm in enumerate(ARMS)}

    def canonical(row) -> tuple:
        where = position.get((row["task"], row["item_id"]), (len(runs), 0))
        return (*where, str(row["task"]), str(row["item_id"]), arm_order.get(row["arm"], len(ARMS)))

    table = pd.DataFrame(sorted(rows, key=canonical))
    breakdowns = {run.spec.name: list(run.breakdowns) for run in runs}
    summary = build_summary(table, model=model, base=base, breakdowns=breakdowns)
    summary["backends"] = {role: backend_of(spec) for role, spec in (("model", model), ("base", base)) if spec}
    summary["settings"] = {
        "generation": config.settings.record(),
        "mcq_mode": config.mcq_mode,
        **({"mcq_mode_source": config.mcq_mode_source} if config.mcq_mode_source else {}),
        "compat": config.compat,
        "batch_size": config.batch_size,
        "limit": config.limit,
        "world_size": config.world_size,
    }
    if diagnostics:
        summary["diagnostics"] = diagnostics
    write_tables(table, out, summary)
    if hearing:
        heard = pd.DataFrame(list(hearing)).sort_values(["task", "item_id"], key=lambda c: c.map(str))
        atomic_write_text(out / "hearing.csv", heard.to_csv(index=False))
    write_report(out)
    if timings is not None:
        timings["write outputs"] = time.perf_counter() - t0
        atomic_write_text(out / "timings.json", json.dumps(timings, indent=2))
    return out
