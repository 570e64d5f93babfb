"""Subpackages import one way (pyproject.toml's import-linter contract), imports inside functions included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (make install installs it)")
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]


def test_the_contract_sees_an_import_inside_a_function(tmp_path):
    # a copy of the package where the task registry imports the runner inside a function: broken
    shutil.copytree(ROOT / "xkd_eval", tmp_path / "xkd_eval", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    base = tmp_path / "xkd_eval" / "tasks" / "base.py"
    base.write_text(base.read_text() + "\n\ndef _upward():\n    from xkd_eval.runner import core  # noqa: F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0 and "xkd_eval.tasks is not allowed to import xkd_eval.runner" in result.stdout
