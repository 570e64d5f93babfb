"""Small file helpers: writes that are atomic, so a crash never leaves half a file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """Where every cache of xkd-eval lives (converted models, clips, encoder features, results of the
    demo): ``$XKD_EVAL_CACHE``, else ``$XDG_CACHE_HOME/xkd-eval``, else ``~/.cache/xkd-eval``."""
    explicit = os.environ.get("XKD_EVAL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "xkd-eval"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonl_text(records: Iterable[Any]) -> str:
    """One JSON object a line (UTF-8 kept as is), each line ending in a newline."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    atomic_write_text(path, jsonl_text(records))
    return Path(path)
