"""The least-squares projector start: hand cases of the alignment, and a tiny Qwen2-Audio whose "encoder
frames" carry a fixed code per word, which the fit must map onto the LLM's embedding of that word."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import build_qwen2_audio  # noqa: E402

from xkd_eval.errors import XkdError  # noqa: E402
from xkd_eval.organism.projector_init import (  # noqa: E402
    fit_projector,
    init_projector_least_squares,
    speech_span,
    word_frames,
)

WORDS = ["yes", "no", "answer", "question", "audio", "speech", "text", "option"]
HOP = 160  # samples per frame of the synthetic clips


def test_speech_span_skips_the_leading_and_trailing_silence():
    audio = np.concatenate([np.zeros(20 * HOP), 0.5 * np.ones(60 * HOP), np.zeros(20 * HOP)]).astype(np.float32)
    assert speech_span(audio, 100) == (20, 80)
    assert speech_span(np.zeros(10 * HOP, np.float32), 10) == (0, 10)  # all silent: everything
    with pytest.raises(XkdError, match="cannot split"):
        speech_span(np.zeros(5, np.float32), 10)


def test_words_share_the_span_by_their_letters():
    # weights 2 ("a" + pause) and 4 ("bcd" + pause) over 60 frames: 20 and 40
    assert word_frames(["a", "bcd"], (20, 80)) == [(20, 40), (40, 80)]
    # more words than frames: every word still gets one frame, inside the span
    spans = word_frames(["x"] * 5, (0, 3))
    assert all(hi - lo == 1 and 0 <= lo < 3 for lo, hi in spans)


def synthetic_clips(codes, rng, n):
    """Clips of 2-4 words: 4 silent frames, the words (frames proportional to their letters), 4 silent; a
    frame's "encoder output" is its word's code (or the silence code) plus a little noise."""
    features, audios, transcripts = [], [], []
    for _ in range(n):
        words = [WORDS[k] for k in rng.choice(len(WORDS), size=rng.integers(2, 5))]
        frames = 8 + 3 * sum(len(w) + 1 for w in words)
        audio = np.zeros(frames * HOP, np.float32)
        audio[4 * HOP : (frames - 4) * HOP] = 0.3 * rng.standard_normal((frames - 8) * HOP)
        frame_codes = np.tile(codes["<silence>"], (frames, 1))
        for word, (lo, hi) in zip(words, word_frames(words, speech_span(audio, frames)), strict=True):
            frame_codes[lo:hi] = codes[word]
        frame_codes += 0.01 * rng.standard_normal(frame_codes.shape)
        features.append(torch.tensor(frame_codes, dtype=torch.float32))
        audios.append(audio)
        transcripts.append(" ".join(words).capitalize() + ".")
    return features, audios, transcripts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    folder = build_qwen2_audio(tmp_path_factory.mktemp("tiny-qwen2-audio"))
    return Qwen2AudioForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def test_the_fit_maps_each_words_frames_onto_its_embedding(tiny):
    model, processor = tiny
    tokenizer = processor.tokenizer
    rng = np.random.default_rng(0)
    d_enc = model.config.audio_config.d_model
    codes = {w: rng.standard_normal(d_enc) for w in [*WORDS, "<silence>"]}
    features, audios, transcripts = synthetic_clips(codes, rng, 40)
    before = model.model.multi_modal_projector.linear.weight.detach().clone()
    fit = init_projector_least_squares(model, tokenizer, features, audios, transcripts)
    linear = model.model.multi_modal_projector.linear
    assert not torch.equal(before, linear.weight) and fit.clips == 40 and fit.train_word_accuracy == 1.0

    embeddings = model.get_input_embeddings().weight.detach()
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    held_out, held_audio, held_text = synthetic_clips(codes, np.random.default_rng(1), 5)
    for feats, audio, text in zip(held_out, held_audio, held_text, strict=True):
        words = text.rstrip(".").lower().split()
        with torch.no_grad():
            projected = linear(feats)
        for word, (lo, hi) in zip(words, word_frames(words, speech_span(audio, feats.shape[0])), strict=True):
            nearest = int((torch.nn.functional.normalize(projected[(lo + hi - 1) // 2], dim=0) @ unit.T).argmax())
            assert nearest in tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # rescaled: the audio tokens have the token embeddings' root-mean-square
        rms = linear(torch.cat(features)).pow(2).mean().sqrt()
    assert float(rms) == pytest.approx(float(embeddings.pow(2).mean().sqrt()), rel=1e-3)


def test_the_fit_needs_words_and_matching_inputs(tiny):
    model, processor = tiny
    d_enc = model.config.audio_config.d_model
    feats, audio = [torch.zeros(10, d_enc)], [np.zeros(10 * HOP, np.float32)]
    embeddings = model.get_input_embeddings().weight
    with pytest.raises(XkdError, match="no transcript has a word"):
        fit_projector(feats, audio, ["..."], processor.tokenizer, embeddings)
    with pytest.raises(XkdError, match="one audio clip and one transcript"):
        fit_projector(feats, audio, ["yes", "no"], processor.tokenizer, embeddings)


def test_adapt_organism_starts_from_the_fit_and_records_it(tmp_path, monkeypatch):
    """The recipe path: spoken dictation (real espeak-ng speech) -> the projector fitted before training,
    the fit's figures in training.json, and the exported projector is the fitted one moved by training."""
    import json

    from safetensors.torch import load_file

    from xkd_eval.organism.adapt import adapt_organism

    monkeypatch.setenv("XKD_EVAL_CACHE", str(tmp_path / "cache"))
    base = build_qwen2_audio(tmp_path / "base")
    recipe = dict(
        base_model=str(base), n_examples=6, data_mix={"dictation": 1.0}, voices=["espeak-ng:en-us"],
        projector_init="least_squares", trainable="projector", max_steps=1, batch_size=3, warmup_steps=0,
        checkpoint_every=1, learning_rate=1e-9,
    )  # fmt: skip
    figures = adapt_organism(recipe, tmp_path / "out", progress=False, log=None)
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["projector_init"]["clips"] == 6 and record["projector_init"]["words"] >= 30
    assert figures["projector_init"] == record["projector_init"]
    exported = load_file(str(tmp_path / "out" / "projector.safetensors"))["linear.weight"]
    from transformers import Qwen2AudioForConditionalGeneration

    assembled = Qwen2AudioForConditionalGeneration.from_pretrained(base).model.multi_modal_projector.linear.weight
    assert exported.shape == assembled.shape and not torch.allclose(exported, assembled.detach(), atol=1e-3)
    with pytest.raises(XkdError, match="transcription examples"):
        adapt_organism(recipe | {"data_mix": {"arithmetic": 1.0}}, tmp_path / "out2", progress=False, log=None)
