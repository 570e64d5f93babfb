"""MMAU-mini (Sakshi113/MMAU): the official ``mmau-test-mini.json`` plus its audio folder.

MMAU-mini measures listening. A written version has no audio to listen to, so it serves as a
before/after retention check of distillation, not as a gap task.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from xkd_eval.errors import DataFormatError
from xkd_eval.records import AudioRef, Item
from xkd_eval.tasks.base import LoadedTask, LoadProblem, TaskSpec

HUB_ID = "gamma-lab-umd/MMAU-test-mini"
JSON_NAME = "mmau-test-mini.json"
REQUIRED_KEYS = ("id", "audio_id", "question", "choices", "answer")


def spec() -> TaskSpec:
    return TaskSpec(
        name="mmau-mini",
        scorer="mmau",
        description="MMAU test-mini: 1000 audio MCQs over sound, music and speech",
        speech=True,
        loader=lambda data_dir, _limit: load_mmau(data_dir),
        breakdowns=("mmau_task", "difficulty", "sub_category"),
    )


def _locate(data_dir: Path | None) -> tuple[Path, Path]:
    """(json file, folder that audio_id paths are relative to)."""
    if data_dir is None:
        from huggingface_hub import snapshot_download

        data_dir = Path(snapshot_download(HUB_ID, repo_type="dataset"))
    if data_dir.is_file():
        return data_dir, data_dir.parent
    candidates = [data_dir / JSON_NAME, *sorted(data_dir.glob("*test-mini*.json"))]
    json_path = next((c for c in candidates if c.is_file()), None)
    if json_path is None:
        raise DataFormatError(
            f"MMAU-mini: no {JSON_NAME} in {data_dir}; pass --data-dir pointing at the folder holding "
            f"{JSON_NAME} and test-mini-audios/"
        )
    audio_root = json_path.parent
    archive = audio_root / "test-mini-audios.tar.gz"
    if not (audio_root / "test-mini-audios").is_dir() and archive.is_file():
        with tarfile.open(archive) as tar:  # the hub ships the audio as one archive
            tar.extractall(audio_root, filter="data")
    return json_path, audio_root


def load_mmau(data_dir: Path | None) -> LoadedTask:
    json_path, audio_root = _locate(data_dir)
    try:
        records = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{json_path} is not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise DataFormatError(f"{json_path}: expected a JSON list of items, got {type(records).__name__}")
    items: list[Item] = []
    problems: list[LoadProblem] = []
    for index, record in enumerate(records):
        where = f"{json_path}[{index}]"
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            problems.append(LoadProblem(where, f"missing keys {missing}"))
            continue
        if record["answer"] not in record["choices"]:
            problems.append(LoadProblem(where, f"answer {record['answer']!r} is not one of the choices"))
            continue
        category = record.get("category")
        if isinstance(category, list):  # stored as a one-element list in some releases
            category = category[0] if category else None
        audio_path = (audio_root / record["audio_id"]).resolve()
        items.append(
            Item(
                id=str(record["id"]),
                task="mmau-mini",
                prompt=str(record["question"]),
                references=(str(record["answer"]),),
                choices=tuple(str(c) for c in record["choices"]),
                audio=AudioRef(path=str(audio_path)),
                scorer="mmau",
                metadata={
                    "mmau_task": record.get("task"),
                    "difficulty": record.get("difficulty"),
                    "category": category,
                    "sub_category": record.get("sub-category"),
                    "dataset": record.get("dataset"),
                },
            )
        )
    return LoadedTask("mmau-mini", tuple(items), tuple(problems))
