"""An on-disk cache of the frozen audio encoder's outputs, and ``inputs_embeds`` built from it.

What is cached is exactly what ``Qwen2AudioModel.forward`` computes for one clip before its projector
(transformers 5, ``modeling_qwen2_audio``):

1. the processor's feature extractor makes a log-mel window padded to 30 s (3000 frames;
   ``padding="max_length"``) and a frame mask whose sum ``L`` counts the clip's own frames;
2. the audio tower runs on the whole window with a bidirectional attention mask over its conv output
   that hides positions ``>= (L - 1) // 2 + 1`` (the padding), then average-pools pairs of positions
   and applies its final LayerNorm;
3. the clip gets ``n = ((L - 1) // 2 + 1 - 2) // 2 + 1`` audio tokens (the processor expands one
   ``<|AUDIO|>`` to ``n``) and the model keeps the first ``n`` pooled frames (the valid ones), which the
   projector maps into the LLM's embedding space and ``masked_scatter`` writes at the audio positions.

The cache stores step 3's ``n`` frames, *before* the projector (which is trained), one safetensors file
per clip under ``<root>/<encoder identity>/<k[:2]>/<k>.safetensors`` with ``k = sha256(samples)``;
writes are atomic (temporary file, then rename). The encoder identity hashes the tower's weights and
the feature extractor's settings, so another encoder (or another mel front end) never reads them.

``window="trim"`` (the default) runs the tower on the clip's own frames plus a margin of padded mel
frames instead of the full 30 s window: the masked padding cannot reach the valid frames through
attention, and the margin gives the convolutions at the clip's end the same neighbours, so the result
is the same up to float rounding (checked against the model's own forward in the tests) at a fraction
of the cost (a 3 s clip: about a tenth). Trimmed clips are encoded one at a time: a clip's features
then never depend on which clips shared its batch (batched, the padding to the longest clip moved
them by float rounding, and a fresh cache trained a slightly different student), and without that
padding it is no slower. ``window="full"`` runs the tower exactly as the model does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xkd_eval.audio import samples_digest
from xkd_eval.errors import XkdError
from xkd_eval.io import atomic_write_bytes

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16_000
WINDOWS = ("trim", "full")
TRIM_MARGIN = 8  # padded mel frames kept after the clip's own (the convolutions look 2 frames ahead)
FORMAT_VERSION = "qwen2-audio-tower-valid-frames-v2-per-clip"
OMNI_FORMAT = "qwen2.5-omni-tower-ln-post-v1"


# ---------------------------------------------------------------------------------------------- model parts


def unwrap(model: Any) -> Any:
    """The ``Qwen2AudioForConditionalGeneration`` inside a peft / accelerate wrapper (or the model)."""
    seen = 0
    while seen < 4:
        seen += 1
        if hasattr(model, "get_base_model") and model.get_base_model() is not model:
            model = model.get_base_model()
        elif hasattr(model, "module") and not hasattr(model, "model"):
            model = model.module
        else:
            break
    if not hasattr(model, "model") or not hasattr(model.model, "audio_tower"):
        raise XkdError(
            f"{type(model).__name__} is neither a Qwen2-Audio-style speech LLM nor a Qwen2.5-Omni thinker "
            "(no model.audio_tower)"
        )
    return model


def audio_tower(model: Any):
    return unwrap(model).model.audio_tower


def is_omni_tower(tower: Any) -> bool:
    """Qwen2.5-Omni's audio encoder: chunked over valid frames, with its own output projection."""
    return hasattr(tower, "n_window") and hasattr(tower, "proj") and hasattr(tower, "ln_post")


def projector(model: Any):
    """The trained bridge from the audio tower into the LLM: Qwen2-Audio's ``multi_modal_projector``, or the
    Omni tower's ``proj``."""
    base = unwrap(model)
    if hasattr(base.model, "multi_modal_projector"):
        return base.model.multi_modal_projector
    tower = base.model.audio_tower
    if is_omni_tower(tower):
        return tower.proj
    raise XkdError(f"{type(base).__name__} has no projector between its audio tower and its LLM")


def audio_token_id(model: Any) -> int:
    config = unwrap(model).config
    value = getattr(config, "audio_token_id", None)
    return int(value if value is not None else config.audio_token_index)


def num_audio_tokens(mel_frames: int) -> int:
    """Audio tokens Qwen2-Audio gives a clip with ``mel_frames`` valid log-mel frames (the processor's
    and the model's formula)."""
    after_conv = (int(mel_frames) - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


# ---------------------------------------------------------------------------------------------- identity, keys


def encoder_identity(model: Any, feature_extractor: Any) -> str:
    """A hash of the audio tower's parameters and buffers (names, shapes, dtypes, bytes) and of the
    feature extractor's settings: features cached under one identity are valid for that encoder only."""
    import torch

    tower = audio_tower(model)
    omni = is_omni_tower(tower)
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    if omni:  # features before `proj` (which trains), so `proj` stays out of the identity
        digest.update(OMNI_FORMAT.encode())
    settings = feature_extractor.to_dict() if hasattr(feature_extractor, "to_dict") else {}
    settings = {k: v for k, v in settings.items() if k not in ("mel_filters", "processor_class")}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(tower.state_dict().items()):
        if omni and name.split(".")[0] in ("proj", "audio_bos_eos_token"):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- encoder


def mel_features(feature_extractor: Any, audios: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_features [B, mels, 3000], valid mel frames [B]) exactly as ``Qwen2AudioProcessor`` makes them."""
    import torch

    out = feature_extractor(
        [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios],
        sampling_rate=SAMPLE_RATE,
        return_attention_mask=True,
        padding="max_length",
        return_tensors="pt",
    )
    return out["input_features"], out["attention_mask"].sum(-1).to(torch.long)


def _bidirectional_mask(tower: Any, valid: torch.Tensor, length: int, dtype) -> Any:
    """The encoder's attention mask for conv positions [B, length], as the model builds it."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    positions = torch.arange(length, device=valid.device)[None, :]
    mask_2d = (positions < valid[:, None]).to(torch.long)
    dummy = torch.zeros((valid.shape[0], length, 1), dtype=dtype, device=valid.device)
    return create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d)


def encode_mels(
    tower: Any, input_features: torch.Tensor, mel_frames: torch.Tensor, *, window: str = "trim"
) -> list[torch.Tensor]:
    """The tower's valid pooled frames per clip, [n_i, d_model] each (float32, CPU)."""
    import torch

    if window not in WINDOWS:
        raise XkdError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    if is_omni_tower(tower):
        return _encode_omni(tower, input_features, mel_frames)
    device = tower.conv1.weight.device
    dtype = tower.conv1.weight.dtype
    mel_frames = mel_frames.to(device)
    conv_valid = (mel_frames - 1) // 2 + 1
    counts = [num_audio_tokens(int(n)) for n in mel_frames.tolist()]
    full = input_features.shape[-1]
    with torch.inference_mode():
        if window == "full":
            mask = _bidirectional_mask(tower, conv_valid, (full - 2) // 2 + 1, dtype)
            hidden = tower(input_features.to(device, dtype), attention_mask=mask).last_hidden_state
            rows = [hidden[i] for i in range(len(counts))]
        else:
            rows = [
                _encode_trimmed(tower, input_features[i : i + 1], int(mel_frames[i]), conv_valid[i : i + 1])[0]
                for i in range(len(counts))
            ]
    # cloned outside inference mode: plain tensors, which a trained projector can take as input
    return [row[:n].float().cpu().clone() for row, n in zip(rows, counts, strict=True)]


def _encode_trimmed(tower: Any, input_features: torch.Tensor, frames: int, conv_valid: torch.Tensor) -> torch.Tensor:
    """One clip's pooled frames from its own ``frames`` log-mel frames plus a margin of padding (rounded up
    to a multiple of 4: two stride-2 steps)."""
    import torch

    keep = min(input_features.shape[-1], -(-(frames + TRIM_MARGIN) // 4) * 4)
    x = input_features[..., :keep].to(tower.conv1.weight.device, tower.conv1.weight.dtype)
    x = torch.nn.functional.gelu(tower.conv1(x))
    x = torch.nn.functional.gelu(tower.conv2(x)).permute(0, 2, 1)
    hidden = x + tower.embed_positions.weight[: x.shape[1]]
    mask = _bidirectional_mask(tower, conv_valid, x.shape[1], x.dtype)
    for layer in tower.layers:
        hidden = layer(hidden, mask)
    hidden = tower.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1)
    return tower.layer_norm(hidden)


def _encode_omni(tower: Any, input_features: torch.Tensor, mel_frames: torch.Tensor) -> list[torch.Tensor]:
    """The Omni tower's ``ln_post`` output per clip, from its own forward on the clips' valid frames (as
    ``get_audio_features`` calls it); ``proj`` is left to the caller."""
    import torch

    device, dtype = tower.conv1.weight.device, tower.conv1.weight.dtype
    valid = torch.arange(input_features.shape[-1])[None, :] < mel_frames[:, None].cpu()
    flat = input_features.permute(0, 2, 1)[valid].permute(1, 0)
    captured: list[torch.Tensor] = []
    handle = tower.ln_post.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        with torch.inference_mode():
            tower(flat.to(device, dtype), feature_lens=mel_frames.to(device))
    finally:
        handle.remove()
    counts = [num_audio_tokens(int(n)) for n in mel_frames.tolist()]
    hidden = captured[0]
    if hidden.shape[0] != sum(counts):
        raise XkdError(f"the Omni audio tower gave {hidden.shape[0]} frames for {sum(counts)} audio tokens")
    return [part.float().cpu().clone() for part in hidden.split(counts)]


# ---------------------------------------------------------------------------------------------- the cache


def default_root() -> Path:
    from xkd_eval.io import cache_root

    return cache_root() / "features"


@dataclass
class CacheStats:
    computed: int = 0
    reused: int = 0
    encoder_seconds: float = 0.0
    times: list[float] = field(default_factory=list, repr=False)


class FeatureCache:
    """Encoder outputs per clip for one encoder identity; ``get``/``put`` by the clip's samples."""

    def __init__(self, identity: str, root: str | os.PathLike | None = None) -> None:
        self.identity = identity
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.dir = self.root / identity[:24]

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def __contains__(self, audio: np.ndarray) -> bool:
        return self.path(samples_digest(audio)).is_file()

    def load_key(self, key: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["features"]
        except Exception:  # a damaged file (should not happen: writes are atomic): recompute it
            return None

    def get(self, audio: np.ndarray) -> torch.Tensor | None:
        return self.load_key(samples_digest(audio))

    def put_key(self, key: str, features: torch.Tensor, **meta: Any) -> Path:
        from safetensors.torch import save

        metadata = {"identity": self.identity, "format": FORMAT_VERSION, **{k: str(v) for k, v in meta.items()}}
        data = save({"features": features.detach().float().cpu().contiguous()}, metadata=metadata)
        path = self.path(key)
        atomic_write_bytes(path, data)
        return path

    @classmethod
    def for_model(cls, model: Any, feature_extractor: Any, root: str | os.PathLike | None = None) -> FeatureCache:
        return cls(encoder_identity(model, feature_extractor), root)


@contextmanager
def progress_bar(
    total: int, description: str, enabled: bool = True, *, completed: int = 0
) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr (or nothing); yields the callable that advances it."""
    if not enabled or total < 2:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)


def compute_features(
    model: Any,
    feature_extractor: Any,
    audios: Sequence[np.ndarray],
    cache: FeatureCache | None = None,
    *,
    batch_size: int = 8,
    window: str = "trim",
    progress: bool = True,
    stats: CacheStats | None = None,
) -> list[torch.Tensor]:
    """The encoder features [n_i, d_model] of every clip, from the cache where present; the missing ones
    are computed in batches (clips of similar length together) and written to the cache."""
    import time

    stats = stats if stats is not None else CacheStats()
    cache = cache if cache is not None else FeatureCache.for_model(model, feature_extractor)
    keys = [samples_digest(a) for a in audios]
    out: list[torch.Tensor | None] = [None] * len(audios)
    missing: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in missing:
            continue
        found = cache.load_key(key)
        if found is None:
            missing[key] = i
        else:
            out[i] = found
            stats.reused += 1
    if missing:
        tower = audio_tower(model)
        order = sorted(missing.values(), key=lambda i: -np.asarray(audios[i]).size)
        with progress_bar(len(order), "audio encoder", progress) as advance:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                started = time.perf_counter()
                mels, frames = mel_features(feature_extractor, [audios[i] for i in chunk])
                encoded = encode_mels(tower, mels, frames, window=window)
                elapsed = time.perf_counter() - started
                stats.encoder_seconds += elapsed
                for i, n_mel, features in zip(chunk, frames.tolist(), encoded, strict=True):
                    cache.put_key(keys[i], features, mel_frames=n_mel, window=window)
                    out[i] = features
                stats.computed += len(chunk)
                advance(len(chunk))
    by_key = {keys[i]: out[i] for i in range(len(audios)) if out[i] is not None}
    return [out[i] if out[i] is not None else by_key[keys[i]] for i in range(len(audios))]


# ---------------------------------------------------------------------------------------------- inputs_embeds


def expand_audio_tokens(text: str, counts: Sequence[int], audio_token: str = "<|AUDIO|>") -> str:
    """Replace the i-th ``audio_token`` of a rendered prompt by ``counts[i]`` copies (the processor's step)."""
    pieces = text.split(audio_token)
    if len(pieces) - 1 != len(counts):
        raise XkdError(f"the prompt has {len(pieces) - 1} {audio_token} placeholders for {len(counts)} clips")
    expanded = [pieces[0]]
    for count, piece in zip(counts, pieces[1:], strict=True):
        expanded.append(audio_token * int(count) + piece)
    return "".join(expanded)


def build_inputs_embeds(model: Any, input_ids: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Token embeddings of ``input_ids`` [B, T] with the projected cached features written, in order, at
    the ``<|AUDIO|>`` positions (row by row, left to right): what the model's own forward computes from
    ``input_features``. ``features`` holds one [n_i, d_model] tensor per clip in the batch, in the order
    their audio tokens appear; the projector runs here (so it can be trained)."""
    import torch

    base = unwrap(model)
    table = base.get_input_embeddings()
    input_ids = input_ids.to(table.weight.device)  # batches are collated on the CPU
    embeds = table(input_ids)
    audio_mask = input_ids == audio_token_id(base)
    n_tokens = int(audio_mask.sum())
    if not features:
        if n_tokens:
            raise XkdError(f"the batch has {n_tokens} audio tokens but no audio features")
        return embeds
    stacked = torch.cat([f.to(embeds.device) for f in features], dim=0)
    if stacked.shape[0] != n_tokens:
        raise XkdError(f"audio features and audio tokens do not match: {stacked.shape[0]} features, {n_tokens} tokens")
    projected = projector(base)(stacked.to(embeds.dtype))
    return embeds.masked_scatter(audio_mask.unsqueeze(-1), projected.to(embeds.dtype))


__all__ = [
    "CacheStats",
    "FeatureCache",
    "audio_token_id",
    "build_inputs_embeds",
    "compute_features",
    "encode_mels",
    "encoder_identity",
    "expand_audio_tokens",
    "is_omni_tower",
    "mel_features",
    "num_audio_tokens",
    "progress_bar",
    "projector",
    "unwrap",
]
