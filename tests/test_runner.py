"""The runner on tiny real models: batching, caching and resume, crash safety, MCQ modes, bad audio."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xkd_eval.errors import XkdError
from xkd_eval.models import GenerationSettings, load_model
from xkd_eval.runner.core import RunConfig, prepare_tasks, run_arm
from xkd_eval.runner.store import ResultStore, share_results

SETTINGS = GenerationSettings(max_new_tokens=4)


def config(tmp_path, **overrides) -> RunConfig:
    return RunConfig(out_dir=tmp_path, settings=SETTINGS, scorer="mcq", **overrides)


def test_batched_equals_per_item_and_reruns_hit_the_cache(tiny_slm, mcq_task, tmp_path):
    model = load_model(str(tiny_slm))
    [run] = prepare_tasks([f"jsonl:{mcq_task}"], config(tmp_path))
    batched = run_arm(model, "slm", "slm_speech", run, config(tmp_path / "a", batch_size=4))
    single = run_arm(model, "slm", "slm_speech", run, config(tmp_path / "b", batch_size=1))
    key = lambda rows: sorted((r["item_id"], r["response"]) for r in rows)  # noqa: E731
    assert key(batched) == key(single)
    broken = [r for r in batched if r["error"]]
    assert [r["item_id"] for r in broken] == ["q9"] and "cannot decode" in broken[0]["error"]

    calls = []
    original = model.generate
    model.generate = lambda queries, settings: calls.append(len(queries)) or original(queries, settings)
    again = run_arm(model, "slm", "slm_speech", run, config(tmp_path / "a", batch_size=4))
    assert calls == [] and key(again) == key(batched)  # all 9 good items came from the store
    # a different decoding setting is a different result: recomputed
    other = RunConfig(out_dir=tmp_path / "a", settings=GenerationSettings(max_new_tokens=5), scorer="mcq", batch_size=4)
    run_arm(model, "slm", "slm_speech", run, other)
    assert sum(calls) == 9


def test_changed_audio_is_answered_again(tiny_slm, mcq_task, tmp_path):
    import shutil

    import soundfile as sf
    from conftest import tone

    task = tmp_path / "task"
    shutil.copytree(mcq_task.parent, task)
    [run] = prepare_tasks([f"jsonl:{task / mcq_task.name}"], config(tmp_path))
    model = load_model(str(tiny_slm))
    run_arm(model, "slm", "slm_speech", run, config(tmp_path / "out", batch_size=4))
    # the rendered speech prompt is the same whatever the clip holds: only the samples tell them apart
    sf.write(task / "audio" / "3.wav", tone(1.1, rate=16_000, seed=99), 16_000)
    sf.write(task / "audio" / "5.wav", tone(0.3 + 0.25 * 5, rate=16_000, seed=5), 16_000)  # the same samples
    asked = []
    original = model.generate
    model.generate = lambda queries, settings: asked.extend(q.item_id for q in queries) or original(queries, settings)
    [run] = prepare_tasks([f"jsonl:{task / mcq_task.name}"], config(tmp_path))
    run_arm(model, "slm", "slm_speech", run, config(tmp_path / "out", batch_size=4))
    assert asked == ["q3"]


def test_text_arm_and_mcq_modes(tiny_text, mcq_task, tmp_path):
    model = load_model(str(tiny_text))
    [run] = prepare_tasks([f"jsonl:{mcq_task}"], config(tmp_path))
    rows = run_arm(model, "base", "base_text", run, config(tmp_path, mcq_mode="cloze"))
    assert {r["mcq_mode"] for r in rows} == {"cloze"}
    assert {r["response"] for r in rows} <= {"A", "B", "C", "D"} and all(r["extracted"] for r in rows)
    record = ResultStore(tmp_path / "results", "base", run.spec.name).records()[0]
    assert set(record["option_logprobs"]) == {"A", "B", "C", "D"}
    # the cloze prompt is the question without its option lines
    assert "whale" not in record["prompt"] and "which is a mammal" in record["prompt"]
    letter = run_arm(model, "base", "base_text", run, config(tmp_path, mcq_mode="letter", batch_size=3))
    assert all(r["mcq_mode"] == "letter" and r["extracted"] in "ABCD" for r in letter)


def test_cloze_speech_arm_hears_the_bare_question_where_a_clip_of_it_exists(tiny_slm, mcq_task, tmp_path):
    # a cloze query is the question without its options: where the task has a clip of the question alone,
    # the spoken arm hears that one, so both arms ask the same words; letter and generate hear the options
    import dataclasses

    import soundfile as sf
    from conftest import tone

    from xkd_eval.records import QUESTION_AUDIO

    question = tmp_path / "question.wav"
    sf.write(question, tone(0.7, rate=16_000, seed=42), 16_000)
    [run] = prepare_tasks([f"jsonl:{mcq_task}"], config(tmp_path))
    items = tuple(
        dataclasses.replace(i, metadata={**i.metadata, QUESTION_AUDIO: str(question)}) if i.id in ("q1", "q2") else i
        for i in run.items
    )
    run = dataclasses.replace(run, loaded=dataclasses.replace(run.loaded, items=items))
    model = load_model(str(tiny_slm))
    heard: dict[str, int] = {}
    original = model.continuation_logprobs
    model.continuation_logprobs = lambda queries, continuations: (
        heard.update((q.item_id, q.audio.size) for q in queries) or original(queries, continuations)
    )
    run_arm(model, "slm", "slm_speech", run, config(tmp_path / "cloze", mcq_mode="cloze", batch_size=4))
    assert heard["q1"] == heard["q2"] == 11_200  # 0.7 s: the question's clip
    assert heard["q3"] == 16_800  # no clip of the question alone: the item's own (1.05 s)
    heard.clear()
    run_arm(model, "slm", "slm_speech", run, config(tmp_path / "letter", mcq_mode="letter", batch_size=4))
    assert heard["q1"] == 8_800 and heard["q2"] == 12_800  # the options are in the written query too


def test_speech_arm_of_a_text_model_is_refused(tiny_text, mcq_task, tmp_path):
    model = load_model(f"hf-text:{tiny_text}")
    [run] = prepare_tasks([f"jsonl:{mcq_task}"], config(tmp_path))
    with pytest.raises(XkdError, match="cannot take audio"):
        run_arm(model, "m", "slm_speech", run, config(tmp_path))


def test_store_drops_a_torn_last_line(tmp_path):
    store = ResultStore(tmp_path, "m", "t")
    store.append([{"key": "a", "response": "x"}, {"key": "b", "response": "y"}])
    with store.path.open("a") as handle:
        handle.write('{"key": "c", "resp')  # the write a kill -9 cut short
    reopened = ResultStore(tmp_path, "m", "t")
    assert len(reopened) == 2 and "c" not in reopened
    assert store.path.read_text().endswith("}\n")  # repaired before anything is appended
    reopened.append([{"key": "c", "response": "z"}])
    assert len(ResultStore(tmp_path, "m", "t")) == 3


def test_store_drops_other_revisions_only_when_asked(tmp_path):
    old, new = {"model_id": "m", "revision": "sha:old"}, {"model_id": "m", "revision": "sha:new"}
    store = ResultStore(tmp_path, "m", "t")
    store.append([{"key": "a", "model": old}, {"key": "b", "model": new}, {"key": "c", "lm_eval_run": "x"}])
    assert len(ResultStore(tmp_path, "m", "t")) == 3  # append-only: by default nothing goes
    assert store.drop_other_revisions(new) == 1
    assert [json.loads(line)["key"] for line in store.path.read_text().splitlines()] == ["b", "c"]
    assert "a" not in store and len(ResultStore(tmp_path, "m", "t")) == 2
    assert store.drop_other_revisions(new) == 0


def test_an_unchanged_models_answers_are_shared_record_by_record(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    ResultStore(before, "teacher", "builtin/qa").append([{"key": k, "response": k} for k in "abc"])
    ResultStore(before, "teacher", "builtin/qa", rank=1).append([{"key": "d", "response": "d"}])
    ResultStore(before, "teacher", "builtin/mcq").append([{"key": "m", "response": "m"}])
    ResultStore(before, "student", "builtin/qa").append([{"key": "s", "response": "s"}])
    target = ResultStore(after, "teacher", "builtin/qa")
    target.append([{"key": "b", "response": "b"}, {"key": "z", "response": "z"}])  # already answered after
    with target.path.open("a") as handle:
        handle.write('{"key": "c", "resp')  # cut short by a crash
    assert share_results("teacher", before, after, tasks=["builtin/qa"]) == 3  # a, c, d: b was there
    shared = ResultStore(after, "teacher", "builtin/qa")
    assert sorted(r["key"] for r in shared.records()) == ["a", "b", "c", "d", "z"]
    assert len(target.path.read_text().splitlines()) == 4  # the torn line went, nothing is doubled
    assert "m" not in ResultStore(after, "teacher", "builtin/mcq")  # another task: not asked for
    assert len(ResultStore(after, "student", "builtin/qa")) == 0  # another model: never shared
    assert share_results("teacher", before, after, tasks=["builtin/qa"]) == 0  # idempotent
    assert share_results("teacher", before, after) == 1  # every task: the mcq answer
    assert share_results("nobody", before, after) == 0


KILL_SCRIPT = """
import sys
from xkd_eval.models import GenerationSettings, load_model
from xkd_eval.runner.core import RunConfig, prepare_tasks, run_arm
out, model_dir, task = sys.argv[1:4]
config = RunConfig(out_dir=out, settings=GenerationSettings(max_new_tokens=24), scorer="mcq", batch_size=1)
[run] = prepare_tasks([f"jsonl:{task}"], config)
run_arm(load_model(model_dir), "m", "base_text", run, config)
"""


def test_kill_9_loses_at_most_the_batch_in_flight(tiny_text, mcq_task, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path), str(tiny_text), str(mcq_task)], env=env
    )
    files = tmp_path / "results"
    deadline = time.monotonic() + 120
    done_before_kill = 0
    while time.monotonic() < deadline and process.poll() is None:
        lines = [p.read_text().count("\n") for p in files.glob("*/*.jsonl")] if files.exists() else []
        if lines and lines[0] >= 3:
            process.send_signal(signal.SIGKILL)
            done_before_kill = lines[0]
            break
        time.sleep(0.05)
    process.wait()
    assert done_before_kill >= 3, "the run finished before it could be killed"
    model = load_model(str(tiny_text))
    calls = []
    original = model.generate
    model.generate = lambda queries, settings: calls.append(len(queries)) or original(queries, settings)
    cfg = RunConfig(out_dir=tmp_path, settings=GenerationSettings(max_new_tokens=24), scorer="mcq", batch_size=1)
    [run] = prepare_tasks([f"jsonl:{mcq_task}"], cfg)
    rows = run_arm(model, "m", "base_text", run, cfg)
    assert len(rows) == 10
    survived = len(ResultStore(tmp_path / "results", "m", run.spec.name))
    assert survived == 10 and sum(calls) <= 10 - done_before_kill


def test_user_task_scorer_is_guessed_from_the_item_shape():
    from xkd_eval.records import Item
    from xkd_eval.runner.core import guess_scorer

    assert guess_scorer([Item("1", "t", "Q?\nA. a\nB. b\nC. c\nD. d", ("B",))]) == "mcq"
    assert guess_scorer([Item("1", "t", "Capital of France?", ("Paris",))]) == "qa"
    assert guess_scorer([Item("1", "t", "Heard?", ("dog",), ("dog", "cat"))]) == "mmau"
    assert guess_scorer([Item("1", "t", "Write", metadata={"instruction_id_list": ["x"]})]) == "ifeval"
    assert guess_scorer([Item("1", "t", "Tell me a story")]) == "open"
    assert guess_scorer([Item("1", "t", "Q", ("no",), scorer="bbh")]) == "bbh"


def test_encoder_cache_gives_the_same_answers_and_skips_the_encoder(tiny_slm, tmp_path):
    import numpy as np

    from xkd_eval.models import Query

    rng = np.random.default_rng(0)
    queries = [Query(str(i), "Listen", (0.1 * rng.standard_normal(8000 * (i + 1))).astype("float32")) for i in range(3)]
    plain = load_model(str(tiny_slm))
    cached = load_model(str(tiny_slm), encoder_cache=str(tmp_path / "features"))
    assert cached.generate(queries, SETTINGS) == plain.generate(queries, SETTINGS)
    options = ["A", "B b", "whale"]
    assert cached.continuation_logprobs(queries, options) == pytest.approx(
        plain.continuation_logprobs(queries, options), abs=1e-4
    )
    assert len(list((tmp_path / "features").rglob("*.*"))) >= 3  # one cached entry per clip
    tower = cached.model.model.audio_tower if hasattr(cached.model, "model") else cached.model.audio_tower
    tower.forward = lambda *a, **k: pytest.fail("the encoder ran again")
    assert cached.generate(queries, SETTINGS) == plain.generate(queries, SETTINGS)


@pytest.mark.parametrize("which", ["text", "speech", "speech-cached"])
def test_options_of_one_prompt_share_its_pass(which, tiny_text, tiny_slm, tmp_path):
    """MCQ options reuse one pass over their prompt (KV cache): the same logits as separate sequences."""
    import numpy as np

    from xkd_eval.models import Query

    rng = np.random.default_rng(1)
    if which == "text":
        model = load_model(str(tiny_text))
        first, second = Query("a", "Which is a mammal?"), Query("b", "The capital of France is")
    else:
        options = {"encoder_cache": str(tmp_path)} if which == "speech-cached" else {}
        model = load_model(str(tiny_slm), **options)
        first = Query("a", "Listen", (0.1 * rng.standard_normal(16000)).astype("float32"))
        second = Query("b", "Listen", (0.1 * rng.standard_normal(30000)).astype("float32"))
    queries = [first, first, first, second, second]
    continuations = ["whale", "shark fish", "A", "Paris", "Lyon is big"]
    shared = model.continuation_logits(queries, continuations)
    model.shares_prefixes = False
    joint = model.continuation_logits(queries, continuations)
    for (s_logits, s_ids), (j_logits, j_ids) in zip(shared, joint, strict=True):
        assert s_ids.tolist() == j_ids.tolist()
        assert (s_logits - j_logits).abs().max() < 1e-4


def test_cloze_refuses_only_the_item_whose_options_cannot_be_told_apart(tiny_text, tmp_path):
    """A real (tiny, random) text LLM: the inline item is ranked after its bare question; the ambiguous one
    gets an error row that names it and says how to write it, and the model is never asked it."""
    model = load_model(f"hf-text:{tiny_text}")
    asked: list[str] = []
    ranked = model.continuation_logprobs

    def recording(queries, continuations):
        asked.extend(q.item_id for q in queries)
        return ranked(queries, continuations)

    model.continuation_logprobs = recording

    task = tmp_path / "bees.jsonl"
    task.write_text(
        json.dumps({"id": "inline", "prompt": "What do bees make? A. wax paper. B. milk. C. honey. D. sand.",
                    "reference": "A", "scorer": "mcq"}) + "\n"
        + json.dumps({"id": "vitamin", "prompt": "Is vitamin A. good? A. yes B. no", "reference": "A",
                      "scorer": "mcq"}) + "\n"
    )  # fmt: skip
    cfg = config(tmp_path, mcq_mode="cloze")
    [run] = prepare_tasks([f"jsonl:{task}"], cfg)
    rows = {r["item_id"]: r for r in run_arm(model, "m", "base_text", run, cfg)}
    assert set(asked) == {"inline"}
    assert rows["inline"]["response"] in "ABCD" and rows["inline"]["error"] is None
    prompt = rows["inline"]["prompt"]  # the chat-rendered bare question: the options taken out
    assert "What do bees make?<|im_end|>" in prompt and "wax" not in prompt
    refused = rows["vitamin"]
    assert refused["response"] is None and refused["error"].startswith("item 'vitamin': cloze scoring asks")
    assert "write one option per line as 'A. text', or give the options in the 'choices' field" in refused["error"]
