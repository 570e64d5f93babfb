"""VoiceBench's phrase lists, loaded once from ``data/voicebench_phrases.json``.

The lists (MCQ answer templates, BBH answer phrases per subtask, refusal strings) are facts of the
official scorer, kept as data in their official order so that ``compat=voicebench`` agrees with it
item by item. The matching code around them is ours.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any


@functools.cache
def voicebench_phrases() -> dict[str, Any]:
    text = resources.files("xkd_eval.scoring").joinpath("data/voicebench_phrases.json").read_text("utf-8")
    return json.loads(text)
