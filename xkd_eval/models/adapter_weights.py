"""The file format of trained adapter weights, and putting them back into a speech LLM.

A trained adapter is a folder: ``projector.safetensors`` (the audio projector, always), the LoRA weights
``adapter_model.safetensors`` + ``adapter_config.json`` (peft's format) when the LLM was adapted, and
``training.json`` (the recipe, data digest and figures of the run that made it). The adaptation recipe and
the distillation trainer write this format; the organism's named models load it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.models.encoder import projector

PROJECTOR_FILE = "projector.safetensors"
LORA_FILE = "adapter_model.safetensors"
LORA_CONFIG_FILE = "adapter_config.json"
TRAINING_FILE = "training.json"
ADAPTER_FILES = (PROJECTOR_FILE, LORA_FILE, LORA_CONFIG_FILE)
# the training record's fields that name this machine's folders (dropped where the record is published)
MACHINE_PATHS = ("adapter_dir", "merged_student", "model_spec")


def files_hash(folder: Path, names: Sequence[str]) -> str:
    """sha256 over the named files of ``folder`` that exist (names and bytes, in the order given)."""
    digest = hashlib.sha256()
    for name in names:
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def portable_model_name(spec: str) -> str:
    """A model spec without the folders of this machine: a registered name or hub id as it is, a local folder
    (``qwen2-audio:/cache/models/x``, ``/cache/models/x``) by its last component."""
    head, sep, rest = spec.partition(":")
    target = rest if sep else spec
    local = Path(target).expanduser()
    if not target or not (local.is_absolute() or local.exists()):
        return spec
    return f"{head}:{local.name}" if sep else local.name


def export_adapter(model: Any, config: Any, out_dir: str | os.PathLike, *, base_name: str | None = None) -> list[Path]:
    """Write the trainable weights: the projector (always) and the LoRA adapter (peft format) when on
    (``config``: a training config, for ``save_dtype`` and ``uses_lora``).

    The adapter's ``base_model_name_or_path`` is ``base_name`` made portable (see ``portable_model_name``), not
    the folder the base was loaded from: the files, and so the adapter's sha256 that names the trained model
    in result keys, are then the same on every machine and cache location."""
    import copy

    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, config.save_dtype)
    written = []
    proj = {k: v.detach().cpu().to(dtype).contiguous() for k, v in projector(model).state_dict().items()}
    save_file(proj, str(out_dir / PROJECTOR_FILE), metadata={"module": "multi_modal_projector"})
    written.append(out_dir / PROJECTOR_FILE)
    if config.uses_lora:
        from peft.utils import get_peft_model_state_dict

        lora = {k: v.detach().cpu().to(dtype).contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(lora, str(out_dir / LORA_FILE), metadata={"format": "pt"})
        peft_config = copy.copy(model.peft_config["default"])
        peft_config.base_model_name_or_path = portable_model_name(base_name) if base_name else None
        peft_config.save_pretrained(str(out_dir))
        written += [out_dir / LORA_FILE, out_dir / LORA_CONFIG_FILE]
    return written


def _load_projector(model: Any, adapter_dir: Path) -> None:
    """Copy the adapter folder's projector weights into the model's projector, in place."""
    import torch
    from safetensors.torch import load_file

    proj_file = adapter_dir / PROJECTOR_FILE
    if not proj_file.is_file():
        raise XkdError(f"{adapter_dir} has no {PROJECTOR_FILE}: give a folder an adaptation or a distillation wrote")
    weights = load_file(str(proj_file))
    with torch.no_grad():
        for name, value in projector(model).state_dict().items():
            value.copy_(weights[name].to(value.dtype))


def apply_adapter(model: Any, adapter_dir: str | os.PathLike) -> Any:
    """A base speech LLM with the exported adapter put back: the projector loaded and the LoRA weights
    merged into the LLM (a plain ``Qwen2AudioForConditionalGeneration`` again)."""
    adapter_dir = Path(adapter_dir)
    _load_projector(model, adapter_dir)
    if (adapter_dir / LORA_CONFIG_FILE).is_file():
        from peft import PeftModel

        with peft_quiet():
            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return model


def load_trainable_adapter(model: Any, adapter_dir: str | os.PathLike) -> None:
    """Put an exported adapter's weights into a model set up for training (``setup_trainable``) with the same
    LoRA shape, in place: a later stage of training then starts where the adapter's training ended. A LoRA
    shape that differs (rank, targets) is an error naming both, not a silent partial load."""
    import json

    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir).expanduser()
    _load_projector(model, adapter_dir)
    lora_file = adapter_dir / LORA_FILE
    has_lora = hasattr(model, "peft_config")
    if lora_file.is_file() != has_lora:
        raise XkdError(
            f"init adapter {adapter_dir} {'has' if lora_file.is_file() else 'has no'} LoRA weights but this "
            f"training {'adapts' if has_lora else 'does not adapt'} the LLM with LoRA: use the same trainable scope"
        )
    if not has_lora:
        return
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    saved = json.loads((adapter_dir / LORA_CONFIG_FILE).read_text())
    ours = model.peft_config["default"]
    if (saved.get("r"), saved.get("target_modules")) != (ours.r, ours.target_modules):
        raise XkdError(
            f"init adapter {adapter_dir} has LoRA rank {saved.get('r')} on {saved.get('target_modules')!r}; this "
            f"training has rank {ours.r} on {ours.target_modules!r}: set lora_rank and lora_targets to the adapter's"
        )
    lora = load_file(str(lora_file))
    expected = set(get_peft_model_state_dict(model))
    if set(lora) != expected:
        raise XkdError(
            f"init adapter {adapter_dir}: its LoRA tensors do not match this model's ({len(lora)} vs "
            f"{len(expected)}): was it trained on another base model?"
        )
    set_peft_model_state_dict(model, lora)


@contextmanager
def peft_quiet():
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` while it wraps a model: a
    FutureWarning on every run that our users cannot act on. Only that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


__all__ = [
    "ADAPTER_FILES",
    "LORA_CONFIG_FILE",
    "LORA_FILE",
    "MACHINE_PATHS",
    "PROJECTOR_FILE",
    "TRAINING_FILE",
    "apply_adapter",
    "export_adapter",
    "load_trainable_adapter",
    "files_hash",
    "peft_quiet",
    "portable_model_name",
]
