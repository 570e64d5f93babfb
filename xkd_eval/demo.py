"""``make demo``: the whole story on the embedded default, offline, on a CPU.

Stages, each timed: prepare the real parts (convert SmolLM2 and Whisper-base, assemble and adapt the
organism), synthesise the built-in benchmark's spoken versions, measure forgetting and the gap of
``organism`` against ``organism-base`` (all three arms, and how well the organism hears each spoken
query: ``--diagnostics hearing``) into ``reports/measure/``, then the remedy:
distil ``organism`` from ``organism-base`` (``distill/organism-dictation.yaml``) and measure it again on mcq, qa
and listen into ``reports/distill/`` (``--no-distill`` stops after the measurement). Everything is
cached: a rerun redoes nothing and takes seconds.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

# greedy answers for generated subsets; MCQs by cloze log-likelihood, which a 135M model needs
MEASURE_TASKS = ("builtin/mcq", "builtin/qa", "builtin/ifeval", "builtin/refusal", "builtin/listen")
MCQ_MODE = "cloze"
MAX_NEW_TOKENS = 48
# does the organism hear its spoken questions? (the gap's first suspect; reports/measure's "Hearing" section)
MEASURE_DIAGNOSTICS = ("hearing",)
# before/after the distillation: knowledge (mcq, qa) and listening retention (listen)
DISTILL_EVAL = ("builtin/mcq", "builtin/qa", "builtin/listen")
# the recipe that also dictates its questions: the one whose gap shrinkage the 920 MCQs resolve (README); its 260
# steps are estimated, not measured, to fit the demo's budget where bf16 is native
DISTILL_RECIPE = Path(__file__).resolve().parents[1] / "distill" / "organism-dictation.yaml"
DISTILL_LIMIT = None  # every item of each task, before and after (the teacher's answers are reused)
# none: the probe would add a generation per clip to the stage (the measurement has it; the whole-LLM report,
# reports/distill-whole-llm, shows it after a dictation recipe, whose student still repeats on request)
DISTILL_DIAGNOSTICS: tuple[str, ...] = ()


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


def distill_stage(reports: Path, config) -> None:
    """The remedy on the embedded pair. The 'before' arms are the measurement just made (same models,
    prompts and settings), served from its results cache; checkpoints and the merged student go to the
    cache folder, not into the reports."""
    import shutil

    from xkd_eval.distill.pipeline import run_distillation
    from xkd_eval.organism.trained import DISTILLED_NAME, distilled_dir
    from xkd_eval.runner.store import slug

    out = reports / "distill"
    # the models just measured are the 'before' ones: their answers are kept (run_distillation hands the
    # teacher's on to 'after')
    for model in ("organism-base", "organism"):
        source, target = reports / "measure" / "results" / slug(model), out / "before" / "results" / slug(model)
        if source.exists() and not target.exists():
            shutil.copytree(source, target)
    from dataclasses import replace

    from xkd_eval.distill.train import CheckpointMismatchError

    def distil():
        run_distillation(
            teacher=None, student=None, data=None, config=DISTILL_RECIPE, out=out, eval_tasks=DISTILL_EVAL,
            eval_config=replace(config, limit=config.limit or DISTILL_LIMIT), train_dir=distilled_dir(),
            resume=True, distilled_name=DISTILLED_NAME,  # a finished training on the same data is reused
            diagnostics=DISTILL_DIAGNOSTICS,
        )  # fmt: skip

    try:
        distil()
    except CheckpointMismatchError as exc:
        # the cache's training was made from another recipe or other data (e.g. an older TTS): it is the
        # demo's own folder, so it is made again
        print(f"{exc}\nretraining from scratch in {distilled_dir()}")
        shutil.rmtree(distilled_dir())
        distil()


def run_demo(reports: Path, *, limit: int | None = None, distill: bool = True):
    from xkd_eval.builtin import ensure_builtin_audio
    from xkd_eval.models.base import GenerationSettings
    from xkd_eval.organism import smollm2_hf_dir
    from xkd_eval.organism.trained import organism_dir
    from xkd_eval.runner.core import RunConfig
    from xkd_eval.runner.measure import measure

    clock = StageClock(Console())
    with clock.stage("prepare the real parts (convert, assemble, adapt)"):
        smollm2_hf_dir()
        organism_dir()
    with clock.stage("synthesise the built-in benchmark (TTS)"):
        for task in MEASURE_TASKS:
            ensure_builtin_audio(task.split("/", 1)[1])
    with clock.stage("measure organism vs organism-base"):
        config = RunConfig(
            out_dir=reports / "measure",
            settings=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS),
            mcq_mode=MCQ_MODE,
            batch_size=16,
            limit=limit,
            keep_other_revisions=False,  # the committed reports hold the current models' answers only
        )
        measure(
            model="organism",
            base="organism-base",
            tasks=MEASURE_TASKS,
            arms=["base_text", "slm_text", "slm_speech"],
            config=config,
            diagnostics=MEASURE_DIAGNOSTICS,
        )
    if distill:
        with clock.stage("distil organism from organism-base, measure before/after"):
            distill_stage(reports, config)
    clock.report()
    return clock.stages
