"""Statistics over the per-item results table: scores with bootstrap CIs, forgetting, modality gap.

``stats`` holds the pure paired statistics; ``summary`` turns a results table into ``summary.json``.
"""

from xkd_eval.analysis.stats import agreement, bootstrap_ci, mcnemar_exact, paired_bootstrap_ci, resolution, wilcoxon_p
from xkd_eval.analysis.summary import build_summary, write_tables

__all__ = [
    "agreement",
    "bootstrap_ci",
    "build_summary",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "resolution",
    "wilcoxon_p",
    "write_tables",
]
