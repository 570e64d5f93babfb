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
    # (data_dir, limit) -> the items; a loader may stop at ``limit`` (the built-in benchmark then synthesises
    # only those items' clips); ``load`` cuts to it in any case
    loader: Callable[[Path | None, int | None], LoadedTask] = field(repr=False, compare=False)
    breakdowns: tuple[str, ...] = ()  # metadata keys a report breaks scores down by
    # the items without their audio, where making the audio costs something (the built-in benchmark
    # synthesises its clips): what a text-only run loads; None = the loader's items
    text_loader: Callable[[int | None], LoadedTask] | None = field(default=None, repr=False, compare=False)

    def load(self, data_dir: str | Path | None = None, *, limit: int | None = None, audio: bool = True) -> LoadedTask:
        """The task's items (the first ``limit``); ``audio=False``: a text-only run, which need not make clips."""
        if not audio and self.text_loader is not None:
            loaded = self.text_loader(limit)
        else:
            loaded = self.loader(Path(data_dir) if data_dir is not None else None, limit)
        if limit is not None:
            loaded = LoadedTask(loaded.name, loaded.items[:limit], loaded.problems)
        return loaded
