"""Audio in, as the models want it: mono float32 at 16 kHz, decoded without torchcodec/FFmpeg."""

from xkd_eval.audio.decode import (
    TARGET_SAMPLE_RATE,
    AudioFailure,
    decode_audio,
    load_all_audio,
    load_audio,
    samples_digest,
)
from xkd_eval.audio.encode import wav_base64, wav_bytes

__all__ = [
    "TARGET_SAMPLE_RATE",
    "AudioFailure",
    "decode_audio",
    "load_audio",
    "load_all_audio",
    "samples_digest",
    "wav_base64",
    "wav_bytes",
]
