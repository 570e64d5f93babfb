"""What a task is: a named source of items with a default scorer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xkd_eval.records import Item


@dataclass(frozen=True)
class LoadProblem:
    """A part of the source that could not become an item (reported, then skipped)."""

    where: str  # file and line, or row
    reason: str


@dataclass(frozen=True)
class LoadedTask:
    name: str
    items: tuple[Item, ...]
    problems: tuple[LoadProblem, ...] = ()

    @property
    def has_audio(self) -> bool:
        return any(item.audio is not None for item in self.items)


@dataclass(frozen=True)
class TaskSpec:
    """A resolved task name: how to load it and how it is scored by default."""

    name: str
    scorer: str
    description: str
    speech: bool  # whether items come with spoken versions
    loader: Callable[[Path | None], LoadedTask] = field(repr=False, compare=False)
    breakdowns: tuple[str, ...] = ()  # metadata keys a report breaks scores down by

    def load(self, data_dir: str | Path | None = None, *, limit: int | None = None) -> LoadedTask:
        loaded = self.loader(Path(data_dir) if data_dir is not None else None)
        if limit is not None:
            loaded = LoadedTask(loaded.name, loaded.items[:limit], loaded.problems)
        return loaded
