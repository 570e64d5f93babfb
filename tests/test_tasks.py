"""Task names, loaders in the real formats, and audio decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tone, wav_bytes

from xkd_eval.audio import TARGET_SAMPLE_RATE, decode_audio, load_all_audio, load_audio
from xkd_eval.errors import AudioError, DataFormatError, UnknownNameError
from xkd_eval.tasks import all_task_names, get_task


def test_task_names_resolve_with_defaults():
    assert get_task("voicebench/sd-qa").name == "voicebench/sd-qa"
    assert get_task("voicebench/sd-qa").description.endswith("(usa)")
    assert get_task("voicebench/sd-qa:gbr").scorer == "qa"
    assert get_task("voicebench/mmsu").breakdowns == ("domain",)
    assert get_task("voicebench/mmsu:law").breakdowns == ()
    assert get_task("voicebench/bbh").scorer == "bbh"
    assert get_task("voicebench/advbench").scorer == "refusal"
    assert get_task("mmau-mini").scorer == "mmau"
    assert get_task("jsonl:/tmp/x.jsonl").name == "jsonl:/tmp/x.jsonl"
    names = all_task_names()
    assert "voicebench/mmsu:physics" in names and "voicebench/alpacaeval_full" in names


@pytest.mark.parametrize(
    ("name", "expected"),
    [("voicebench/mmsus", "voicebench/mmsu"), ("voicebench/sdqa", "voicebench/sd-qa"), ("mmau_mini", "mmau-mini")],
)
def test_unknown_task_lists_close_matches(name, expected):
    with pytest.raises(UnknownNameError) as error:
        get_task(name)
    message = str(error.value)
    assert name in message and expected in message and "\n" not in message


def test_unknown_split_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match="usa"):
        get_task("voicebench/sd-qa:us")


def test_voicebench_local_parquet_layout(voicebench_dir):
    loaded = get_task("voicebench/openbookqa").load(voicebench_dir)
    assert [item.id for item in loaded.items] == ["openbookqa/test/0", "openbookqa/test/1", "openbookqa/test/2"]
    first = loaded.items[0]
    assert first.references == ("B",) and first.scorer == "mcq" and "whale" in first.prompt
    audio, failures = load_all_audio(loaded.items)
    assert set(audio) == {"openbookqa/test/0", "openbookqa/test/1"}
    # stereo 44.1 kHz became mono 16 kHz of the same duration
    assert audio["openbookqa/test/1"].ndim == 1 and audio["openbookqa/test/1"].dtype == np.float32
    assert abs(audio["openbookqa/test/1"].size - 0.4 * TARGET_SAMPLE_RATE) <= 2
    [failure] = failures
    assert failure.item_id == "openbookqa/test/2" and "broken.wav" in failure.source
    assert "cannot decode" in failure.reason


def test_voicebench_hub_code_path_on_a_local_snapshot(voicebench_hub_snapshot, voicebench_dir):
    """The hub id and a snapshot folder go through the same ``load_dataset(repo, config)`` call."""
    via_snapshot = get_task("voicebench/mmsu").load(voicebench_hub_snapshot)
    via_files = get_task("voicebench/mmsu").load(voicebench_dir)
    assert [i.id for i in via_snapshot.items] == [i.id for i in via_files.items]
    assert len(via_snapshot.items) == 15  # 12 domains pooled: law 2, physics 3, the others 1
    assert sum(i.metadata["domain"] == "physics" for i in via_snapshot.items) == 3
    assert len(get_task("voicebench/mmsu:physics").load(voicebench_hub_snapshot).items) == 3
    assert via_snapshot.items[0].audio.data == via_files.items[0].audio.data


def test_voicebench_split_choice_and_bbh_subtask(voicebench_dir):
    sdqa = get_task("voicebench/sd-qa").load(voicebench_dir).items
    assert len(sdqa) == 1 and sdqa[0].metadata["accent"] == "usa" and "(usa)" in sdqa[0].prompt
    gbr = get_task("voicebench/sd-qa:gbr").load(voicebench_dir).items
    assert "(gbr)" in gbr[0].prompt
    loaded = get_task("voicebench/bbh").load(voicebench_dir)
    bbh = loaded.items
    # the subtask is found anywhere in the id ("bbh_navigate_0042"), as the official evaluator does
    assert [i.metadata["subtask"] for i in bbh] == ["sports_understanding", "hyperbaton", "navigate"]
    assert bbh[1].references == ("(B)",)
    # an id that names no subtask cannot be scored: that row is left out, and the problem says why
    [problem] = [p for p in loaded.problems if "subtask" in p.reason]
    assert problem.where == "bbh/test/3" and "'bbh_date_understanding_0001' names no subtask" in problem.reason


def test_voicebench_missing_config_is_a_clear_error(voicebench_dir):
    with pytest.raises(DataFormatError, match="ifeval/test-00000-of-00001.parquet"):
        get_task("voicebench/ifeval").load(voicebench_dir)


def test_mmau_loader(mmau_dir):
    loaded = get_task("mmau-mini").load(mmau_dir)
    assert [i.id for i in loaded.items] == ["id-0", "id-1", "id-2"]
    item = loaded.items[0]
    assert item.choices == ("Man", "Woman", "Child", "Robot") and item.reference == "Woman"
    assert item.metadata["category"] == "Reasoning"  # one-element list normalised
    assert item.metadata["mmau_task"] == "sound" and item.metadata["sub_category"] == "Acoustic Source Inference"
    audio, failures = load_all_audio(loaded.items)
    assert set(audio) == {"id-0", "id-1"}
    assert abs(audio["id-0"].size - 0.4 * TARGET_SAMPLE_RATE) <= 2  # 22.05 kHz resampled
    [failure] = failures
    assert failure.item_id == "id-2" and "not found" in failure.reason and "id-2.wav" in failure.reason


def test_mmau_bad_json(tmp_path):
    (tmp_path / "mmau-test-mini.json").write_text("[{]")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        get_task("mmau-mini").load(tmp_path)


def test_jsonl_loader_reports_bad_lines_and_keeps_the_rest(tmp_path):
    import soundfile as sf

    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "a.flac", tone(0.2, rate=8_000), 8_000, format="FLAC")
    lines = [
        json.dumps({"id": "a", "prompt": "Say hi", "audio": "clips/a.flac", "reference": "hi", "domain": "greet"}),
        "{not json",
        json.dumps({"prompt": "no id"}),
        json.dumps({"id": "a", "prompt": "duplicate"}),
        json.dumps({"id": "b", "prompt": "Pick", "choices": ["x", "y"], "reference": ["x", "ex"], "scorer": "mcq"}),
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    loaded = get_task(f"jsonl:{path}").load()
    assert [i.id for i in loaded.items] == ["a", "b"]
    assert [p.where.rsplit(":", 1)[1] for p in loaded.problems] == ["2", "3", "4"]
    assert "not valid JSON" in loaded.problems[0].reason and "duplicate" in loaded.problems[2].reason
    a, b = loaded.items
    assert a.metadata == {"domain": "greet"} and b.references == ("x", "ex") and b.scorer == "mcq"
    samples = load_audio(a)
    assert samples.size == pytest.approx(0.2 * TARGET_SAMPLE_RATE, abs=2)
    with pytest.raises(AudioError, match="has no audio"):
        load_audio(b)


def test_decode_audio_errors():
    with pytest.raises(AudioError, match="not found"):
        decode_audio("/nonexistent/clip.wav")
    with pytest.raises(AudioError, match="cannot decode"):
        decode_audio(b"garbage")
    with pytest.raises(AudioError, match="empty"):
        decode_audio(wav_bytes(np.zeros(0, dtype=np.float32)))
    same_rate = decode_audio(wav_bytes(tone(0.25)))
    assert same_rate.size == 4000
