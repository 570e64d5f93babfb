"""Decode audio bytes or files with soundfile, downmix to mono and resample to 16 kHz with soxr.

``datasets`` >= 4 decodes audio through torchcodec/FFmpeg, whose availability varies; reading the
raw bytes with libsndfile works the same everywhere (WAV, FLAC, OGG).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from xkd_eval.errors import AudioError
from xkd_eval.records import AudioRef, Item

TARGET_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class AudioFailure:
    """An item whose audio could not be used; the speech arm skips it and reports it."""

    item_id: str
    source: str
    reason: str


def samples_digest(audio: np.ndarray) -> str:
    """sha256 of a clip's samples as contiguous little-endian float32: what a cache of anything computed from
    the clip is keyed by (the same sound from another file or path hits; a changed sound misses)."""
    samples = np.ascontiguousarray(np.asarray(audio, dtype="<f4").reshape(-1))
    return hashlib.sha256(samples.tobytes()).hexdigest()


def decode_audio(source: bytes | str | os.PathLike, *, target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Decode to mono float32 at ``target_rate``. Raises AudioError naming the source and the cause."""
    import soundfile as sf

    label = f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not os.path.exists(source):
        raise AudioError(f"audio file not found: {label}")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        samples, rate = sf.read(handle, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types; all mean "unreadable"
        raise AudioError(f"cannot decode audio {label}: {exc}") from exc
    if samples.shape[0] == 0:
        raise AudioError(f"audio {label} is empty (0 samples)")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"audio {label} contains NaN or infinite samples")
    if rate != target_rate:
        import soxr

        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_audio(item: Item, *, target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """The item's audio as mono float32; AudioError (naming the item) when it has none or it is bad."""
    ref: AudioRef | None = item.audio
    if ref is None or (ref.path is None and ref.data is None):
        raise AudioError(f"item {item.id!r} of {item.task} has no audio")
    try:
        return decode_audio(ref.data if ref.data is not None else ref.path, target_rate=target_rate)
    except AudioError as exc:
        raise AudioError(f"item {item.id!r} of {item.task}: {exc}") from exc


def load_all_audio(
    items: Iterable[Item], *, target_rate: int = TARGET_SAMPLE_RATE
) -> tuple[dict[str, np.ndarray], list[AudioFailure]]:
    """Decode every item's audio; bad items become AudioFailure records instead of stopping the run."""
    decoded: dict[str, np.ndarray] = {}
    failures: list[AudioFailure] = []
    for item in items:
        try:
            decoded[item.id] = load_audio(item, target_rate=target_rate)
        except AudioError as exc:
            source = item.audio.describe() if item.audio else "<no audio>"
            failures.append(AudioFailure(item.id, source, str(exc)))
    return decoded, failures
