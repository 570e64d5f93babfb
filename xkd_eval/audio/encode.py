"""Audio out, for models that take it as a file: WAV bytes, base64-encoded for JSON payloads."""

from __future__ import annotations

import base64
import io

import numpy as np

from xkd_eval.audio.decode import TARGET_SAMPLE_RATE


def wav_bytes(audio: np.ndarray, rate: int = TARGET_SAMPLE_RATE, *, subtype: str = "FLOAT") -> bytes:
    """A mono waveform as a WAV file: ``FLOAT`` keeps the samples exactly; ``PCM_16`` is what every server decodes."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def wav_base64(audio: np.ndarray, rate: int = TARGET_SAMPLE_RATE, *, subtype: str = "FLOAT") -> str:
    """Base64 of :func:`wav_bytes` (float32 by default: lossless, the form mistral-common takes audio in)."""
    return base64.b64encode(wav_bytes(audio, rate, subtype=subtype)).decode("ascii")
