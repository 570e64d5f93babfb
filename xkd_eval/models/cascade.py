"""``cascade``: an ASR model then a text LLM, as one speech-capable model: ``cascade:ASR+LLM``.

ASR is a local Whisper folder in transformers' format (``WhisperForConditionalGeneration``), a faster-whisper
(CTranslate2) folder, or a name registered in :data:`ASR_NAMES`. LLM is any spec :func:`xkd_eval.models.load_model`
takes (an ``ADAPTER:ID``, a bare id or folder, a registered model name).

The speech arm transcribes the audio (greedy, English, batched where the backend allows) and asks the LLM the
transcript as a written query; the fixed speech instruction is not needed, and the rendered prompt, the LLM's own
prompt around the transcript, records what the LLM was asked. The text arm asks the LLM directly. Teacher-forced
scoring of the speech arm is the LLM's on the transcript.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from xkd_eval.audio import TARGET_SAMPLE_RATE, samples_digest
from xkd_eval.errors import XkdError
from xkd_eval.models.base import GenerationSettings, ModelAdapter, Query
from xkd_eval.models.hf import pick_device, pick_dtype

# ASR name -> a function giving its local folder (filled by later layers, e.g. ``whisper-base``)
ASR_NAMES: dict[str, Callable[[], Path]] = {}

WHISPER_WINDOW_S = 30  # Whisper's fixed input window; longer audio takes its long-form (sequential) decoding


def asr_backend(folder: Path) -> str:
    """``faster-whisper`` for a CTranslate2 folder (model.bin, and a config.json without ``architectures``),
    ``transformers`` for a transformers Whisper folder."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    if (folder / "model.bin").is_file() and config is not None and "architectures" not in config:
        return "faster-whisper"
    if config is not None and config.get("model_type") == "whisper":
        return "transformers"
    raise XkdError(
        f"ASR folder {folder} is neither a transformers Whisper model (config.json with model_type whisper) "
        "nor a faster-whisper/CTranslate2 model (model.bin and config.json)"
    )


def resolve_asr(name_or_path: str) -> Path:
    if name_or_path in ASR_NAMES:
        return Path(ASR_NAMES[name_or_path]())
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return folder
    known = ", ".join(sorted(ASR_NAMES)) or "none yet"
    raise XkdError(f"ASR {name_or_path!r} is neither a local folder nor a registered ASR name (known: {known})")


def split_spec(model_id: str) -> tuple[str, str]:
    """``ASR+LLM`` -> (ASR, LLM), at the first ``+`` whose left side is an ASR name or an existing folder (paths
    may hold a ``+`` themselves)."""
    start = 0
    while (cut := model_id.find("+", start)) != -1:
        asr, llm = model_id[:cut], model_id[cut + 1 :]
        if asr and llm and (asr in ASR_NAMES or Path(asr).expanduser().is_dir()):
            return asr, llm
        start = cut + 1
    raise XkdError(
        f"a cascade is named cascade:ASR+LLM, with ASR a local Whisper folder or a registered ASR name; "
        f"got cascade:{model_id}"
    )


class WhisperASR:
    """transformers Whisper: batched greedy English transcription."""

    backend = "transformers"

    def __init__(self, folder: Path, *, device: str, dtype: str | None = None, batch_size: int = 16) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.folder, self.device, self.batch_size = folder, device, batch_size
        self.processor = WhisperProcessor.from_pretrained(folder)
        model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=pick_dtype(device, dtype))
        self.model = model.to(device).eval()

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        """Audio up to 30 s in batches of one 30 s window each; longer audio (sequential long-form decoding) in
        batches of its own, so an item's transcript never depends on what it is batched with."""
        texts = [""] * len(audios)
        for long_form in (False, True):
            rows = [
                i for i, audio in enumerate(audios) if (len(audio) > WHISPER_WINDOW_S * TARGET_SAMPLE_RATE) == long_form
            ]
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                batch = self._transcribe_batch([audios[i] for i in chunk], long_form=long_form)
                for row, text in zip(chunk, batch, strict=True):
                    texts[row] = text
        return texts

    def _transcribe_batch(self, audios: Sequence[np.ndarray], *, long_form: bool) -> list[str]:
        import torch

        extract: dict[str, Any] = {
            "sampling_rate": TARGET_SAMPLE_RATE,
            "return_tensors": "pt",
            "return_attention_mask": True,
        }
        if long_form:  # the whole audio, for transformers' sequential long-form decoding
            extract |= {"truncation": False, "padding": "longest"}
        features = self.processor.feature_extractor(list(audios), **extract)
        inputs = {
            "input_features": features["input_features"].to(self.device, self.model.dtype),
            "attention_mask": features["attention_mask"].to(self.device),
        }
        options: dict[str, Any] = {"do_sample": False, "num_beams": 1}
        config = self.model.generation_config
        if getattr(config, "is_multilingual", False) and hasattr(config, "lang_to_id"):
            options |= {"language": "en", "task": "transcribe"}  # an English-only model takes neither
        if long_form:
            options["return_timestamps"] = True
        with torch.inference_mode():
            output = self.model.generate(**inputs, **options)
        sequences = output.sequences if hasattr(output, "sequences") else output
        return [text.strip() for text in self.processor.batch_decode(sequences, skip_special_tokens=True)]


class FasterWhisperASR:
    """faster-whisper (CTranslate2): greedy English transcription, one audio at a time."""

    backend = "faster-whisper"

    def __init__(self, folder: Path, *, device: str, dtype: str | None = None, batch_size: int = 16) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise XkdError(
                f"ASR folder {folder} is a faster-whisper (CTranslate2) model; it needs the faster-whisper "
                "package: pip install faster-whisper"
            ) from exc
        self.folder = folder
        compute_type = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}.get(dtype or "", "default")
        self.model = WhisperModel(
            str(folder), device="cuda" if device.startswith("cuda") else "cpu", compute_type=compute_type
        )

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        texts = []
        for audio in audios:
            segments, _info = self.model.transcribe(
                np.asarray(audio, dtype=np.float32),
                language="en",
                task="transcribe",
                beam_size=1,
                best_of=1,
                temperature=0.0,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
            )
            texts.append("".join(segment.text for segment in segments).strip())
        return texts


class CascadeAdapter(ModelAdapter):
    adapter = "cascade"
    supports_audio = True
    cache_size = 4096  # transcripts kept, so rendering and generating an item transcribe it once

    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        asr_batch_size: int = 16,
    ) -> None:
        from xkd_eval.models import load_model

        super().__init__(model_id, revision=revision)
        self.asr_spec, self.llm_spec = split_spec(model_id)
        folder = resolve_asr(self.asr_spec)
        backend = {"transformers": WhisperASR, "faster-whisper": FasterWhisperASR}[asr_backend(folder)]
        self.asr = backend(folder, device=pick_device(device), dtype=dtype, batch_size=asr_batch_size)
        llm_options = {key: value for key, value in {"device": device, "dtype": dtype}.items() if value is not None}
        self.llm: ModelAdapter = load_model(self.llm_spec, revision=revision, **llm_options)
        self._transcripts: OrderedDict[str, str] = OrderedDict()

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "asr": {"backend": self.asr.backend, "name": self.asr_spec},
            "llm": self.llm.identity(),
        }

    # ------------------------------------------------------------------ ASR

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        """Greedy English transcripts, one per audio (mono float32 at 16 kHz)."""
        keys = [samples_digest(audio) for audio in audios]
        missing = list(dict.fromkeys(k for k in keys if k not in self._transcripts))
        if missing:
            first = {key: audio for key, audio in zip(keys, audios, strict=True)}
            for key, text in zip(missing, self.asr.transcribe([first[k] for k in missing]), strict=True):
                self._transcripts[key] = text
            while len(self._transcripts) > self.cache_size:
                self._transcripts.popitem(last=False)
        return [self._transcripts[key] for key in keys]

    def llm_queries(self, queries: Sequence[Query]) -> list[Query]:
        """What the LLM is asked: a speech query becomes its transcript, a text query stays as it is."""
        speech = [q.audio for q in queries if q.audio is not None]
        transcripts = iter(self.transcribe(speech) if speech else [])
        return [replace(q, text=next(transcripts), audio=None) if q.audio is not None else q for q in queries]

    # ------------------------------------------------------------------ the model contract

    def render_prompt(self, query: Query) -> str:
        return self.llm.render_prompt(self.llm_queries([query])[0])

    def generate(self, queries: Sequence[Query], settings: GenerationSettings) -> list[str]:
        if not queries:
            return []
        return self.llm.generate(self.llm_queries(queries), settings)

    def continuation_logits(self, queries: Sequence[Query], continuations: Sequence[str]):
        if not queries:
            return []
        return self.llm.continuation_logits(self.llm_queries(queries), continuations)

    def vocabulary(self) -> dict[str, int] | None:
        return self.llm.vocabulary()
