"""xkd-eval: forgetting and the modality gap of speech LLMs, measured per item, and repaired by
cross-modal knowledge distillation.

The public surface is small and lazy: importing ``xkd_eval`` pulls in no heavy library.
"""

from xkd_eval.records import AudioRef, Item, Score

__version__ = "0.1.0"

__all__ = ["AudioRef", "Item", "Score", "__version__"]
