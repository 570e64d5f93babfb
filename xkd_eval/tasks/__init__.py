"""The task registry: names like ``voicebench/sd-qa:usa``, ``mmau-mini`` and ``jsonl:<path>``.

Families are resolved by prefix, through lazy entries: naming a task imports only its family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xkd_eval.errors import UnknownNameError
from xkd_eval.registry import Registry, unknown_name_message
from xkd_eval.tasks.base import LoadedTask, LoadProblem, TaskSpec


@dataclass(frozen=True)
class TaskFamily:
    """Resolves ``<family>/<rest>`` (or ``<family>:<rest>``, or the bare family name) to a TaskSpec.

    ``resolve`` and ``known_names`` may be lazy ``"module:function"`` entries, imported on first use: the
    families that live above this package (the built-in benchmark, lm-eval's tasks) register so, and this
    package imports none of them."""

    resolve_entry: str | Callable[[str], TaskSpec]
    known_names_entry: str | Callable[[], list[str]]
    separator: str = "/"

    def resolve(self, rest: str) -> TaskSpec:
        return _entry(self.resolve_entry)(rest)

    def known_names(self) -> list[str]:
        return _entry(self.known_names_entry)()


def _entry(entry: str | Callable[..., Any]) -> Callable[..., Any]:
    if not isinstance(entry, str):
        return entry
    module_name, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _mmau_resolve(rest: str) -> TaskSpec:
    from xkd_eval.tasks import mmau

    if rest:
        raise UnknownNameError(unknown_name_message("task", f"mmau-mini/{rest}", ["mmau-mini"]))
    return mmau.spec()


TASK_FAMILIES: Registry[TaskFamily] = Registry("task family")
TASK_FAMILIES.add(
    "voicebench", TaskFamily("xkd_eval.tasks.voicebench:resolve", "xkd_eval.tasks.voicebench:known_names")
)
TASK_FAMILIES.add("mmau-mini", TaskFamily(_mmau_resolve, lambda: ["mmau-mini"]))
TASK_FAMILIES.add("jsonl", TaskFamily("xkd_eval.tasks.jsonl:spec", lambda: ["jsonl:<path>"], separator=":"))
TASK_FAMILIES.add("lm-eval", TaskFamily("xkd_eval.lmeval.tasks:resolve", lambda: ["lm-eval/<task>"]))
TASK_FAMILIES.add("builtin", TaskFamily("xkd_eval.builtin:resolve", "xkd_eval.builtin:known_names"))


def all_task_names() -> list[str]:
    names: list[str] = []
    for family in TASK_FAMILIES:
        names.extend(TASK_FAMILIES.get(family).known_names())
    return names


def get_task(name: str) -> TaskSpec:
    """Resolve a task name; an unknown one raises UnknownNameError listing close matches."""
    for family_name in TASK_FAMILIES:
        family = TASK_FAMILIES.get(family_name)
        prefix = family_name + family.separator
        if name == family_name:
            return family.resolve("")
        if name.startswith(prefix):
            return family.resolve(name[len(prefix) :])
    raise UnknownNameError(unknown_name_message("task", name, all_task_names()))


__all__ = ["LoadProblem", "LoadedTask", "TaskSpec", "TASK_FAMILIES", "all_task_names", "get_task"]
