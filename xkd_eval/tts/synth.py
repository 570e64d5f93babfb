"""Cached, deterministic synthesis, spoken versions of text tasks, and the ``xkd-eval tts`` export.

Every clip is 16 kHz mono float32 WAV at ``<cache>/<key>.wav`` with
``key = sha256(engine, voice, engine version, format, text)``: a rerun reuses the file (no engine
call), a new engine version or voice makes a new file. Files are written to a temporary name and
renamed, so an interrupted run never leaves a half-written clip under a valid key.

Which voice speaks an item depends only on the item's id (a hash), never on the order or number of
items, so adding items does not move any other item to another voice. espeak-ng output is
bit-identical across runs; piper samples noise, so the cache (not the engine) is what makes a piper
clip identical on rerun - keep the cache, or the folder ``tts_command`` writes, with the results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xkd_eval.errors import XkdError
from xkd_eval.io import atomic_write_bytes, atomic_write_jsonl, cache_root
from xkd_eval.records import QUESTION_AUDIO, AudioRef, Item
from xkd_eval.tts.engines import ENGINES, TTSUnavailableError, Voice, engine_version, parse_voice

SAMPLE_RATE = 16_000
FORMAT_TAG = "wav-16k-mono-f32-soxr-hq-v1"  # part of the key: a change of output format makes new files

# one neural voice and four espeak-ng speakers (US and British accents, female and male variants),
# chosen for intelligibility: Whisper-base WER on the listen subset 0.01 (piper), 0.02-0.11 (these espeak-ng)
DEFAULT_VOICES: tuple[str, ...] = (
    "piper:joe",
    "espeak-ng:en-us",
    "espeak-ng:en-us+f2",
    "espeak-ng:en-gb-x-rp",
    "espeak-ng:en-us+m3",
)
ESPEAK_VOICES: tuple[str, ...] = tuple(v for v in DEFAULT_VOICES if v.startswith("espeak-ng:"))


def tts_cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where clips live: ``<cache root>/tts``; an explicit ``cache`` folder is used as given."""
    return Path(cache).expanduser() if cache is not None else cache_root() / "tts"


def cache_key(voice: Voice | str, text: str, version: str | None = None) -> str:
    voice = parse_voice(voice)
    version = engine_version(voice) if version is None else version
    payload = json.dumps([voice.engine, voice.name, version, FORMAT_TAG, text], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def assign_voice(item_id: str, voices: Sequence[str | Voice]) -> str:
    """The voice that speaks ``item_id``: a hash of the id picks one, the same on every machine."""
    if not voices:
        raise XkdError("no TTS voices given")
    digest = hashlib.sha256(f"xkd-eval-voice:{item_id}".encode()).digest()
    return parse_voice(voices[int.from_bytes(digest[:8], "big") % len(voices)]).spec


@dataclass
class SynthesisStats:
    synthesized: int = 0
    reused: int = 0
    seconds_of_audio: float = 0.0


_write_lock = threading.Lock()


def _write_atomic(path: Path, audio: np.ndarray) -> None:
    import io

    # scipy's float WAV holds the samples and nothing else; libsndfile adds a PEAK chunk stamped with
    # the wall-clock second, so the same clip written twice differed in its bytes
    from scipy.io import wavfile

    buffer = io.BytesIO()
    wavfile.write(buffer, SAMPLE_RATE, np.ascontiguousarray(audio, dtype=np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def _render(voice: Voice, text: str) -> np.ndarray:
    audio, rate = ENGINES[voice.engine].synthesize(text, voice.name)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        raise XkdError(f"{voice} produced no audio for {text[:60]!r}")
    if rate != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)


@contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar on stderr (or nothing); yields the callable that advances it."""
    if not enabled or total < 2:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def synthesize(
    texts: Sequence[str],
    voice: str | Voice,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    stats: SynthesisStats | None = None,
) -> list[Path]:
    """One 16 kHz mono float32 WAV per text, spoken by ``voice``, under ``out_dir`` (default: the TTS cache).

    Files already there (same engine, voice, engine version and text) are reused without calling the
    engine. Raises TTSUnavailableError, naming the install command, when the engine is missing.
    """
    voice = parse_voice(voice)
    directory = tts_cache_dir(out_dir)
    version = engine_version(voice)
    stats = stats if stats is not None else SynthesisStats()
    paths: list[Path] = []
    missing: dict[Path, str] = {}
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise XkdError(f"cannot synthesise an empty text with {voice}")
        path = directory / f"{cache_key(voice, text, version)}.wav"
        paths.append(path)
        if path.is_file():
            stats.reused += 1
        elif path not in missing:
            missing[path] = text
    if not missing:
        return paths

    def make(path: Path, text: str) -> None:
        audio = _render(voice, text)
        _write_atomic(path, audio)
        with _write_lock:
            stats.synthesized += 1
            stats.seconds_of_audio += audio.size / SAMPLE_RATE

    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    workers = workers if ENGINES[voice.engine].parallel else 1
    with _progress(len(missing), f"TTS {voice}", progress) as advance:
        if workers == 1:
            for path, text in missing.items():
                make(path, text)
                advance()
        else:
            with ThreadPoolExecutor(workers) as pool:
                for future in [pool.submit(make, path, text) for path, text in missing.items()]:
                    future.result()
                    advance()
    return paths


# --- spoken versions of text tasks -------------------------------------------------------------------


def spoken_text_of(item: Item) -> str:
    """What the speaker says: ``metadata['spoken_text']`` where set, else the prompt.

    A multiple-choice prompt with "A. ..." lines is read naturally: "<question> Is it A, x; B, y; or D, z?"
    """
    explicit = item.metadata.get("spoken_text")
    if explicit:
        return str(explicit)
    prompt = item.prompt or ""
    options = _read_options(prompt)
    # options partly inline ("Q? A. wax B. milk\nC. honey\nD. sand") are read as written
    if len(options) >= 2 and _is_multiple_choice(item) and not _has_inline_options(prompt):
        read = "; ".join(("or " if i == len(options) - 1 else "") + f"{k}, {v}" for i, (k, v) in enumerate(options))
        return f"{_bare_question(prompt)} Is it {read}?".strip()
    return " ".join(prompt.split())


def question_text_of(item: Item) -> str | None:
    """The bare question of a multiple-choice item whose speaker also reads the options, else None.

    A cloze-scored MCQ gives the written arm the question alone (``xkd_eval.scoring.mcq_options.stem``:
    without its "A. ..." lines, or before the first marker of options written inline); a clip of it
    keeps the spoken arm's query the same words (``speak_items(question_clips=True)`` makes one)."""
    prompt = item.prompt or ""
    if len(_read_options(prompt)) < 2 and not (_is_multiple_choice(item) and _has_inline_options(prompt)):
        return None
    question = _bare_question(prompt)
    return question if question and question != spoken_text_of(item) else None


def _is_multiple_choice(item: Item) -> bool:
    return item.scorer in (None, "mcq", "auto") or bool(item.choices)


def _read_options(prompt: str) -> list[tuple[str, str]]:
    from xkd_eval.scoring.mcq import option_lines

    return option_lines(prompt)


def _has_inline_options(prompt: str) -> bool:
    from xkd_eval.scoring.mcq import written_options

    written = written_options(prompt)
    return written.layout == "inline" and len(written.options) >= 2


def _bare_question(prompt: str) -> str:
    """The written cloze query, on one line: what the speaker says before any options."""
    # imported here: importing the scoring package loads every scorer
    from xkd_eval.scoring.mcq_options import stem

    return " ".join(stem(prompt).split())


@dataclass(frozen=True)
class SpokenTask:
    items: tuple[Item, ...]
    problems: tuple[tuple[str, str], ...]  # (item id, why it has no audio)
    stats: SynthesisStats


def speak_items(
    items: Iterable[Item],
    voices: Sequence[str | Voice] = DEFAULT_VOICES,
    cache: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    synthesize_missing: bool = True,
    skip_unavailable: bool = False,
    question_clips: bool = False,
) -> SpokenTask:
    """Items with ``audio`` set to their clip (voice by item id) and ``metadata['voice']`` recorded.

    ``synthesize_missing=False`` only attaches clips already in the cache; ``skip_unavailable=True``
    leaves items of a missing engine without audio (reported in ``problems``) instead of raising.
    ``question_clips=True`` also speaks a multiple-choice item's bare question, in the same voice, into
    ``metadata['question_audio']`` (the spoken query of a cloze-scored MCQ).
    """
    items = list(items)
    voice_specs = [parse_voice(v).spec for v in voices]
    stats = SynthesisStats()
    directory = tts_cache_dir(cache)
    by_voice: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_voice.setdefault(assign_voice(item.id, voice_specs), []).append(index)
    audio_paths: dict[int, Path] = {}
    question_paths: dict[int, Path] = {}
    problems: list[tuple[str, str]] = []
    for spec in voice_specs:  # a fixed order, so progress and errors read the same every run
        indices = by_voice.get(spec, [])
        if not indices:
            continue
        texts = [spoken_text_of(items[i]) for i in indices]
        questions = {i: q for i in indices if question_clips and (q := question_text_of(items[i]))}
        texts += list(questions.values())
        try:
            if synthesize_missing:
                paths = synthesize(texts, spec, directory, progress=progress, stats=stats)
            else:
                version = engine_version(parse_voice(spec))
                paths = [directory / f"{cache_key(spec, t, version)}.wav" for t in texts]
        except TTSUnavailableError as exc:
            if not skip_unavailable:
                raise
            problems.extend((items[i].id, f"no audio: {exc}") for i in indices)
            continue
        for i, path in zip(indices, paths[: len(indices)], strict=True):
            if path.is_file():
                audio_paths[i] = path
            else:
                problems.append((items[i].id, f"no audio yet for voice {spec} (not synthesised)"))
        for i, path in zip(questions, paths[len(indices) :], strict=True):
            if path.is_file():
                question_paths[i] = path
    spoken = []
    for index, item in enumerate(items):
        path = audio_paths.get(index)
        if path is None:
            spoken.append(item)
            continue
        voice = assign_voice(item.id, voice_specs)
        metadata = {**item.metadata, "voice": voice}
        if index in question_paths:
            metadata[QUESTION_AUDIO] = str(question_paths[index])
        spoken.append(dataclasses.replace(item, audio=AudioRef(path=str(path)), metadata=metadata))
    return SpokenTask(tuple(spoken), tuple(problems), stats)


def spoken_task(
    task_items: Iterable[Item],
    voices: Sequence[str | Voice] = DEFAULT_VOICES,
    cache: str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> list[Item]:
    """Spoken versions of any text task's items: each gets ``AudioRef(path=<its clip>)``.

    The text spoken is ``metadata['spoken_text']`` or the prompt (MCQ options read aloud); the voice
    is picked by item id from ``voices``. Raises TTSUnavailableError when an engine is missing.
    """
    return list(speak_items(task_items, voices, cache, progress=progress).items)


# --- the `xkd-eval tts TASK --out DIR` export --------------------------------------------------------

_CORE = ("id", "prompt", "audio", "reference", "choices", "scorer", QUESTION_AUDIO)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class TTSExport:
    path: Path  # the JSONL file, loadable as jsonl:<path>
    n_items: int
    synthesized: int
    reused: int
    voices: tuple[str, ...]
    problems: tuple[tuple[str, str], ...] = ()  # (where in the source, why it is not an item)

    def summary(self) -> str:
        return (
            f"wrote {self.n_items} spoken items to {self.path} ({self.synthesized} clips synthesised, "
            f"{self.reused} from the cache; voices: {', '.join(self.voices)})"
        )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def tts_command(
    task: str | Sequence[Item],
    out_dir: str | os.PathLike,
    voices: Sequence[str | Voice] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TTSExport:
    """Synthesise a spoken version of a text task into ``out_dir``.

    Writes ``out_dir/audio/<n>-<id>.wav`` and ``out_dir/<task>.jsonl`` with ``audio`` paths relative
    to the file, so ``jsonl:<out_dir>/<task>.jsonl`` loads it with the same ids, references and scorer
    fields. ``task`` is a task name (``builtin/mcq``, ``voicebench/sd-qa``, ``jsonl:...``) or items.
    """
    skipped: tuple[tuple[str, str], ...] = ()  # what the source could not make into items
    if isinstance(task, str):
        from xkd_eval.tasks import get_task

        spec = get_task(task)
        # its text items (a task that makes its own clips, the built-in benchmark, does not make them first)
        loaded = spec.load(data_dir, limit=limit, audio=False)
        items, skipped = list(loaded.items), tuple((p.where, p.reason) for p in loaded.problems)
        name, default_scorer = task, spec.scorer
    else:
        items, name, default_scorer = list(task)[:limit], "items", None
    if not items:
        raise XkdError(f"{name}: no items to synthesise")
    voices = tuple(parse_voice(v).spec for v in (voices or DEFAULT_VOICES))
    result = speak_items(items, voices, cache, progress=progress, question_clips=True)
    out = Path(out_dir).expanduser()
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    slug = _UNSAFE.sub("_", name.replace("/", "-").replace(":", "-")).strip("_.") or "items"
    target = out / f"{slug}.jsonl"
    records: list[dict[str, Any]] = []
    for number, item in enumerate(result.items, start=1):
        if item.audio is None or item.audio.path is None:
            raise XkdError(f"{name}: item {item.id!r} got no audio")
        clip = audio_dir / f"{number:05d}-{_UNSAFE.sub('_', item.id)[:80]}.wav"
        _link_or_copy(Path(item.audio.path), clip)
        record: dict[str, Any] = {
            "id": item.id,
            "prompt": item.prompt,
            "audio": clip.relative_to(out).as_posix(),
            "reference": list(item.references),
        }
        if item.metadata.get(QUESTION_AUDIO):
            question = clip.with_name(f"{clip.stem}-question.wav")
            _link_or_copy(Path(item.metadata[QUESTION_AUDIO]), question)
            record[QUESTION_AUDIO] = question.relative_to(out).as_posix()
        if item.choices:
            record["choices"] = list(item.choices)
        scorer = item.scorer or (default_scorer if default_scorer not in (None, "auto") else None)
        if scorer:
            record["scorer"] = scorer
        extra = {k: v for k, v in item.metadata.items() if k not in _CORE}
        record |= _json_safe(extra) | {"tts_text": spoken_text_of(item), "source_task": name}
        records.append(record)
    atomic_write_jsonl(target, records)
    export = TTSExport(target, len(result.items), result.stats.synthesized, result.stats.reused, voices, skipped)
    if log:
        log(export.summary())
    return export


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
