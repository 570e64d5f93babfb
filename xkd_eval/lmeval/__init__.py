"""lm-evaluation-harness integration: the forgetting arm's text tasks (``lm-eval/<task>``).

- :class:`XkdLM` (``xkd_eval.lmeval.adapter``): any transformers-based model adapter as an lm-eval
  ``LM``, registered with lm-eval as ``xkd`` once that module is imported.
- :func:`run_lm_eval_task` (``xkd_eval.lmeval.tasks``): run one lm-eval task on an adapter and get
  one row per document plus lm-eval's aggregate.

lm-eval is imported only when one of these is used (importing it costs about a second), so the task
registry can name ``lm-eval/<task>`` for free. To use the model from lm-eval's own CLI, import this
package's adapter first, e.g.::

    python -c "import xkd_eval.lmeval.adapter, lm_eval.__main__ as m; m.cli_evaluate()" \\
        run --model xkd --model_args pretrained=qwen2-audio:/path/to/model --tasks arc_easy
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xkd_eval.lmeval.adapter import XkdLM
    from xkd_eval.lmeval.tasks import LmEvalRows, run_lm_eval_task

_LAZY = {
    "XkdLM": "xkd_eval.lmeval.adapter",
    "LmEvalRows": "xkd_eval.lmeval.tasks",
    "run_lm_eval_task": "xkd_eval.lmeval.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LmEvalRows", "XkdLM", "run_lm_eval_task"]
