"""Append-only result files: finished work is never recomputed, and a crash loses at most the batch
in flight.

One JSON object per line, each with a ``key`` that hashes everything the result depends on (model
identity and revision, task, item, input modality, the exact rendered prompt, decoding settings,
MCQ mode). Lines are appended and fsync'ed batch by batch; a torn or corrupt line (a ``kill -9``
mid-write) is dropped with a warning the next time the file is opened, before anything is appended.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xkd_eval.io import atomic_write_text, jsonl_text

log = logging.getLogger(__name__)


def result_key(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def slug(text: str) -> str:
    """A readable file name for a model or task name, unique through a short hash suffix."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:]
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


class ResultStore:
    """Results of one model on one task; each process (rank) appends to its own file."""

    def __init__(self, root: str | os.PathLike, model: str, task: str, *, rank: int = 0) -> None:
        self.folder = Path(root) / slug(model)
        self.prefix = slug(task)
        self.path = self.folder / f"{self.prefix}.r{rank}.jsonl"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.folder.glob(f"{self.prefix}.r*.jsonl")):
            for record in self._read(path, repair=path == self.path):
                self._records.setdefault(record["key"], record)

    @staticmethod
    def _read(path: Path, *, repair: bool) -> list[dict[str, Any]]:
        text = path.read_text(encoding="utf-8", errors="replace")
        good: list[dict[str, Any]] = []
        good_lines: list[str] = []
        dropped = 0
        lines = text.split("\n")
        complete, tail = lines[:-1], lines[-1]
        for line in complete:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "key" not in record:
                    raise ValueError("not a result record")
            except ValueError:
                dropped += 1
                continue
            good.append(record)
            good_lines.append(line)
        if tail.strip():
            dropped += 1  # no trailing newline: the write was cut off
        if dropped:
            log.warning("%s: dropped %d corrupt or incomplete line(s); those items will be redone", path, dropped)
            if repair:
                atomic_write_text(path, "".join(line + "\n" for line in good_lines))
        return good

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def drop_other_revisions(self, identity: dict[str, Any]) -> int:
        """Rewrite this rank's file without the answers of another revision of the model (rows whose
        ``model`` record is not ``identity``: an older adapter's); returns how many went. For reference
        reports that should hold the current models' answers only; by default nothing is ever dropped."""
        if not self.path.is_file():
            return 0
        rows = self._read(self.path, repair=True)
        stale = {r["key"] for r in rows if r.get("model", identity) != identity}
        if stale:
            atomic_write_text(self.path, jsonl_text([r for r in rows if r["key"] not in stale]))
            self._records = {k: v for k, v in self._records.items() if k not in stale}
        return len(stale)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write a batch durably: one write, flushed and fsync'ed, before the call returns."""
        records = [r for r in records if r["key"] not in self._records]
        if not records:
            return
        _append_durably(self.path, records)
        for record in records:
            self._records[record["key"]] = record


def _append_durably(path: Path, records: list[dict[str, Any]]) -> None:
    """One write, flushed and fsync'ed: a crash leaves at most a torn last line, which the next read drops."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(jsonl_text(records))
        handle.flush()
        os.fsync(handle.fileno())


def share_results(
    model: str, source_root: str | os.PathLike, target_root: str | os.PathLike, *, tasks: Iterable[str] | None = None
) -> int:
    """Give another run the finished answers of a model that did not change between the runs (a teacher
    measured before and after distillation): the model's result files under ``source_root`` are merged
    into ``target_root``'s, record by record (only ``tasks``' files, where given). Returns how many records
    were added.

    Nothing is trusted by position: every result is keyed by the model's identity, the exact prompt and
    settings, so a record the target run does not ask for is simply never read, and what differs is
    answered afresh."""
    source, target = Path(source_root) / slug(model), Path(target_root) / slug(model)
    # every rank's file of each task, named as ResultStore names them
    patterns = ["*.jsonl"] if tasks is None else [f"{slug(task)}.r*.jsonl" for task in tasks]
    added = 0
    for path in sorted({p for pattern in patterns for p in source.glob(pattern)}):
        destination = target / path.name
        have = {r["key"] for r in ResultStore._read(destination, repair=True)} if destination.is_file() else set()
        new = [r for r in ResultStore._read(path, repair=False) if r["key"] not in have]
        if new:
            target.mkdir(parents=True, exist_ok=True)
            _append_durably(destination, new)
            added += len(new)
    return added
