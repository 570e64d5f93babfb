"""The ``xkd-eval`` command line. Heavy libraries load inside commands, so ``--help`` is instant."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

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


@app.command()
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
    try:
        report = score_file(
            file, scorer, out, compat=compat.value if compat else None, judge=judge_config, use_judge=judge
        )
    except XkdError as exc:
        fail(str(exc))
    report.print()
    if report.problems:
        raise typer.Exit(1)


@app.command("tasks")
def list_tasks() -> None:
    """List the task names xkd-eval knows."""
    from xkd_eval.tasks import all_task_names

    for name in all_task_names():
        typer.echo(name)


def main() -> None:  # pragma: no cover - console entry
    try:
        app()
    except XkdError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
