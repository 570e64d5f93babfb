"""The human-readable report of a run (``report.md`` with PNG charts) and side-by-side comparisons.

matplotlib and pandas load only when a report is written, so importing this package is cheap.
"""

from xkd_eval.report.markdown import compare_runs, write_report

__all__ = ["compare_runs", "write_report"]
