"""The task registry: names like ``voicebench/sd-qa:usa``, ``mmau-mini`` and ``jsonl:<path>``.

Families are resolved by prefix; later families (``builtin/<subset>``, ``lm-eval/<task>``) register
themselves the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xkd_eval.errors import UnknownNameError
from xkd_eval.registry import Registry, unknown_name_message
from xkd_eval.tasks.base import LoadedTask, LoadProblem, TaskSpec


@dataclass(frozen=True)
class TaskFamily:
    """Resolves ``<family>/<rest>`` (or ``<family>:<rest>``, or the bare family name) to a TaskSpec."""

    resolve: Callable[[str], TaskSpec]
    known_names: Callable[[], list[str]]
    separator: str = "/"


TASK_FAMILIES: Registry[TaskFamily] = Registry("task family")


def _voicebench() -> TaskFamily:
    from xkd_eval.tasks import voicebench

    return TaskFamily(voicebench.resolve, voicebench.known_names)


def _mmau() -> TaskFamily:
    from xkd_eval.tasks import mmau

    def resolve(rest: str) -> TaskSpec:
        if rest:
            raise UnknownNameError(unknown_name_message("task", f"mmau-mini/{rest}", ["mmau-mini"]))
        return mmau.spec()

    return TaskFamily(resolve, lambda: ["mmau-mini"])


def _jsonl() -> TaskFamily:
    from xkd_eval.tasks import jsonl

    return TaskFamily(jsonl.spec, lambda: ["jsonl:<path>"], separator=":")


def _lm_eval() -> TaskFamily:
    # imported on use (xkd_eval.lmeval.tasks imports this package); lm-eval itself waits for a run
    def resolve(rest: str) -> TaskSpec:
        from xkd_eval.lmeval.tasks import resolve

        return resolve(rest)

    return TaskFamily(resolve, lambda: ["lm-eval/<task>"])


def _builtin() -> TaskFamily:
    # imported on use (xkd_eval.builtin imports this package)
    def resolve(rest: str) -> TaskSpec:
        from xkd_eval.builtin import resolve

        return resolve(rest)

    def known_names() -> list[str]:
        from xkd_eval.builtin import known_names

        return known_names()

    return TaskFamily(resolve, known_names)


TASK_FAMILIES.add("voicebench", _voicebench())
TASK_FAMILIES.add("mmau-mini", _mmau())
TASK_FAMILIES.add("jsonl", _jsonl())
TASK_FAMILIES.add("lm-eval", _lm_eval())
TASK_FAMILIES.add("builtin", _builtin())


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
