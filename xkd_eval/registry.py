"""One small generic registry used for tasks, scorers and (later) models.

Entries are registered by name; lookups of unknown names fail with the closest known names, in the
spirit of lm-evaluation-harness's registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from xkd_eval.errors import UnknownNameError

T = TypeVar("T")


def close_matches(name: str, known: Iterable[str], n: int = 5) -> list[str]:
    """Known names that look like ``name``: difflib's ratio, then substring hits."""
    known = list(known)
    hits = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
    lowered = name.lower()
    for candidate in known:
        if len(hits) >= n:
            break
        if candidate not in hits and lowered and (lowered in candidate.lower() or candidate.lower() in lowered):
            hits.append(candidate)
    return hits


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    matches = close_matches(name, known)
    if matches:
        hint = "did you mean " + ", ".join(repr(m) for m in matches) + "?"
    else:
        hint = "known: " + ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
    return f"unknown {kind} {name!r}; {hint}"


class Registry(Generic[T]):
    """Name -> object, with aliases and helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: Iterable[str] = ()) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, aliases: Iterable[str] = ()) -> None:
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def get(self, name: str) -> T:
        canonical = self._aliases.get(name, name)
        try:
            return self._entries[canonical]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
