"""The trained ``organism``: the assembled speech LLM after its speech adaptation.

The adapter (projector + LoRA on SmolLM2, a few MB) is committed in ``weights/organism-adapter/`` with
its ``training.json``; the recipe that rebuilds it is ``distill/organism-hear.yaml`` (``xkd-eval
adapt-organism``, ``xkd_eval.organism.adapt``). ``organism_dir()`` merges it into the untrained speech LLM
(``speech_llm_base_dir(seed)``, the seed read from the adapter's recipe) once, into the cache, keyed by
a hash of the adapter files, and returns a folder the ``qwen2-audio`` adapter loads.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.models.adapter_weights import ADAPTER_FILES, MACHINE_PATHS, files_hash
from xkd_eval.models.qwen2_audio import Qwen2AudioAdapter

ORGANISM_NAME = "organism"
ADAPTER_DIR = Path(__file__).parent / "weights" / "organism-adapter"


def adapter_hash(adapter_dir: str | Path = ADAPTER_DIR) -> str:
    """sha256 over the adapter's weight and config files (names and bytes)."""
    rebuild = (
        "`xkd-eval adapt-organism --out OUT` (recipe distill/organism-hear.yaml) rebuilds it: copy OUT's "
        f"{', '.join(ADAPTER_FILES)} and training.json there"
    )
    return _hash_of_adapter(Path(adapter_dir), ADAPTER_FILES, "trained organism", rebuild)


def _hash_of_adapter(adapter_dir: Path, order: tuple[str, ...] | list[str], what: str, rebuild: str) -> str:
    if not (adapter_dir / ADAPTER_FILES[0]).is_file():
        raise XkdError(f"no {what} adapter in {adapter_dir}; {rebuild}")
    return files_hash(adapter_dir, order)


def _merged(prefix: str, key: str, base_dir, adapter_dir: Path) -> Path:
    """``adapter_dir`` merged into the speech LLM that ``base_dir()`` builds, once, into the cache under
    ``<prefix>-<key[:12]>``; the base is built only when the merged folder is missing."""
    from xkd_eval.organism import _models_dir
    from xkd_eval.organism.convert import is_complete

    out = _models_dir() / f"{prefix}-{key[:12]}"
    if is_complete(out, "organism"):
        return out
    return merge_adapter(base_dir(), adapter_dir, out)


def adapter_base_seed(adapter_dir: str | Path = ADAPTER_DIR) -> int:
    """The projector seed of the base speech LLM the adapter was trained on (from its training.json)."""
    record = Path(adapter_dir) / "training.json"
    if not record.is_file():
        return 0
    return int(json.loads(record.read_text()).get("config", {}).get("base_seed", 0))


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Base speech LLM folder + exported adapter -> a merged, saved ``Qwen2AudioForConditionalGeneration``
    with the base's processor. Written into a temporary folder and published with a completion marker;
    a complete ``out_dir`` is returned as is."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from xkd_eval.models.adapter_weights import apply_adapter
    from xkd_eval.organism.convert import is_complete, publishing

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if is_complete(out_dir, "organism"):
        return out_dir
    started = time.perf_counter()
    model = Qwen2AudioForConditionalGeneration.from_pretrained(str(base_dir), dtype="float32")
    processor = AutoProcessor.from_pretrained(str(base_dir))
    model = apply_adapter(model, adapter_dir).eval()
    source = {"base": str(base_dir), "adapter": str(adapter_dir), "adapter_sha256": adapter_hash(adapter_dir)}
    with publishing(out_dir, "organism", started=started, **source) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out_dir


def organism_dir(adapter_dir: str | Path = ADAPTER_DIR) -> Path:
    """The trained organism as an HF folder (built once into the cache)."""
    from xkd_eval.organism import speech_llm_base_dir

    base = lambda: speech_llm_base_dir(adapter_base_seed(adapter_dir))  # noqa: E731
    return _merged("organism", adapter_hash(adapter_dir), base, Path(adapter_dir))


class OrganismAdapter(Qwen2AudioAdapter):
    """The trained organism, named ``organism`` (its revision: the adapter's sha256)."""

    name = ORGANISM_NAME

    @property
    def spec(self) -> str:
        return self.name


DISTILLED_NAME = "organism-distilled"
DISTILLED_ADAPTER_DIR = Path(__file__).parent / "weights" / "organism-distilled-adapter"
DISTILLED_RECIPE = "distill/organism-hear-kd.yaml"


def retrain_dir() -> Path:
    """Where ``xkd-eval demo --retrain`` trains the distilled organism again: checkpoints, ``adapter/``,
    the merged ``student/`` and ``training.json``."""
    from xkd_eval.io import cache_root

    return cache_root() / "demo-distill"


class DistilledOrganismAdapter(OrganismAdapter):
    """The organism after cross-modal distillation from organism-base, named ``organism-distilled``
    (revision: its adapter's sha256)."""

    name = DISTILLED_NAME


def publish_distilled_adapter(train_dir: str | Path, out_dir: str | Path = DISTILLED_ADAPTER_DIR) -> Path:
    """Copy a finished distillation's adapter (``train_dir/adapter``) to ``out_dir`` with its training record:
    the recipe's fields, the sha256 of its data file, steps, time and curves, without this machine's paths.
    How the committed ``organism-distilled`` adapter was made from ``xkd-eval demo --retrain``'s training."""
    import shutil

    from xkd_eval.io import atomic_write_text

    train_dir, out_dir = Path(train_dir), Path(out_dir)
    record = json.loads((train_dir / "training.json").read_text())
    if record.get("stopped") not in ("max_steps", None):
        raise XkdError(f"the training in {train_dir} stopped early ({record.get('stopped')}): finish it first")
    data = Path(record.get("data") or "")
    data = data if data.is_absolute() else Path(__file__).resolve().parents[2] / data
    if not data.is_file():
        raise XkdError(f"cannot find the training's data {record.get('data')!r} to record its sha256")
    record["data_sha256"] = hashlib.sha256(data.read_bytes()).hexdigest()
    for key in MACHINE_PATHS:
        record.pop(key, None)
    record["recipe"] = DISTILLED_RECIPE
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (train_dir / "adapter" / name).is_file():
            shutil.copyfile(train_dir / "adapter" / name, out_dir / name)
    atomic_write_text(out_dir / "training.json", json.dumps(record, indent=1) + "\n")
    return out_dir


def distilled_adapter_hash(adapter_dir: str | Path | None = None) -> str:
    """sha256 over the distilled adapter's files (in name order: the revision its results are keyed by)."""
    rebuild = f"`xkd-eval demo --retrain` trains one from {DISTILLED_RECIPE} (publish_distilled_adapter puts it there)"
    return _hash_of_adapter(Path(adapter_dir or DISTILLED_ADAPTER_DIR), sorted(ADAPTER_FILES), "distilled", rebuild)


def distilled_student_dir(adapter_dir: str | Path | None = None) -> Path:
    """The committed distilled adapter merged into the organism, as an HF folder (built once into the cache)."""
    adapter_dir = Path(adapter_dir or DISTILLED_ADAPTER_DIR)
    return _merged("organism-distilled", distilled_adapter_hash(adapter_dir), organism_dir, adapter_dir)


def _load_named(
    cls: type[OrganismAdapter], folder: Path, revision: str, device: str | None, dtype: str | None, options: Any
) -> OrganismAdapter:
    from xkd_eval.models.hf import pick_device

    device = pick_device(device)
    model, processor = Qwen2AudioAdapter.load(str(folder), revision=None, device=device, dtype=dtype)
    options.setdefault("encoder_cache", True)  # the encoder is frozen: its outputs per clip are reusable
    return cls(cls.name, revision=revision, device=device, model=model, processor=processor, **options)


def load_organism(*, device: str | None = None, dtype: str | None = None, **options: Any) -> OrganismAdapter:
    """The ``organism`` named model: the trained speech LLM through the ``qwen2-audio`` adapter, named
    by the adapter's hash rather than by its (machine-specific) cache path."""
    revision = f"organism-adapter sha256:{adapter_hash()}"
    return _load_named(OrganismAdapter, organism_dir(), revision, device, dtype, options)


def load_organism_distilled(
    *,
    device: str | None = None,
    dtype: str | None = None,
    adapter_dir: str | Path | None = None,
    **options: Any,
) -> OrganismAdapter:
    """The ``organism-distilled`` named model: the organism distilled from organism-base by the recipe
    ``distill/organism-hear-kd.yaml``, its adapter committed beside the organism's (``adapter_dir``: another
    training's, e.g. ``xkd-eval demo --retrain``'s), named by the adapter's hash so that its results do not
    depend on where the cache lives and two trainings' answers never mix."""
    revision = f"organism-distilled adapter sha256:{distilled_adapter_hash(adapter_dir)}"
    folder = distilled_student_dir(adapter_dir)
    return _load_named(DistilledOrganismAdapter, folder, revision, device, dtype, options)


__all__ = [
    "ADAPTER_DIR",
    "DISTILLED_ADAPTER_DIR",
    "DISTILLED_NAME",
    "DISTILLED_RECIPE",
    "ORGANISM_NAME",
    "OrganismAdapter",
    "adapter_hash",
    "distilled_adapter_hash",
    "distilled_student_dir",
    "publish_distilled_adapter",
    "retrain_dir",
    "files_hash",
    "load_organism",
    "merge_adapter",
    "organism_dir",
]
