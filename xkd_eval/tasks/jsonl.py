"""User data: ``jsonl:<path>``, one item a line.

Fields: ``id``, ``prompt`` (the written query), optional ``audio`` (a WAV/FLAC path relative to the
file), optional ``question_audio`` (a clip of a multiple-choice question without its options, relative
to the file: what a cloze-scored spoken arm hears), ``reference`` (a string or a list of acceptable
strings), optional ``choices``, optional ``scorer``; every other field is kept in the item's metadata
for the scorer (``instruction_id_list`` and ``kwargs`` for ifeval, ``subtask`` for bbh, ...).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xkd_eval.errors import DataFormatError
from xkd_eval.records import QUESTION_AUDIO, AudioRef, Item
from xkd_eval.tasks.base import LoadedTask, LoadProblem, TaskSpec

CORE_FIELDS = ("id", "prompt", "audio", "reference", "choices", "scorer")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, record, error) for each non-blank line; a bad line yields an error, not a raise."""
    if not path.is_file():
        raise DataFormatError(f"JSONL file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(record, dict):
                yield number, None, f"expected a JSON object, got {type(record).__name__}"
                continue
            yield number, record, None


def read_whole_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each non-blank line of a file that must be whole (training data): the
    first bad line raises, naming the file and the line."""
    for number, record, error in read_jsonl(path):
        if error is not None:
            raise DataFormatError(f"{path}:{number}: {error}; fix or remove that line")
        yield number, record


def resolve_path(value: Any, base_dir: Path | None) -> str:
    """A path from a record: ``~`` expanded, relative ones taken from ``base_dir`` (the file's folder)."""
    path = Path(str(value)).expanduser()
    return str(base_dir / path if base_dir is not None and not path.is_absolute() else path)


def references_of(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return (str(value),)


def item_from_record(record: dict[str, Any], *, task: str, base_dir: Path | None, fallback_id: str) -> Item:
    """An Item from one user record. Raises ValueError with the reason when a field is unusable."""
    prompt = record.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError("'prompt' must be a string")
    choices = record.get("choices") or ()
    if not isinstance(choices, list | tuple):
        raise ValueError("'choices' must be a list of strings")
    audio = AudioRef(path=resolve_path(record["audio"], base_dir)) if record.get("audio") else None
    metadata = {k: v for k, v in record.items() if k not in CORE_FIELDS}
    if record.get(QUESTION_AUDIO):
        metadata[QUESTION_AUDIO] = resolve_path(record[QUESTION_AUDIO], base_dir)
    return Item(
        id=str(record.get("id", fallback_id)),
        task=task,
        prompt=prompt or "",
        references=references_of(record.get("reference")),
        choices=tuple(str(c) for c in choices),
        audio=audio,
        scorer=record.get("scorer"),
        metadata=metadata,
    )


def spec(path: str, scorer: str | None = None) -> TaskSpec:
    file = Path(path).expanduser()
    name = f"jsonl:{path}"

    def loader(_data_dir: Path | None, _limit: int | None) -> LoadedTask:
        return load_jsonl(file, name=name, scorer=scorer)

    return TaskSpec(
        name=name,
        scorer=scorer or "auto",
        description=f"user items from {file}",
        speech=True,
        loader=loader,
    )


def load_jsonl(path: Path, *, name: str, scorer: str | None = None) -> LoadedTask:
    items: list[Item] = []
    problems: list[LoadProblem] = []
    seen: set[str] = set()
    for number, record, error in read_jsonl(path):
        where = f"{path}:{number}"
        if error:
            problems.append(LoadProblem(where, error))
            continue
        if "id" not in record or "prompt" not in record:
            problems.append(LoadProblem(where, "each line needs 'id' and 'prompt'"))
            continue
        try:
            item = item_from_record(record, task=name, base_dir=path.parent, fallback_id=str(number))
        except ValueError as exc:
            problems.append(LoadProblem(where, str(exc)))
            continue
        if item.id in seen:
            problems.append(LoadProblem(where, f"duplicate id {item.id!r} (kept the first)"))
            continue
        seen.add(item.id)
        if scorer:  # --scorer overrides the per-line choice
            item = Item(**{**item.__dict__, "scorer": scorer})
        items.append(item)
    if not items and problems:
        raise DataFormatError(f"{path}: no usable line; first problem at {problems[0].where}: {problems[0].reason}")
    return LoadedTask(name, tuple(items), tuple(problems))
