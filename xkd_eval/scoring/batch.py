"""``xkd-eval score``: score a JSONL of saved responses, with no model in the loop."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xkd_eval.errors import DataFormatError
from xkd_eval.io import atomic_write_text
from xkd_eval.records import Score
from xkd_eval.scoring import SCORERS, ScorerSpec
from xkd_eval.scoring.open_judge import JudgeConfig
from xkd_eval.tasks.base import LoadProblem
from xkd_eval.tasks.jsonl import item_from_record, read_jsonl


@dataclass
class ScoreReport:
    scorer: str
    compat: str | None
    summary: dict[str, Any]
    out: Path
    problems: list[LoadProblem] = field(default_factory=list)

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(stderr=False)
        for problem in self.problems:
            console.print(f"[yellow]skipped[/] {problem.where}: {problem.reason}", highlight=False, soft_wrap=True)
        title = f"{self.scorer}" + (f" (compat={self.compat})" if self.compat else "")
        table = Table(title=title, show_header=True)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in self.summary.items():
            shown = f"{value:.2f}" if isinstance(value, float) and math.isfinite(value) else str(value)
            table.add_row(key, shown)
        table.add_row("skipped lines", str(len(self.problems)))
        console.print(table)
        console.print(f"wrote {self.out}", highlight=False, soft_wrap=True)


def _line_fields(record: dict[str, Any], spec: ScorerSpec) -> dict[str, Any]:
    """The record in the shape item_from_record expects (MMAU's own field names accepted)."""
    fields = dict(record)
    if "reference" not in fields and "answer" in fields:
        fields["reference"] = fields["answer"]
    if spec.name == "ifeval" and "prompt" in fields:
        fields["ifeval_prompt"] = fields["prompt"]
    return fields


def output_fields(spec: ScorerSpec, score: Score) -> dict[str, Any]:
    fields: dict[str, Any] = {"extracted": score.extracted, "correct": score.correct}
    if spec.name == "refusal":
        fields["refused"] = bool(score.details.get("refused"))
    elif spec.name == "ifeval":
        fields.update(score.details)
    elif spec.name in ("open", "qa"):
        fields["score"] = score.value
        fields.update(score.details)
    return fields


def score_file(
    path: Path,
    scorer: str,
    out: Path,
    *,
    compat: str | None = None,
    judge: JudgeConfig | None = None,
    use_judge: bool = False,
) -> ScoreReport:
    spec = SCORERS.get(scorer)
    if compat and not spec.compat_modes:
        raise DataFormatError(f"scorer {spec.name!r} has no --compat modes (only mcq, bbh and refusal do)")
    options: dict[str, Any] = {}
    if spec.name == "open" or spec.name == "qa" and use_judge:
        options["judge"] = judge or JudgeConfig()
    problems: list[LoadProblem] = []
    scores: list[Score] = []
    lines: list[str] = []
    for number, record, error in read_jsonl(path):
        where = f"{path}:{number}"
        if error:
            problems.append(LoadProblem(where, error))
            continue
        response = record.get("response", record.get("model_output"))
        if not isinstance(response, str):
            problems.append(LoadProblem(where, "needs a string 'response' (or 'model_output')"))
            continue
        missing = [f for f in spec.required_fields if f not in record and not (f == "reference" and "answer" in record)]
        if missing:
            problems.append(LoadProblem(where, f"scorer {spec.name!r} needs field(s) {missing}"))
            continue
        try:
            item = item_from_record(
                _line_fields(record, spec), task=f"jsonl:{path}", base_dir=None, fallback_id=str(number)
            )
            score = spec.score(item, response, compat=compat, **options)
        except (ValueError, TypeError) as exc:
            problems.append(LoadProblem(where, str(exc)))
            continue
        scores.append(score)
        lines.append(json.dumps(record | output_fields(spec, score), ensure_ascii=False))
    if not scores and problems:
        raise DataFormatError(
            f"{path}: no line could be scored; first problem at {problems[0].where}: {problems[0].reason}"
        )
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    used_compat = (compat or spec.default_compat) if spec.compat_modes else None
    return ScoreReport(spec.name, used_compat, spec.summarize(scores), out, problems)
