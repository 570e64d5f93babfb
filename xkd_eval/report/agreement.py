"""Two runs of the same items compared answer by answer (one model through two backends, two engines' settings):
how often the responses are equal, per task and arm, and which items differ."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class ArmAgreement:
    task: str
    arm: str
    n: int  # items answered in both runs
    equal: int  # of those, with the same response (surrounding space ignored)
    differing: tuple[tuple[str, str, str], ...]  # (item id, first run's response, second run's)

    @property
    def share(self) -> float:
        return self.equal / self.n if self.n else float("nan")


def response_agreement(first: pd.DataFrame, second: pd.DataFrame) -> list[ArmAgreement]:
    """Per (task, arm) both runs answered: equal responses among the items both answered without error."""
    keys = ["task", "arm", "item_id"]
    answered = [
        frame[frame["error"].isna() & frame["response"].notna()][[*keys, "response"]].astype({"item_id": str})
        for frame in (first, second)
    ]
    both = answered[0].merge(answered[1], on=keys, suffixes=("_first", "_second"))
    out = []
    for (task, arm), group in both.groupby(["task", "arm"], sort=False):
        same = group["response_first"].str.strip() == group["response_second"].str.strip()
        differing = tuple(
            (row.item_id, row.response_first, row.response_second) for row in group[~same].itertuples(index=False)
        )
        out.append(ArmAgreement(str(task), str(arm), len(group), int(same.sum()), differing))
    return out
