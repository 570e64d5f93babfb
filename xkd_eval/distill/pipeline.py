"""``xkd-eval distill``: measure, distil, measure again, and report what changed.

With ``--eval`` tasks, the student is measured against the teacher (all three arms) before and after
training, on the same items and settings, into ``before/`` and ``after/``; ``report.md`` then shows by
how much forgetting and the gap shrank (paired over items), listening retention, and the training
curves per channel; with ``diagnostics=("hearing",)`` also how well the student repeats the clips.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.io import atomic_write_text

CHANNELS = {"both": (1.0, 1.0), "tt": (1.0, 0.0), "st": (0.0, 1.0)}


def run_distillation(
    *,
    teacher: str | None,
    student: str | None,
    data: str | None,
    config: str | Path,
    out: Path,
    eval_tasks: Sequence[str] = (),
    channels: str | None = None,
    resume: bool = False,
    eval_config: Any = None,
    train_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    distilled_name: str | None = None,
    diagnostics: Sequence[str] = (),
    trained: Path | None = None,
    distilled_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``train_dir`` (default ``out/train``) takes the checkpoints and the merged student, which are
    large; ``out`` keeps the measurements, ``training.json`` and the report. ``distilled_name``: a named
    model of the distilled student, measured under that name instead of its folder's path. ``trained``: the
    ``training.json`` of a finished training of this recipe whose student ``distilled_name`` loads (the
    demo's committed adapter): nothing is trained, the stages measure and report. ``distilled_options``: the
    named model's loading options (``adapter_dir`` of a new training)."""
    from xkd_eval.distill.config import load_kd_config
    from xkd_eval.distill.kd import distill
    from xkd_eval.distill.train import refuse_to_overwrite
    from xkd_eval.models.adapter_weights import MACHINE_PATHS
    from xkd_eval.runner.measure import measure

    train_dir = Path(train_dir) if train_dir else out / "train"
    if trained is not None and not distilled_name:
        raise XkdError("a finished training (trained=...) is measured through its named model: give distilled_name")
    if trained is None:
        refuse_to_overwrite(train_dir, resume)  # before the measurement, not an hour into it
    kd_config = load_kd_config(config)
    if overrides:
        kd_config = kd_config.replace(**overrides)
    if channels:
        tt, st = CHANNELS[channels]
        kd_config = kd_config.replace(tt_weight=tt, st_weight=st)
    teacher, student = teacher or kd_config.teacher, student or kd_config.student
    arms = ["base_text", "slm_text", "slm_speech"]
    if eval_tasks:
        from xkd_eval.runner.measure import with_mcq_mode

        # one MCQ mode before and after, the student's as it is now (its distilled self is compared with it)
        eval_config = with_mcq_mode(eval_config, student, teacher)
    # under torchrun every rank measures its share and trains; rank 0 gathers and writes the records
    leader = eval_config is None or eval_config.rank == 0
    if eval_tasks:
        measure(
            model=student, base=teacher, tasks=eval_tasks, arms=arms, config=eval_config.with_out(out / "before"),
            diagnostics=diagnostics,
        )  # fmt: skip
        if leader:
            from xkd_eval.runner.store import share_results
            from xkd_eval.tasks import get_task

            # the teacher does not change: its answers before serve after, instead of being generated again
            evaluated = [get_task(task).name for task in eval_tasks]
            share_results(teacher, out / "before" / "results", out / "after" / "results", tasks=evaluated)
    if trained is None:
        figures = distill(teacher, student, data, train_dir, kd_config, resume=resume)
        training = json.loads((train_dir / "training.json").read_text())
    else:
        training = json.loads(Path(trained).read_text())
        figures = dict(training)
    adapter = (training.get("model_spec") or "qwen2-audio:").split(":", 1)[0]
    distilled = distilled_name or f"{adapter}:{(train_dir / 'student').resolve()}"
    record = training | {"teacher": teacher, "student": student, "distilled_model": distilled}
    if distilled_name:  # the weights sit in this machine's cache, found by the name: no paths in the report
        for key in MACHINE_PATHS:
            record.pop(key, None)
    if leader:
        atomic_write_text(out / "training.json", json.dumps(record, indent=2))
    if eval_tasks:
        measure(
            model=distilled,
            base=teacher,
            tasks=eval_tasks,
            arms=arms,
            config=eval_config.with_out(out / "after"),
            diagnostics=diagnostics,
            # the encoder is frozen: the clips' encoder outputs from `before` serve `after` too
            model_options=distilled_options
            or ({"encoder_cache": True} if not distilled_name and adapter == "qwen2-audio" else None),
        )
        if leader:
            from xkd_eval.distill.report import write_distill_report

            write_distill_report(out)
    if leader:  # the other ranks' rows are merged by now (rank 0 waited for them)
        for leftover in ("before", "after"):
            shutil.rmtree(out / leftover / "shards", ignore_errors=True)
    return figures | {"distilled_model": distilled}
