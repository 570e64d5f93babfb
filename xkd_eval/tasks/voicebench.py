"""VoiceBench (hlt-lab/voicebench): every leaderboard config, from the hub or a local copy.

Text condition = the ``prompt`` column, speech condition = the ``audio`` column. Audio is kept as
encoded bytes (``Audio(decode=False)``) and decoded by ``xkd_eval.audio`` on demand.
"""

from __future__ import annotations

from pathlib import Path

from xkd_eval.errors import DataFormatError, UnknownNameError
from xkd_eval.records import AudioRef, Item
from xkd_eval.registry import unknown_name_message
from xkd_eval.tasks.base import LoadedTask, LoadProblem, TaskSpec

HUB_ID = "hlt-lab/voicebench"

SDQA_ACCENTS = ("aus", "gbr", "ind_n", "ind_s", "irl", "kenya", "nga", "nzl", "phl", "usa", "zaf")
MMSU_DOMAINS = (
    "law", "engineering", "other", "biology", "business", "economics",
    "health", "philosophy", "psychology", "history", "chemistry", "physics",
)  # fmt: skip
BBH_SUBTASKS = ("sports_understanding", "hyperbaton", "navigate", "web_of_lies")


# config -> (splits, default split(s) when none is named, scorer, metadata key the split stands for)
CONFIGS: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...], str, str | None]] = {
    "alpacaeval_full": (("test",), ("test",), "open", None),
    "alpacaeval": (("test",), ("test",), "open", None),
    "commoneval": (("test",), ("test",), "open", None),
    "wildvoice": (("test",), ("test",), "open", None),
    "sd-qa": (SDQA_ACCENTS, ("usa",), "qa", "accent"),
    "openbookqa": (("test",), ("test",), "mcq", None),
    "mmsu": (MMSU_DOMAINS, MMSU_DOMAINS, "mcq", "domain"),
    "bbh": (("test",), ("test",), "bbh", None),
    "ifeval": (("test",), ("test",), "ifeval", None),
    "advbench": (("test",), ("test",), "refusal", None),
    # voice/speed robustness splits; not enumerated here, the dataset itself validates the name
    "alpacaeval_speaker": (None, (), "open", "speaker"),
}

LEADERBOARD = (
    "alpacaeval_full", "commoneval", "wildvoice", "sd-qa", "mmsu", "openbookqa", "bbh", "ifeval", "advbench",
)  # fmt: skip


def known_names() -> list[str]:
    names = []
    for config, (splits, _, _, _) in CONFIGS.items():
        names.append(f"voicebench/{config}")
        names.extend(f"voicebench/{config}:{split}" for split in splits or ())
    return names


def bbh_subtask(source_id: str) -> str:
    """The subtask a VoiceBench bbh ``id`` names, found anywhere in it (``bbh_navigate_0042``,
    ``web_of_lies_17``), checked in the official evaluator's order (``if 'sports_understanding' in id:
    ... elif 'hyperbaton' ... elif 'navigate' ... elif 'web_of_lies'``). Raises ValueError when the id
    names none of them (where the official code raises NotImplementedError)."""
    for subtask in BBH_SUBTASKS:
        if subtask in source_id:
            return subtask
    raise ValueError(
        f"bbh: id {source_id!r} names no subtask; the id must contain one of {', '.join(BBH_SUBTASKS)} "
        "(as VoiceBench's do, e.g. 'navigate_0042'), or the item must carry a 'subtask' field"
    )


def resolve(rest: str) -> TaskSpec:
    config, _, split = rest.partition(":")
    if config not in CONFIGS:
        raise UnknownNameError(unknown_name_message("task", f"voicebench/{rest}", known_names()))
    splits, default, scorer, split_key = CONFIGS[config]
    if split:
        if splits is not None and split not in splits:
            raise UnknownNameError(
                unknown_name_message("split of voicebench/" + config, split, splits) + f" (splits: {', '.join(splits)})"
            )
        chosen: tuple[str, ...] = (split,)
    elif default:
        chosen = default
    else:
        raise UnknownNameError(f"voicebench/{config} needs a split: voicebench/{config}:<split>")
    name = f"voicebench/{config}" + (f":{split}" if split else "")
    breakdowns = tuple(k for k in (split_key if len(chosen) > 1 else None, "subtask" if config == "bbh" else None) if k)

    def loader(data_dir: Path | None, _limit: int | None) -> LoadedTask:
        return load_voicebench(config, chosen, data_dir=data_dir, name=name, scorer=scorer, split_key=split_key)

    return TaskSpec(
        name=name,
        scorer=scorer,
        description=f"VoiceBench {config} ({', '.join(chosen) if len(chosen) < 4 else f'{len(chosen)} splits pooled'})",
        speech=True,
        loader=loader,
        breakdowns=breakdowns,
    )


def _open_split(config: str, split: str, data_dir: Path | None):
    """One split as a ``datasets.Dataset``: the hub id, or a local folder in the hub's parquet layout."""
    from datasets import load_dataset

    if data_dir is None:
        return load_dataset(HUB_ID, config, split=split)
    if not data_dir.is_dir():
        raise DataFormatError(f"VoiceBench data dir {data_dir} does not exist")
    if _declares_configs(data_dir):
        # a local snapshot of the hub repository (README with `configs:`): same call as the hub path
        return load_dataset(str(data_dir), config, split=split)
    files = sorted((data_dir / config).glob(f"{split}-*.parquet"))
    if not files:
        raise DataFormatError(
            f"no parquet files for voicebench/{config}:{split} in {data_dir}: expected "
            f"{data_dir / config}/{split}-00000-of-00001.parquet (the hub's layout)"
        )
    return load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)


def _declares_configs(data_dir: Path) -> bool:
    readme = data_dir / "README.md"
    return readme.is_file() and "\nconfigs:" in readme.read_text(encoding="utf-8", errors="replace")


def load_voicebench(
    config: str,
    splits: tuple[str, ...],
    *,
    data_dir: Path | None,
    name: str,
    scorer: str,
    split_key: str | None,
) -> LoadedTask:
    from datasets import Audio

    items: list[Item] = []
    problems: list[LoadProblem] = []
    for split in splits:
        dataset = _open_split(config, split, data_dir)
        if "prompt" not in dataset.column_names:
            raise DataFormatError(f"voicebench/{config}:{split} has no 'prompt' column ({dataset.column_names})")
        if "audio" in dataset.column_names:
            dataset = dataset.cast_column("audio", Audio(decode=False))
        for index, row in enumerate(dataset):
            item_id = f"{config}/{split}/{index}"
            audio = _audio_ref(row.get("audio"))
            if audio is None:
                problems.append(LoadProblem(item_id, "no audio in this row (the speech arm will skip it)"))
            metadata: dict = {}
            if split_key:
                metadata[split_key] = split
            if "id" in row and row["id"] is not None:
                metadata["source_id"] = str(row["id"])
                if config == "bbh":
                    try:
                        metadata["subtask"] = bbh_subtask(str(row["id"]))
                    except ValueError as exc:
                        problems.append(LoadProblem(item_id, f"{exc} (item left out)"))
                        continue
            for key in ("key", "instruction_id_list", "kwargs"):
                if key in row:
                    metadata[key] = row[key]
            reference = row.get("reference")
            references = (
                tuple(str(r) for r in reference)
                if isinstance(reference, list)
                else ((str(reference),) if reference is not None else ())
            )
            items.append(
                Item(
                    id=item_id,
                    task=name,
                    prompt=str(row["prompt"]),
                    references=references,
                    audio=audio,
                    scorer=scorer,
                    metadata=metadata,
                )
            )
    return LoadedTask(name, tuple(items), tuple(problems))


def _audio_ref(cell) -> AudioRef | None:
    if not cell:
        return None
    data, path = cell.get("bytes"), cell.get("path")
    if data is None and not path:
        return None
    return AudioRef(path=path or None, data=data)
