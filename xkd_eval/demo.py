"""``make demo``: the whole story on the embedded default, offline, on a CPU.

Stages, each timed: prepare the real parts (convert SmolLM2 and Whisper-base, assemble the organism and
merge its committed adapters), synthesise the spoken versions of the items measured, measure forgetting
and the gap of ``organism`` against ``organism-base`` (all three arms) into ``reports/measure/``, then the
remedy: the organism distilled from organism-base by ``distill/organism-hear-kd.yaml`` (its adapter is
committed, as the organism's is: ``organism-distilled``) measured before and after on mcq, qa and listen
into ``reports/distill/``. ``--retrain`` trains the distilled organism again from the recipe instead (half
an hour on 2 cores). The measurement includes the hearing probe (the organism repeats every clip it heard, so
the report tells a gap of hearing from one of understanding); ``--hearing-after`` probes the distilled
organism too (its hearing before and after), ``--no-hearing`` skips it.
Everything is cached: a rerun redoes nothing and takes seconds; a fresh clone reuses the committed answers
(``reports/*/results``), so it makes only the parts and the clips. From an empty cache every answer is made
again: about three quarters of an hour on 2 cores.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

# greedy answers for generated subsets; MCQs by cloze log-likelihood (organism's recommended mode: a 135M
# model cannot answer with a letter)
MEASURE_TASKS = ("builtin/mcq", "builtin/qa", "builtin/ifeval", "builtin/refusal", "builtin/listen")
MAX_NEW_TOKENS = 48
# every item of each subset: on all 920 MCQs the distilled organism's gap shrinkage is resolvable (on the first 300
# it needs about 700); --limit N keeps the first N items of each task for a quicker look
LIMIT: int | None = None
# before/after the distillation: knowledge (mcq, qa) and listening retention (listen)
DISTILL_EVAL = ("builtin/mcq", "builtin/qa", "builtin/listen")
DISTILL_RECIPE = Path(__file__).resolve().parents[1] / "distill" / "organism-hear-kd.yaml"


@dataclass
class StageClock:
    console: Console
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        self.console.rule(f"[bold]{name}")
        started = time.perf_counter()
        yield
        self.stages[name] = time.perf_counter() - started
        self.console.print(f"{name}: {self.stages[name]:.1f}s", highlight=False)

    def report(self) -> None:
        self.console.rule("[bold]wall time per stage")
        for name, seconds in self.stages.items():
            self.console.print(f"  {name:<40} {seconds:8.1f}s", highlight=False)
        self.console.print(f"  {'total':<40} {sum(self.stages.values()):8.1f}s", highlight=False)


def distill_stage(reports: Path, config, *, retrain: bool = False, diagnostics: tuple[str, ...] = ()) -> None:
    """The remedy on the embedded pair. The 'before' arms are the measurement just made (same models,
    prompts and settings), served from its results cache. By default the distilled student is the committed
    ``organism-distilled`` and its training record the committed one; ``retrain`` trains it again from the
    recipe into the cache (checkpoints, adapter, merged student) and measures that student instead."""
    import shutil

    from xkd_eval.distill.pipeline import run_distillation
    from xkd_eval.organism.trained import DISTILLED_ADAPTER_DIR, DISTILLED_NAME, retrain_dir
    from xkd_eval.runner.store import slug

    out = reports / "distill"
    for model in ("organism-base", "organism"):
        source, target = reports / "measure" / "results" / slug(model), out / "before" / "results" / slug(model)
        if source.exists():  # the measurement's answers are the 'before' arms, also when the organism changed
            shutil.copytree(source, target, dirs_exist_ok=True)
    common = dict(
        teacher=None, student=None, data=None, config=DISTILL_RECIPE, out=out, eval_tasks=DISTILL_EVAL,
        eval_config=config, diagnostics=diagnostics,
    )  # fmt: skip
    if not retrain:
        run_distillation(**common, distilled_name=DISTILLED_NAME, trained=DISTILLED_ADAPTER_DIR / "training.json")
        return
    from xkd_eval.distill.train import CheckpointMismatchError

    # measured as organism-distilled with the new training's adapter: its own revision (the adapter's hash)
    retrained = dict(
        train_dir=retrain_dir(), resume=True, distilled_name=DISTILLED_NAME,
        distilled_options={"adapter_dir": retrain_dir() / "adapter"},
    )  # fmt: skip
    try:  # a finished training of the same recipe and data is reused
        run_distillation(**common, **retrained)
    except CheckpointMismatchError as exc:
        # the cache's training was made from another recipe or other data (e.g. an older TTS): it is the
        # demo's own folder, so it is made again
        print(f"{exc}\nretraining from scratch in {retrain_dir()}")
        shutil.rmtree(retrain_dir())
        run_distillation(**common, **retrained)


def run_demo(
    reports: Path,
    *,
    limit: int | None = LIMIT,
    distill: bool = True,
    retrain: bool = False,
    hearing: bool = True,
    hearing_after: bool = False,
):
    from xkd_eval.models.base import GenerationSettings
    from xkd_eval.organism import smollm2_hf_dir
    from xkd_eval.organism.trained import distilled_student_dir, organism_dir
    from xkd_eval.runner.core import RunConfig, prepare_tasks
    from xkd_eval.runner.measure import measure

    clock = StageClock(Console())
    config = RunConfig(
        out_dir=reports / "measure",
        settings=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS),
        mcq_mode=None,  # the organism's recommended mode (cloze); the report says which applied
        batch_size=16,
        limit=limit,
        keep_other_revisions=False,  # the committed reports hold the current models' answers only
    )
    diagnostics = ("hearing",) if hearing else ()
    distill_diagnostics = ("hearing",) if hearing_after else ()
    with clock.stage("prepare the real parts (convert, assemble, merge adapters)"):
        smollm2_hf_dir()
        organism_dir()
        if distill and not retrain:
            distilled_student_dir()
    with clock.stage("synthesise the spoken items (TTS)"):
        prepare_tasks(MEASURE_TASKS, config)  # the items measured, each clip made once into the cache
    with clock.stage("measure organism vs organism-base"):
        measure(
            model="organism",
            base="organism-base",
            tasks=MEASURE_TASKS,
            arms=["base_text", "slm_text", "slm_speech"],
            config=config,
            diagnostics=diagnostics,
        )
    if distill:
        name = "retrain the distilled organism, measure before/after" if retrain else "measure organism-distilled"
        with clock.stage(f"{name} (remedy)"):
            distill_stage(
                reports,
                replace(config, out_dir=reports / "distill"),
                retrain=retrain,
                diagnostics=distill_diagnostics,
            )
    clock.report()
    return clock.stages
