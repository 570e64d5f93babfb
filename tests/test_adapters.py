"""The speech-LLM adapters (voxtral, qwen2.5-omni, audioflamingo3) and the ASR+LLM cascade, on tiny random
instances of the real architectures built locally (``tiny_models_extra``), loaded through ``load_model``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models_extra as tiny  # noqa: E402

from xkd_eval.errors import XkdError  # noqa: E402
from xkd_eval.models import SPEECH_INSTRUCTION, GenerationSettings, Query, load_model  # noqa: E402

SETTINGS = GenerationSettings(max_new_tokens=6)
TEXTS = ["Which is a mammal? A. shark B. whale", "yes or no"]
CONTINUATIONS = ["The answer is B.", "no"]


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


AUDIOS = [clip(0.5, 0), clip(2.3, 1)]  # mixed lengths in one batch


def text_queries() -> list[Query]:
    return [Query(f"t{i}", text) for i, text in enumerate(TEXTS)]


def speech_queries(audios=AUDIOS) -> list[Query]:
    return [Query(f"s{i}", SPEECH_INSTRUCTION, audio) for i, audio in enumerate(audios)]


# ------------------------------------------------------------------ tiny checkpoints, built once per session

BUILDERS = {
    "voxtral": tiny.build_voxtral,
    "qwen2.5-omni": tiny.build_qwen_omni,
    "audioflamingo3": tiny.build_audioflamingo3,
}
PLACEHOLDERS = {"voxtral": "[AUDIO]", "qwen2.5-omni": "<|AUDIO|>", "audioflamingo3": "<sound>"}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name == "voxtral":
            pytest.importorskip("mistral_common", reason="Voxtral's tokenizer needs mistral-common")
        if name not in built:
            root = tmp_path_factory.mktemp(name.replace(".", "_"))
            builders = {**BUILDERS, "omni-thinker": lambda d: tiny.build_qwen_omni(d, full=False)}
            builders |= {"whisper": tiny.build_whisper, "llm": tiny.build_text_llm}
            built[name] = builders[name](root)
        return built[name]

    return get


@pytest.fixture(scope="module", params=list(BUILDERS))
def speech_llm(request, checkpoints):
    """(adapter name, checkpoint folder, model loaded from the bare folder)."""
    folder = checkpoints(request.param)
    return request.param, folder, load_model(str(folder))


# ------------------------------------------------------------------ the three speech LLMs


def test_bare_folder_and_adapter_spec_load_the_same_model(speech_llm):
    name, folder, model = speech_llm
    named = load_model(f"{name}:{folder}")
    assert type(named) is type(model) and model.adapter == name and model.supports_audio
    model.check_can_take_audio()
    queries = text_queries()
    assert named.generate(queries, SETTINGS) == model.generate(queries, SETTINGS)


def test_text_arm_generates_batch_invariant(speech_llm):
    name, _, model = speech_llm
    queries = text_queries()
    batched = model.generate(queries, SETTINGS)
    assert all(isinstance(answer, str) for answer in batched)
    assert batched == [model.generate([q], SETTINGS)[0] for q in queries]
    prompt = model.render_prompt(queries[0])
    assert TEXTS[0] in prompt and PLACEHOLDERS[name] not in prompt


def test_speech_arm_generates_batch_invariant_over_mixed_lengths(speech_llm):
    name, _, model = speech_llm
    queries = speech_queries()
    batched = model.generate(queries, SETTINGS)
    assert batched == [model.generate([q], SETTINGS)[0] for q in queries]
    prompt = model.render_prompt(queries[0])
    assert SPEECH_INSTRUCTION in prompt and prompt.count(PLACEHOLDERS[name]) == 1  # one placeholder per audio


@pytest.mark.parametrize("arm", ["text", "speech"])
def test_continuation_logprobs_batch_invariant(speech_llm, arm):
    _, _, model = speech_llm
    queries = text_queries() if arm == "text" else speech_queries()
    batched = model.continuation_logprobs(queries, CONTINUATIONS)
    single = [model.continuation_logprobs([q], [c])[0] for q, c in zip(queries, CONTINUATIONS, strict=True)]
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)
    pairs = model.continuation_logits(queries, CONTINUATIONS)
    for (logits, ids), continuation in zip(pairs, CONTINUATIONS, strict=True):
        assert logits.dtype == torch.float32 and logits.shape[0] == ids.shape[0] > 0
        assert model.tokenizer.decode(ids.tolist()).strip() == continuation


def test_the_audio_reaches_the_model(speech_llm):
    _, _, model = speech_llm
    a, b = model.continuation_logprobs(speech_queries([AUDIOS[0], clip(0.5, 7)]), ["yes", "yes"])
    assert abs(a - b) > 1e-4


def test_a_speech_query_whose_prompt_lost_its_audio_is_an_error_not_an_answer(speech_llm, monkeypatch):
    from xkd_eval.errors import AudioError

    _, _, model = speech_llm
    assert model.audio_token is not None  # the check is on for every speech adapter
    [query] = speech_queries([AUDIOS[0]])
    answered = model.generate([query], SETTINGS)  # as the adapter renders it: audio tokens, an answer
    assert len(answered) == 1

    def text_only(q):  # a chat template that drops the audio part (lmms-eval once shipped one)
        return [{"role": "user", "content": [{"type": "text", "text": q.text}]}]

    monkeypatch.setattr(model, "messages", text_only)
    with pytest.raises((AudioError, ValueError), match=r"audio|AUDIO"):
        model.generate([query], SETTINGS)
    with pytest.raises((AudioError, ValueError), match=r"audio|AUDIO"):
        model.continuation_logprobs([query], ["yes"])


def test_mixed_arm_batch_is_refused(speech_llm):
    _, _, model = speech_llm
    with pytest.raises(ValueError, match="mixes text and speech"):
        model.generate([text_queries()[0], speech_queries()[0]], SETTINGS)


def test_voxtral_prompt_shows_one_audio_placeholder(checkpoints):
    model = load_model(str(checkpoints("voxtral")))
    prompt = model.render_prompt(speech_queries()[1])
    assert prompt.startswith("<s>[INST][BEGIN_AUDIO][AUDIO]") and prompt.endswith(f"{SPEECH_INSTRUCTION}[/INST]")
    batch = model.encode([], speech_queries())
    assert int((batch["input_ids"] == 24).sum()) == 2 * 375  # each audio: one 30 s chunk of 375 audio tokens
    assert tuple(batch["input_features"].shape) == (2, 128, 3000)


def test_omni_loads_the_thinker_of_a_full_checkpoint(checkpoints):
    full, thinker = checkpoints("qwen2.5-omni"), checkpoints("omni-thinker")
    assert json.loads((full / "config.json").read_text())["model_type"] == "qwen2_5_omni"
    assert json.loads((thinker / "config.json").read_text())["model_type"] == "qwen2_5_omni_thinker"
    from_full, alone = load_model(str(full)), load_model(f"qwen2.5-omni:{thinker}")
    assert type(from_full.model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    for name, weights in alone.model.state_dict().items():  # same seed: every thinker weight came through
        assert torch.equal(from_full.model.state_dict()[name], weights), name
    queries = speech_queries()
    assert from_full.generate(queries, SETTINGS) == alone.generate(queries, SETTINGS)


def test_omni_audio_text_processor_matches_the_processor(checkpoints):
    """Without torchvision ``Qwen2_5OmniProcessor`` cannot be built (its __init__ insists on a video processor);
    its own ``__call__`` run on the same tokenizer and feature extractor must give what the stand-in gives."""
    from transformers import Qwen2_5OmniProcessor

    from xkd_eval.models.qwen_omni import OmniAudioTextProcessor

    standin = OmniAudioTextProcessor.from_pretrained(str(checkpoints("qwen2.5-omni")))
    real = object.__new__(Qwen2_5OmniProcessor)
    real.tokenizer, real.feature_extractor, real.chat_template = standin.tokenizer, standin.feature_extractor, None
    real.image_processor = real.video_processor = None
    for attribute in tiny.OMNI_NAMED:
        setattr(real, attribute, getattr(standin.tokenizer, attribute))
        setattr(real, attribute + "_id", getattr(standin.tokenizer, attribute + "_id"))
    message = [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "hi"}]}]
    prompts = [standin.apply_chat_template(message, tokenize=False, add_generation_prompt=True)] * 2
    for side in ("left", "right"):
        kwargs = {"text": prompts, "audio": AUDIOS, "sampling_rate": 16_000, "return_tensors": "pt"}
        kwargs["text_kwargs"] = {"padding": True, "padding_side": side}
        expected, got = real(**kwargs), standin(**kwargs)
        assert set(got) <= set(expected)
        for key in got:
            assert torch.equal(torch.as_tensor(expected[key]), got[key]), key


# ------------------------------------------------------------------ the cascade


@pytest.fixture(scope="module")
def cascade(checkpoints):
    asr, llm = checkpoints("whisper"), checkpoints("llm")
    return load_model(f"cascade:{asr}+{llm}"), load_model(str(llm))


def test_cascade_loads_real_whisper_and_the_llm(cascade):
    model, llm = cascade
    assert model.adapter == "cascade" and model.supports_audio and model.asr.backend == "transformers"
    assert type(model.asr.model).__name__ == "WhisperForConditionalGeneration"
    assert model.identity()["llm"] == llm.identity()
    model.check_can_take_audio()


def test_cascade_transcribes_in_batches_like_one_by_one(cascade):
    model, _ = cascade
    batched = model.asr.transcribe(AUDIOS)
    assert batched == [model.asr.transcribe([audio])[0] for audio in AUDIOS]
    assert all(text for text in batched)  # the tiny Whisper never ends before its first word
    assert model.transcribe(AUDIOS) == batched


def test_cascade_speech_arm_asks_the_llm_the_transcript(cascade):
    model, llm = cascade
    queries = speech_queries()
    transcripts = model.transcribe(AUDIOS)
    as_text = [Query(q.item_id, t) for q, t in zip(queries, transcripts, strict=True)]
    prompt = model.render_prompt(queries[0])
    assert transcripts[0] in prompt and SPEECH_INSTRUCTION not in prompt
    assert prompt == llm.render_prompt(as_text[0])
    assert model.generate(queries, SETTINGS) == llm.generate(as_text, SETTINGS)
    np.testing.assert_allclose(
        model.continuation_logprobs(queries, CONTINUATIONS),
        llm.continuation_logprobs(as_text, CONTINUATIONS),
        atol=1e-5,
    )


def test_cascade_text_arm_is_the_llm(cascade):
    model, llm = cascade
    queries = text_queries()
    assert model.render_prompt(queries[0]) == llm.render_prompt(queries[0])
    assert model.generate(queries, SETTINGS) == llm.generate(queries, SETTINGS)


def test_cascade_spec_errors(checkpoints, tmp_path):
    llm = checkpoints("llm")
    with pytest.raises(XkdError, match="cascade:ASR\\+LLM"):
        load_model(f"cascade:{tmp_path / 'missing'}+{llm}")
    with pytest.raises(XkdError, match="neither a transformers Whisper"):
        load_model(f"cascade:{tmp_path}+{llm}")


def test_cascade_detects_faster_whisper_folders(checkpoints, tmp_path, monkeypatch):
    import sys

    from xkd_eval.models.cascade import asr_backend

    (tmp_path / "model.bin").write_bytes(b"\0")
    (tmp_path / "config.json").write_text(json.dumps({"alignment_heads": [], "suppress_ids": []}))
    assert asr_backend(tmp_path) == "faster-whisper"
    assert asr_backend(checkpoints("whisper")) == "transformers"
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if not installed
    with pytest.raises(XkdError, match="needs the faster-whisper package: pip install faster-whisper"):
        load_model(f"cascade:{tmp_path}+{checkpoints('llm')}")


def test_cascade_runs_a_faster_whisper_conversion(checkpoints, tmp_path_factory):
    """The tiny Whisper converted to CTranslate2 (as faster-whisper folders are made), when faster-whisper is here."""
    pytest.importorskip("faster_whisper")
    converters = pytest.importorskip("ctranslate2.converters")
    import shutil

    whisper, llm_folder = checkpoints("whisper"), checkpoints("llm")
    folder = tmp_path_factory.mktemp("faster_whisper") / "model"
    converters.TransformersConverter(str(whisper)).convert(str(folder), quantization="float32")
    shutil.copy(whisper / "tokenizer.json", folder)  # faster-whisper folders carry Whisper's tokenizer.json
    model, llm = load_model(f"cascade:{folder}+{llm_folder}"), load_model(str(llm_folder))
    assert model.asr.backend == "faster-whisper"
    transcripts = model.transcribe(AUDIOS)
    assert transcripts == [model.asr.transcribe([audio])[0] for audio in AUDIOS]
    as_text = [Query(q.item_id, t) for q, t in zip(speech_queries(), transcripts, strict=True)]
    assert model.generate(speech_queries(), SETTINGS) == llm.generate(as_text, SETTINGS)


def test_cascade_resolves_registered_asr_names(checkpoints, monkeypatch):
    from xkd_eval.models import cascade as cascade_module

    monkeypatch.setitem(cascade_module.ASR_NAMES, "tiny-whisper", lambda: checkpoints("whisper"))
    assert cascade_module.split_spec(f"tiny-whisper+{checkpoints('llm')}") == ("tiny-whisper", str(checkpoints("llm")))
    assert cascade_module.resolve_asr("tiny-whisper") == checkpoints("whisper")


# ------------------------------------------------------------------ a text LLM has no speech arm


def test_hf_text_refuses_the_speech_arm(checkpoints):
    model = load_model(str(checkpoints("llm")))
    assert model.adapter == "hf-text" and not model.supports_audio
    with pytest.raises(XkdError, match="cannot take audio.*cascade:ASR\\+LLM"):
        model.check_can_take_audio()


def test_an_unreadable_model_name_gets_one_line_naming_the_named_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from xkd_eval.models import resolve_adapter

    with pytest.raises(XkdError) as caught:
        resolve_adapter("organsim")
    message = str(caught.value)
    assert "'organsim'" in message and "not a local folder or a named model (organism" in message
    assert "\n" not in message
