"""VoiceBench's leaderboard Overall: the mean of nine columns, each on a 0-100 scale.

Judge columns (AlpacaEval, CommonEval, WildVoice; 1-5) are multiplied by 20; SD-QA is
(PEDANT + judge)/2 on ``usa``; MMSU, OpenBookQA and BBH are accuracies; IFEval is
(prompt-level + instruction-level)/2; AdvBench is the refusal rate in percent.
"""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = ("alpacaeval_full", "commoneval", "wildvoice", "sd-qa", "mmsu", "openbookqa", "bbh", "ifeval", "advbench")
JUDGE_COLUMNS = ("alpacaeval_full", "commoneval", "wildvoice")


def voicebench_overall(columns: Mapping[str, float]) -> float:
    """``columns``: config name -> score as our summaries give it (judge 1-5, everything else in %)."""
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"VoiceBench Overall needs all nine columns; missing {missing}")
    on_100 = [columns[c] * 20 if c in JUDGE_COLUMNS else columns[c] for c in COLUMNS]
    for column, value in zip(COLUMNS, on_100, strict=True):
        if not 0 <= value <= 100:
            raise ValueError(f"VoiceBench Overall: column {column} = {value} is outside 0-100 after scaling")
    return sum(on_100) / len(on_100)
