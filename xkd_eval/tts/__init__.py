"""Offline text-to-speech for spoken versions of text benchmarks (piper and espeak-ng), cached on disk.

``synthesize(texts, voice, out_dir)`` makes 16 kHz mono float32 WAVs; ``spoken_task(items, voices,
cache)`` gives any text task's items an ``AudioRef`` each (voice picked by item id);
``tts_command(task, out_dir, voices)`` writes a ``jsonl:``-loadable spoken copy of a task.
"""

from xkd_eval.tts.engines import (
    ENGINES,
    PIPER_VOICE_PACKAGES,
    TTSUnavailableError,
    Voice,
    check_available,
    engine_version,
    parse_voice,
)
from xkd_eval.tts.synth import (
    DEFAULT_VOICES,
    ESPEAK_VOICES,
    QUESTION_AUDIO,
    SAMPLE_RATE,
    SpokenTask,
    SynthesisStats,
    TTSExport,
    assign_voice,
    cache_key,
    question_text_of,
    speak_items,
    spoken_task,
    spoken_text_of,
    synthesize,
    tts_cache_dir,
    tts_command,
)

__all__ = [
    "DEFAULT_VOICES",
    "ENGINES",
    "ESPEAK_VOICES",
    "PIPER_VOICE_PACKAGES",
    "SAMPLE_RATE",
    "SpokenTask",
    "SynthesisStats",
    "TTSExport",
    "TTSUnavailableError",
    "Voice",
    "assign_voice",
    "cache_key",
    "check_available",
    "engine_version",
    "parse_voice",
    "speak_items",
    "spoken_task",
    "QUESTION_AUDIO",
    "question_text_of",
    "spoken_text_of",
    "synthesize",
    "tts_cache_dir",
    "tts_command",
]
