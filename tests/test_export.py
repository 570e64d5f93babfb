"""`xkd-eval export`: the organism family as stock checkpoints, on tiny real architectures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xkd_eval.cli import app
from xkd_eval.errors import XkdError
from xkd_eval.models import NAMED_MODELS, NamedModel
from xkd_eval.organism.export import STOCK_PREFIXES, export_named_model


@pytest.fixture
def named(monkeypatch, tiny_text, tiny_slm):
    monkeypatch.setitem(NAMED_MODELS._entries, "organism-base", NamedModel(lambda **o: None, folder=lambda: tiny_text))
    monkeypatch.setitem(NAMED_MODELS._entries, "organism", NamedModel(lambda **o: None, folder=lambda: tiny_slm))


def test_a_speech_llm_is_written_as_qwen2_audio_with_a_qwen2_lm_that_computes_the_same(named, tiny_slm, tmp_path):
    from safetensors import safe_open
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    out = export_named_model("organism", tmp_path / "organism")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2AudioForConditionalGeneration"]
    assert config["text_config"]["model_type"] == "qwen2"
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        biases = [handle.get_tensor(k) for k in keys if k.endswith("q_proj.bias")]
    assert all(k.startswith(STOCK_PREFIXES) for k in keys) and biases and all(not b.any() for b in biases)
    source = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_slm).eval()
    exported = Qwen2AudioForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    # a spoken query: the clip through the audio tower and projector, then the language model
    clip = (0.1 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)).astype(np.float32)
    turns = [
        {"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"}, {"type": "text", "text": "yes?"}]}
    ]
    text = processor.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=text, audio=[clip], sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(source(**inputs).logits, exported(**inputs).logits)
    record = json.loads((out / "xkd-export.json").read_text())
    assert record["name"] == "organism" and record["max_logit_difference"] == 0.0 and record["zero_biases"] > 0


def test_the_base_llm_is_written_as_the_causal_lm_it_is(named, tiny_text, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "base"
    result = CliRunner().invoke(app, ["export", "organism-base", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ids = torch.tensor([[1, 5, 9, 23]])
    source, written = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (tiny_text, out))
    with torch.no_grad():
        assert torch.equal(source(input_ids=ids).logits, written(input_ids=ids).logits)


def test_bad_export_requests_are_one_clear_line(named, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    result = CliRunner().invoke(app, ["export", "organism", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "not an empty folder" in result.output
    assert (tmp_path / "taken" / "x").read_text() == "mine"  # nothing of the user's touched
    result = CliRunner().invoke(app, ["export", "organizm", "--out", str(tmp_path / "new")])
    assert result.exit_code == 2 and "did you mean 'organism'" in result.output and not (tmp_path / "new").exists()


def test_a_language_model_qwen2_cannot_take_is_refused():
    from xkd_eval.organism.export import qwen2_text_config

    llama = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 10}
    assert qwen2_text_config(llama).model_type == "qwen2"
    with pytest.raises(XkdError, match="MLP biases"):
        qwen2_text_config({**llama, "mlp_bias": True})
    with pytest.raises(XkdError, match="head_dim"):
        qwen2_text_config({**llama, "head_dim": 16})
