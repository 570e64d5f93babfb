"""The ``xkd-eval`` command line. Heavy libraries load inside commands, so ``--help`` is instant."""

from __future__ import annotations

import functools
import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from xkd_eval.errors import XkdError

app = typer.Typer(
    name="xkd-eval",
    help="Measure catastrophic forgetting and the modality gap of speech LLMs; repair them by "
    "cross-modal knowledge distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Compat(str, Enum):
    voicebench = "voicebench"
    robust = "robust"


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def command(name: str | None = None):
    """Register a command whose XkdError (a bad name, file or setting: the message says what to do) ends it
    with `error: ...` and exit code 2, in this one place."""

    def register(func):
        @functools.wraps(func)
        def run(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except XkdError as exc:
                fail(str(exc))

        app.command(name)(run)
        return func

    return register


@command()
def score(
    file: Annotated[Path, typer.Argument(help="JSONL of saved responses (one object a line).")],
    scorer: Annotated[str, typer.Option(help="mcq, bbh, ifeval, refusal, mmau, qa or open.")],
    out: Annotated[Path, typer.Option(help="Where to write the scored JSONL.")],
    compat: Annotated[
        Compat | None,
        typer.Option(help="mcq/bbh/refusal: 'voicebench' = the official rules; 'robust' = ours."),
    ] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint for the 'open' judge (and qa --judge).")
    ] = None,
    judge_model: Annotated[str, typer.Option(help="Judge model name.")] = "gpt-4o-mini",
    judge: Annotated[bool, typer.Option(help="qa: add the judge's yes/no vote to the containment rule.")] = False,
) -> None:
    """Score saved responses, without any model: adds `extracted` and `correct` to every line."""
    from xkd_eval.scoring.batch import score_file
    from xkd_eval.scoring.open_judge import JudgeConfig

    judge_config = None
    if judge_url or judge or scorer == "open":
        judge_config = JudgeConfig(base_url=judge_url or JudgeConfig.base_url, model=judge_model)
    report = score_file(file, scorer, out, compat=compat.value if compat else None, judge=judge_config, use_judge=judge)
    report.print()
    if report.problems:
        raise typer.Exit(1)


class McqMode(str, Enum):
    generate = "generate"
    letter = "letter"
    cloze = "cloze"


ModelOpt = Annotated[
    str, typer.Option("--model", help="The speech LLM: ADAPTER:ID_OR_PATH, a bare id/path, or a name.")
]
TasksOpt = Annotated[
    list[str], typer.Option("--task", help="Task name (repeatable): voicebench/<config>, mmau-mini, ...")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (results are cached there; reruns resume).")]
LimitOpt = Annotated[int | None, typer.Option(help="Only the first N items of each task.")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Local copy of the benchmark data (hub layout).")]
McqOpt = Annotated[
    McqMode | None,
    typer.Option(
        help="MCQ by generation, or by option log-likelihood (letter, or cloze over option texts). Default: what "
        "the model recommends (the organism family: cloze), else generate; the report says which applied."
    ),
]
BatchOpt = Annotated[int, typer.Option(help="Items per forward pass (results do not depend on it).")]
TokensOpt = Annotated[int, typer.Option(help="Longest generated answer, in tokens (greedy decoding).")]
CompatOpt = Annotated[Compat | None, typer.Option(help="mcq/bbh/refusal scoring: voicebench (official) or robust.")]
JudgeUrlOpt = Annotated[str | None, typer.Option(help="OpenAI-compatible judge endpoint for open-ended tasks.")]
JudgeModelOpt = Annotated[str, typer.Option(help="Judge model name.")]
DIAGNOSTICS = ("kl", "hearing")
DiagOpt = Annotated[
    list[str],
    typer.Option(
        "--diagnostics",
        help="Extra judge-free diagnostics: kl (token-level KL of forgetting and gap); hearing (gap only: the speech "
        "LLM repeats each clip, and the gap is split by how well it heard).",
    ),
]
LmEvalIncludeOpt = Annotated[
    Path | None, typer.Option(help="Folder of extra lm-eval task YAMLs for lm-eval/<task> (its --include_path).")
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
TensorParallelOpt = Annotated[
    int | None,
    typer.Option(help="vllm: models: GPUs per engine (data parallel: one process per engine, RANK/WORLD_SIZE)."),
]
ApiBaseOpt = Annotated[
    str | None, typer.Option(help="openai: models: the endpoint (default: OPENAI_BASE_URL, else OpenAI's API).")
]
BaseApiBaseOpt = Annotated[
    str | None, typer.Option(help="openai: base model served elsewhere: its endpoint (default: --api-base's).")
]
ConcurrencyOpt = Annotated[int | None, typer.Option(help="openai: models: requests in flight at once (default 8).")]


def _check_diagnostics(diagnostics: list[str]) -> None:
    unknown = [d for d in diagnostics if d not in DIAGNOSTICS]
    if unknown:
        fail(f"unknown diagnostics {unknown}; available: {', '.join(DIAGNOSTICS)}")


def _measurement_options(
    *,
    out: OutOpt,
    task: TasksOpt,
    limit: LimitOpt = None,
    data_dir: DataDirOpt = None,
    mcq_mode: McqOpt = None,
    batch_size: BatchOpt = 8,
    max_new_tokens: TokensOpt = 96,
    compat: CompatOpt = None,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = "gpt-4o-mini",
    diagnostics: DiagOpt = [],  # noqa: B006 - typer reads the default
    device: DeviceOpt = None,
    lm_eval_include: LmEvalIncludeOpt = None,
    tensor_parallel_size: TensorParallelOpt = None,
    api_base: ApiBaseOpt = None,
    base_api_base: BaseApiBaseOpt = None,
    max_concurrency: ConcurrencyOpt = None,
) -> None:
    """The options every measuring command takes, declared once (``measures`` adds them to a command)."""


def measures(func):
    """A measuring command: ``func`` takes the models and returns the arms to run; its options are followed
    by ``_measurement_options``', and the command runs ``measure`` on those arms and prints the summary."""
    own = inspect.signature(func, eval_str=True)
    shared = inspect.signature(_measurement_options, eval_str=True)

    @functools.wraps(func)
    def run(**options):
        models = {name: options.pop(name) for name in own.parameters}
        _measure(models=models, arms=func(**models), **options)

    run.__signature__ = own.replace(parameters=[*own.parameters.values(), *shared.parameters.values()])
    del run.__wrapped__  # typer reads the signature above, not the command's own
    return run


def _measure(
    *, models, arms, out, task, limit, data_dir, mcq_mode, batch_size, max_new_tokens, compat, judge_url,
    judge_model, diagnostics, device, lm_eval_include, tensor_parallel_size, api_base, base_api_base,
    max_concurrency,
) -> None:  # fmt: skip
    from xkd_eval.models.base import GenerationSettings
    from xkd_eval.runner.core import RunConfig
    from xkd_eval.runner.measure import measure
    from xkd_eval.scoring.open_judge import JudgeConfig

    _check_diagnostics(diagnostics)
    config = RunConfig.sharded_from_env(
        out_dir=out,
        settings=GenerationSettings(max_new_tokens=max_new_tokens),
        mcq_mode=mcq_mode.value if mcq_mode else None,  # None: what the model recommends, else generate
        batch_size=batch_size,
        limit=limit,
        data_dir=data_dir,
        compat=compat.value if compat else None,
        judge=JudgeConfig(base_url=judge_url, model=judge_model) if judge_url else None,
        lm_eval_include=lm_eval_include,
    )
    from xkd_eval.models import backend_of, options_for, unused_engine_options

    given = {"device": device, "tensor_parallel_size": tensor_parallel_size, "api_base": api_base,
             "max_concurrency": max_concurrency}  # fmt: skip
    unused = unused_engine_options([models["model"], models.get("base")], given)
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        fail(f"only vllm: and openai: models take {flags}, and neither --model nor --base is one of them")
    if base_api_base and backend_of(models.get("base") or "") != "openai":
        fail("--base-api-base is the endpoint of an openai: --base; the base here is not one")
    written = measure(
        model=models["model"], base=models.get("base"), tasks=task, arms=arms, config=config,
        diagnostics=diagnostics, model_options=options_for(models["model"], given),
        base_options=options_for(models["base"], given | {"api_base": base_api_base or api_base})
        if models.get("base") else None,
    )  # fmt: skip
    if written is not None:
        _print_summary(written)


def _print_summary(folder: Path) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    summary = json.loads((folder / "summary.json").read_text())
    table = Table(title=f"{summary.get('model')} vs {summary.get('base') or '-'}")
    for column in ("task", "n", "base_text", "slm_text", "slm_speech", "forgetting", "gap"):
        table.add_column(column, justify="right" if column != "task" else "left")

    def cell(block):
        if not block:
            return "-"
        value = block.get("score", block.get("delta"))
        lo, hi = block.get("ci") or (None, None)
        return f"{value:.1f} [{lo:.1f}, {hi:.1f}]" if value is not None and lo is not None else str(value)

    for task in summary["tasks"]:
        arms = task.get("arms", {})
        table.add_row(
            task["task"], str(task.get("n")), cell(arms.get("base_text")), cell(arms.get("slm_text")),
            cell(arms.get("slm_speech")), cell(task.get("forgetting")), cell(task.get("gap")),
        )  # fmt: skip
    console = Console()
    console.print(table)
    timings = folder / "timings.json"
    if timings.exists():
        console.print("stage timings of the last run that answered anything (timings.json):", highlight=False)
        for stage, seconds in json.loads(timings.read_text()).items():
            console.print(f"  {stage}: {seconds:.1f}s", highlight=False)
    console.print(f"report: {folder / 'report.md'}", highlight=False, soft_wrap=True)


@command()
@measures
def forgetting(
    model: ModelOpt, base: Annotated[str, typer.Option(help="The text LLM the speech LLM was built from.")]
) -> list[str]:
    """Catastrophic forgetting: the speech LLM and its base LLM on the same written queries."""
    return ["base_text", "slm_text"]


@command()
@measures
def gap(
    model: ModelOpt,
    base: Annotated[str | None, typer.Option(help="Also run the base LLM: the three-arm decomposition.")] = None,
) -> list[str]:
    """The modality gap: the speech LLM on written vs spoken queries (with --base: all three arms)."""
    return (["base_text"] if base else []) + ["slm_text", "slm_speech"]


@command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="One run folder, or several to compare side by side.")],
    out: Annotated[Path | None, typer.Option(help="Where a comparison is written (default: the first run).")] = None,
) -> None:
    """Rebuild the report from saved results; with several folders, compare the runs."""
    from xkd_eval.report import compare_runs, write_report

    for folder in runs:
        if not (folder / "summary.json").is_file():
            fail(f"{folder} has no summary.json: not an xkd-eval run folder")
    if len(runs) == 1:
        typer.echo(write_report(runs[0]))
    else:
        typer.echo(compare_runs(runs, out or runs[0] / "compare"))


@command()
def tts(
    task: Annotated[str, typer.Argument(help="Text task to speak: builtin/mcq, voicebench/sd-qa, jsonl:FILE ...")],
    out: Annotated[Path, typer.Option(help="Folder for the spoken copy (a jsonl: task with audio/).")],
    voice: Annotated[
        list[str], typer.Option(help="Voices, e.g. piper:joe, espeak:en-us, espeak:en-gb-x-rp (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default
    limit: LimitOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make spoken versions of any text task with offline TTS (cached, deterministic voice per item)."""
    from xkd_eval.tts import tts_command

    export = tts_command(task, out, voice or None, data_dir=data_dir, limit=limit)
    typer.echo(export.summary())
    for item_id, reason in export.problems:
        typer.secho(f"skipped {item_id}: {reason}", fg=typer.colors.YELLOW)


class Channels(str, Enum):
    both = "both"
    tt = "tt"
    st = "st"


@command()
def distill(
    out: OutOpt,
    teacher: Annotated[str | None, typer.Option(help="The text LLM teacher (default: the recipe's).")] = None,
    student: Annotated[
        str | None,
        typer.Option(help="The speech LLM student, Qwen2-Audio-style or Qwen2.5-Omni (default: the recipe's)."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="JSONL of instructions (and responses), or hub:Open-Orca/OpenOrca.")
    ] = None,
    config: Annotated[Path, typer.Option(help="The recipe (distill/*.yaml).")] = Path("distill/organism-hear-kd.yaml"),
    eval_task: Annotated[
        list[str], typer.Option("--eval", help="Measure forgetting and the gap on these tasks before and after.")
    ] = [],  # noqa: B006 - typer reads the default
    channels: Annotated[
        Channels | None, typer.Option(help="Ablation: both channels, T→T only (tt) or S→T only (st).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue training from the last checkpoint in --out (a finished one is reused).")
    ] = False,
    set_field: Annotated[
        list[str],
        typer.Option("--set", help="Change one recipe field, KEY=VALUE (a YAML value), e.g. --set st_weight=4."),
    ] = [],  # noqa: B006 - typer reads the default
    limit: LimitOpt = None,
    mcq_mode: McqOpt = None,
    batch_size: BatchOpt = 16,
    max_new_tokens: TokensOpt = 48,
    diagnostics: DiagOpt = [],  # noqa: B006 - typer reads the default
) -> None:
    """Cross-modal knowledge distillation (T→T + S→T) with before/after measurements."""
    from xkd_eval.distill.pipeline import run_distillation
    from xkd_eval.models.base import GenerationSettings
    from xkd_eval.runner.core import RunConfig

    _check_diagnostics(diagnostics)
    if diagnostics and not eval_task:
        fail("--diagnostics runs with the before/after measurements: add --eval TASK")

    # under torchrun each rank answers its share of the before/after measurements, as `gap` does
    eval_config = RunConfig.sharded_from_env(
        out_dir=out / "before", settings=GenerationSettings(max_new_tokens=max_new_tokens),
        mcq_mode=mcq_mode.value if mcq_mode else None, batch_size=batch_size, limit=limit,
    )  # fmt: skip
    figures = run_distillation(
        teacher=teacher, student=student, data=data, config=config, out=out, eval_tasks=eval_task,
        channels=channels.value if channels else None, resume=resume, eval_config=eval_config,
        overrides=_field_changes(set_field), diagnostics=diagnostics,
    )  # fmt: skip
    typer.echo(f"distilled student: {figures['distilled_model']}")
    if eval_task:
        typer.echo(f"report: {out / 'report.md'}")


def _field_changes(assignments: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` options as recipe field changes; the values are read as YAML (4 -> 4, null -> None)."""
    import yaml

    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            fail(f"--set expects KEY=VALUE (e.g. --set st_weight=4), got {assignment!r}")
        try:
            changes[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            fail(f"--set {assignment!r}: the value is not valid YAML ({exc})")
    return changes


@command("adapt-organism")
def adapt_organism(
    out: Annotated[Path, typer.Option(help="Where the adapter weights, checkpoints and training.json go.")],
    config: Annotated[Path, typer.Option(help="The recipe.")] = Path("distill/organism-hear.yaml"),
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    set_field: Annotated[
        list[str],
        typer.Option("--set", help="Change one recipe field, KEY=VALUE (a YAML value), e.g. --set init_adapter=DIR."),
    ] = [],  # noqa: B006 - typer reads the default
) -> None:
    """Rebuild the embedded organism: speech adaptation (projector + LoRA, cross-entropy on spoken examples)."""
    import json

    from xkd_eval.organism.adapt import adapt_organism as run
    from xkd_eval.organism.adapt import load_config

    recipe = load_config(config)
    changes = _field_changes(set_field)
    figures = run(recipe.replace(**changes) if changes else recipe, out, resume=resume)
    typer.echo(json.dumps(figures, indent=2, default=str))


@command()
def demo(
    reports: Annotated[Path, typer.Option(help="Where the reference reports are written.")] = Path("reports"),
    limit: Annotated[int | None, typer.Option(help="Only the first N items of each task (a quicker look).")] = None,
    distill: Annotated[
        bool, typer.Option(help="Then measure the distilled organism before/after (reports/distill).")
    ] = True,
    retrain: Annotated[
        bool,
        typer.Option(help="Train the distilled organism again from its recipe instead of the committed adapter."),
    ] = False,
    hearing: Annotated[
        bool, typer.Option(help="Probe how well the organism hears each clip (the hearing section of reports/measure).")
    ] = True,
    hearing_after: Annotated[
        bool, typer.Option(help="Probe the distilled organism too: its hearing before → after (a few minutes more).")
    ] = False,
) -> None:
    """The whole story on the embedded default, offline on a CPU (what `make demo` runs)."""
    from xkd_eval.demo import run_demo

    run_demo(reports, limit=limit, distill=distill, retrain=retrain, hearing=hearing, hearing_after=hearing_after)


@command()
def export(
    name: Annotated[str, typer.Argument(help="organism-base, organism or organism-distilled.")],
    out: Annotated[Path, typer.Option(help="A new folder for the checkpoint.")],
) -> None:
    """Write a named model of the embedded default as a stock checkpoint that transformers and serving
    engines load (the speech LLMs as Qwen2-Audio with a Qwen2 language model)."""
    from xkd_eval.organism.export import export_named_model

    typer.echo(export_named_model(name, out))


@command("tasks")
def list_tasks() -> None:
    """List the task names xkd-eval knows."""
    from xkd_eval.tasks import all_task_names

    for name in all_task_names():
        typer.echo(name)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":
    main()
