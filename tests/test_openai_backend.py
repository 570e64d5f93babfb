"""The ``openai:`` backend against replies recorded from a real vLLM server (tests/openai_replay.py): the
requests it builds, how it reads the replies, retries, and every way an endpoint fails."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf
from openai_replay import Replay, recorded, serve

from xkd_eval.errors import EndpointError, PartialFailure, XkdError
from xkd_eval.models import GenerationSettings, Query, load_model
from xkd_eval.models.base import SPEECH_INSTRUCTION
from xkd_eval.models.serving import continuation_span

SETTINGS = GenerationSettings(max_new_tokens=16)
CLIP = (0.1 * np.sin(np.linspace(0, 440 * 2 * np.pi, 16_000))).astype(np.float32)
WRITTEN = Query("q-text", "What is the capital of France?")
SPOKEN = Query("q-speech", SPEECH_INSTRUCTION, CLIP)


@pytest.fixture
def endpoint():
    """(replay, url) of a fresh recorded server; stopped after the test."""
    replay = Replay()
    server, url = serve(replay)
    yield replay, url
    server.shutdown()


def connect(url: str, **options):
    return load_model("openai:organism", api_base=url, **({"max_retries": 2} | options))


def test_generation_requests_and_replies(endpoint):
    replay, url = endpoint
    model = connect(url)
    assert model.generate([WRITTEN, SPOKEN], SETTINGS) == ["Paris", "FIVE"]  # what the real server answered
    asked = replay.completions_asked()
    written = next(b for b in asked if b["messages"][0]["content"] == WRITTEN.text)
    assert written["max_tokens"] == 16 and written["temperature"] == 0.0
    spoken = next(b for b in asked if isinstance(b["messages"][0]["content"], list))
    audio_part, text_part = spoken["messages"][0]["content"]
    assert text_part == {"type": "text", "text": SPEECH_INSTRUCTION}  # after the clip, as the HF adapters order it
    assert audio_part["type"] == "input_audio" and audio_part["input_audio"]["format"] == "wav"
    samples, rate = sf.read(io.BytesIO(base64.b64decode(audio_part["input_audio"]["data"])), dtype="float32")
    assert rate == 16_000 and samples.ndim == 1 and np.abs(samples - CLIP).max() < 1 / 2**15
    # the clip was checked against the same instruction without it: one text-only request, asked once
    baselines = [b for b in asked if b["max_tokens"] == 1 and b["messages"][0]["content"] == SPEECH_INSTRUCTION]
    assert len(baselines) == 1


def test_the_prompt_on_record_names_the_clip_but_holds_no_samples(endpoint):
    _, url = endpoint
    model = connect(url)
    prompt = json.loads(model.render_prompt(SPOKEN))
    assert prompt[0]["content"][0]["input_audio"]["data"] == "<q-speech.wav>"
    assert model.identity()["backend"] == "openai" and url not in json.dumps(model.identity())


def test_option_log_likelihoods_come_from_the_servers_prompt_logprobs(endpoint):
    replay, url = endpoint
    model = connect(url)
    text, speech = model.continuation_logprobs([WRITTEN, SPOKEN], [" Paris", " Paris"])
    # the last prompt token of each recorded reply is " Paris"; its log-probability is the option's
    assert text == pytest.approx(recorded("text_option")["response"]["prompt_logprobs"][-1]["7042"]["logprob"])
    assert speech == pytest.approx(recorded("speech_option")["response"]["prompt_logprobs"][-1]["7042"]["logprob"])
    asked = [b for b in replay.completions_asked() if "prompt_logprobs" in b]
    assert all(b["prompt_logprobs"] == 0 and b["continue_final_message"] and not b["add_generation_prompt"]
               for b in asked)  # fmt: skip
    probe, *options = asked  # one probe that the server gives them at all, before the items
    assert probe["messages"][-1]["role"] == "assistant" and len(options) == 2
    assert all(b["messages"][-1] == {"role": "assistant", "content": " Paris"} for b in options)


def test_continuation_span_counts_the_tokens_that_spell_the_option():
    assert continuation_span(["<|im_start|>", "assistant", "\n", " wax", " paper"], " wax paper") == 2
    assert continuation_span(["\n", " B"], " B") == 1
    assert continuation_span(["ant", "\n Par", "is"], " Paris") == 2  # a token merged across the boundary counts
    with pytest.raises(XkdError, match="not the option"):
        continuation_span(["\n", " Pari"], " Paris")


def test_a_server_without_prompt_logprobs_is_refused_before_any_item(endpoint):
    replay, url = endpoint
    replay.without_prompt_logprobs = True
    model = connect(url)
    with pytest.raises(XkdError, match="--mcq-mode generate"):
        model.check_can_rank("cloze")
    assert len(replay.completions_asked()) == 1  # the probe alone


def test_a_server_that_drops_the_audio_is_an_error_on_the_item(endpoint):
    replay, url = endpoint
    replay.deaf = True
    model = connect(url)
    with pytest.raises(PartialFailure) as caught:
        model.generate([WRITTEN, SPOKEN], SETTINGS)
    assert caught.value.answers[0] == "Paris" and caught.value.fatal is None
    assert "the clip did not reach organism" in caught.value.failures[1]


def test_429_and_503_are_retried(endpoint):
    replay, url = endpoint
    model = connect(url)
    replay.fail_next = [429, 503]
    assert model.generate([WRITTEN], SETTINGS) == ["Paris"]
    assert len(replay.completions_asked()) == 3


def test_a_persistent_500_fails_its_item_and_the_others_are_answered(endpoint):
    replay, url = endpoint
    model = connect(url, max_concurrency=1)
    replay.fail_next = [500, 500, 500]  # the first request and both retries
    with pytest.raises(PartialFailure) as caught:
        model.generate([WRITTEN, WRITTEN], SETTINGS)
    assert caught.value.fatal is None and caught.value.answers[1] == "Paris"
    assert "InternalServerError" in caught.value.failures[0]


def test_a_wrong_model_name_names_what_the_server_serves(endpoint):
    _, url = endpoint
    with pytest.raises(EndpointError, match="serves no model named 'organizm'; it serves: organism"):
        load_model("openai:organizm", api_base=url)


def test_a_refused_key_is_one_line_that_never_shows_the_key(monkeypatch):
    server, url = serve(Replay(), key="right-key")
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key-123")
    try:
        with pytest.raises(EndpointError) as caught:
            connect(url)
    finally:
        server.shutdown()
    assert "refused the API key (401)" in str(caught.value) and "wrong-key-123" not in str(caught.value)


def test_an_unreachable_endpoint_says_so():
    server, url = serve(Replay())
    server.shutdown()
    server.server_close()
    with pytest.raises(EndpointError, match="cannot reach .* is the server running"):
        load_model("openai:organism", api_base=url, max_retries=0)


def test_openais_api_needs_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(XkdError, match="needs a key: set OPENAI_API_KEY"):
        load_model("openai:gpt-4o-audio-preview")


def test_a_server_killed_mid_run_loses_nothing_and_the_rerun_asks_only_the_rest(mcq_task, tmp_path):
    """The runner keeps what the endpoint answered before it died; the rerun, against the server restarted
    elsewhere, answers the rest: every item once."""
    from xkd_eval.runner.core import RunConfig, prepare_tasks, run_arm
    from xkd_eval.runner.store import ResultStore

    config = RunConfig(out_dir=tmp_path, settings=SETTINGS, scorer="mcq", mcq_mode="generate")
    [run] = prepare_tasks([f"jsonl:{mcq_task}"], config)
    dying = Replay(die_after=5)  # the text-only baseline, then four clips
    server, url = serve(dying)
    try:
        with pytest.raises(EndpointError, match="cannot reach"):
            run_arm(connect(url, max_retries=1), "openai:organism", "slm_speech", run, config)
    finally:
        server.shutdown()
    baseline = dying.completions_asked()[0]  # asked before any clip, so no answer can be lost waiting for it
    assert baseline["max_tokens"] == 1 and isinstance(baseline["messages"][0]["content"], str)
    store = ResultStore(tmp_path / "results", "openai:organism", run.spec.name)
    first = len(store)
    assert first == 4

    restarted = Replay()
    server, url = serve(restarted)
    try:
        rows = run_arm(connect(url), "openai:organism", "slm_speech", run, config)
    finally:
        server.shutdown()
    spoken = [b for b in restarted.completions_asked() if isinstance(b["messages"][0]["content"], list)]
    assert len(spoken) == 9 - first  # nine clips are readable (q9's audio is broken)
    assert sum(r["error"] is None for r in rows) == 9
    lines = (tmp_path / "results").rglob("*.jsonl")
    keys = [json.loads(line)["key"] for path in lines for line in path.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 9
