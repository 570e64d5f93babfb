"""``audioflamingo3``: NVIDIA's Audio Flamingo 3 (``AudioFlamingo3ForConditionalGeneration`` + its processor).

The processor cuts each audio into 30 s windows (up to its ``max_audio_len``), pads each to 30 s with a feature
mask, and expands the ``<sound>`` placeholder of the prompt to one token per encoder frame after pooling. Its own
text padding default is left; the adapter always names the side the caller asked for, for the text alone.
"""

from __future__ import annotations

from xkd_eval.models.qwen2_audio import ProcessorSpeechAdapter


class AudioFlamingo3Adapter(ProcessorSpeechAdapter):
    adapter = "audioflamingo3"
    model_class = "AudioFlamingo3ForConditionalGeneration"
    audio_key = "path"
    # a top-level ``padding`` would also reach the feature extractor and pad the audio windows to the longest
    pad_text_only = True
