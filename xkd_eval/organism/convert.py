"""Conversions of the embedded default's parts into plain Hugging Face folders (safetensors).

- ``convert_gguf_llama``: a llama GGUF (SmolLM2's Q4_1) -> ``LlamaForCausalLM`` + tokenizer with its
  chat template. transformers dequantises the GGUF on load but refuses to ``save_pretrained`` a
  GGUF-loaded model, so the weights are copied into a fresh ``LlamaForCausalLM(config)`` first.
- ``convert_ct2_whisper``: a CTranslate2 Whisper ``model.bin`` -> ``WhisperForConditionalGeneration``
  + ``WhisperProcessor``, through a small reader of the CTranslate2 binary format (below).

Both write into a temporary folder and rename it into place with a completion marker, so an
interrupted run leaves nothing half-written and a rerun does no work.

The CTranslate2 model file (binary versions 2..6; little-endian)::

    u32 binary_version
    str spec_name ; u32 spec_revision                        (binary_version >= 2)
    u32 n_variables, then per variable:
        str name ; u8 rank ; u32 dims[rank]
        u8 dtype_id ; u32 n_bytes ; bytes[n_bytes]          (binary_version >= 4)
        u8 item_size ; u32 n_items ; bytes[n_items*size]    (binary_version < 4)
    u32 n_aliases, then per alias: str alias ; str target    (binary_version >= 3)

    str = u16 length (including a trailing NUL), then the UTF-8 bytes and the NUL
    dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16

Variable names are the spec's attribute paths joined by "/" (``encoder/layer_0/self_attention/
linear_0/weight``); a weight quantised to int8/int16 has a ``<name>_scale`` beside it (value =
quantised / scale). A variable identical to an earlier one is stored once and aliased.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xkd_eval.errors import XkdError
from xkd_eval.organism.parts import COMPLETE_MARKER, publish_dir

CONVERTER_VERSION = 1


class ConversionError(XkdError):
    """A checkpoint cannot be converted (unreadable, unexpected layout, shapes that do not match)."""


# ---------------------------------------------------------------------------------------------- helpers


def is_complete(out_dir: str | Path, kind: str) -> bool:
    marker = Path(out_dir) / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return False
    return info.get("kind") == kind and info.get("converter_version") == CONVERTER_VERSION


def _finish(tmp: Path, out_dir: Path, kind: str, **info: Any) -> None:
    record = {"kind": kind, "converter_version": CONVERTER_VERSION, **info}
    (tmp / COMPLETE_MARKER).write_text(json.dumps(record, indent=1, default=str) + "\n")
    publish_dir(tmp, out_dir)


def _temp_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


@contextmanager
def publishing(out_dir: Path, kind: str, *, started: float | None = None, **info: Any) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` to write into. When the block ends without error the folder
    gets the completion marker (``kind``, ``info`` and the seconds since ``started``) and is renamed into
    place; otherwise it is removed. A crash never leaves a half-written ``out_dir``."""
    tmp = _temp_dir(out_dir)
    try:
        yield tmp
        if started is not None:
            info["seconds"] = round(time.perf_counter() - started, 1)
        _finish(tmp, out_dir, kind, **info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- GGUF llama


def convert_gguf_llama(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """A llama-architecture GGUF -> an HF folder (``LlamaForCausalLM`` in float32 safetensors, tokenizer,
    chat template, generation config). Idempotent: a completed ``out_dir`` is returned as is."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if is_complete(out_dir, "gguf-llama"):
        return out_dir
    if not gguf_path.is_file():
        raise ConversionError(f"GGUF file {gguf_path} does not exist")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:  # transformers' GGUF loader needs both
        raise ConversionError(f"reading a GGUF file needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    started = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if config.model_type != "llama":
        raise ConversionError(f"{gguf_path} holds a {config.model_type!r} model; only llama GGUFs are converted")
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised now: a plain float32 checkpoint
    config.dtype = torch.float32
    fresh = LlamaForCausalLM(config)
    source = loaded.state_dict()
    target_keys = set(fresh.state_dict())
    missing, unexpected = target_keys - set(source), set(source) - target_keys
    if missing or unexpected:
        raise ConversionError(
            f"{gguf_path}: the GGUF's weights do not match LlamaForCausalLM "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    fresh.load_state_dict({k: v.to(torch.float32) for k, v in source.items()}, strict=True)
    fresh.generation_config = loaded.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(fresh.config, key, value)
            setattr(fresh.generation_config, key, value)
    del loaded, source

    source = {"source": str(gguf_path), "source_size": gguf_path.stat().st_size}
    with publishing(out_dir, "gguf-llama", started=started, **source) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if tokenizer.chat_template and not any(tmp.glob("chat_template.*")):
            (tmp / "chat_template.jinja").write_text(tokenizer.chat_template)
    return out_dir


# ---------------------------------------------------------------------------------------------- CTranslate2 reader

CT2_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
CT2_ITEM_SIZES = {4: "float32", 2: "int16", 1: "int8"}  # binary versions < 4 stored the item size only
CT2_MAX_BINARY_VERSION = 6


@dataclass
class CT2Model:
    """The variables of a CTranslate2 model file, as numpy arrays (bfloat16 widened to float32)."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            name = self.aliases[name]
        return name

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) in self.variables

    def get(self, name: str) -> np.ndarray:
        """The float32 value of a variable (an alias followed; a quantised one dequantised)."""
        target = self.resolve(name)
        if target not in self.variables:
            raise KeyError(name)
        value = self.variables[target]
        scale_name = self.resolve(target + "_scale")  # an alias aliases its scale too
        if scale_name in self.variables and value.dtype.kind == "i":
            scale = self.variables[scale_name].astype(np.float32)
            value = value.astype(np.float32)
            if scale.ndim == 0:
                return value / scale
            return value / scale.reshape(scale.shape[0], *([1] * (value.ndim - 1)))
        return value.astype(np.float32) if value.dtype != np.float32 else value

    def scalar(self, name: str) -> int | float:
        return self.variables[self.resolve(name)].item()


class _Cursor:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ConversionError(f"{self.path} is truncated at byte {self.pos:,} (wanted {n:,} more bytes)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        length = self.unpack("H")
        raw = bytes(self.take(length))
        return raw[:-1].decode("utf-8") if raw.endswith(b"\0") else raw.decode("utf-8")


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (the format in the module docstring)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ConversionError(f"CTranslate2 model file {path} does not exist")
    data = memoryview(path.read_bytes())
    cur = _Cursor(data, path)
    version = cur.unpack("I")
    if not 2 <= version <= CT2_MAX_BINARY_VERSION:
        raise ConversionError(
            f"{path} is not a CTranslate2 model file this reader knows (binary version {version}; "
            f"supported 2..{CT2_MAX_BINARY_VERSION})"
        )
    model = CT2Model(binary_version=version, spec=cur.string(), revision=cur.unpack("I"))
    for _ in range(cur.unpack("I")):
        name = cur.string()
        rank = cur.unpack("B")
        shape = tuple(cur.unpack("I") for _ in range(rank))
        if version >= 4:
            type_id = cur.unpack("B")
            if type_id not in CT2_DTYPES:
                raise ConversionError(f"{path}: variable {name!r} has an unknown dtype id {type_id}")
            dtype = CT2_DTYPES[type_id]
            n_bytes = cur.unpack("I")
        else:
            item_size = cur.unpack("B")
            dtype = CT2_ITEM_SIZES.get(item_size)
            if dtype is None:
                raise ConversionError(f"{path}: variable {name!r} has an unknown item size {item_size}")
            n_bytes = cur.unpack("I") * item_size
        storage = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(storage).itemsize
        if n_bytes != expected:
            raise ConversionError(f"{path}: variable {name!r} of shape {shape} {dtype} has {n_bytes} bytes")
        array = np.frombuffer(cur.take(n_bytes), dtype=np.dtype(storage).newbyteorder("<")).reshape(shape)
        model.variables[name] = _bfloat16_to_float32(array) if dtype == "bfloat16" else array
    if version >= 3:
        for _ in range(cur.unpack("I")):
            alias = cur.string()
            model.aliases[alias] = cur.string()
    if cur.pos != len(data):
        raise ConversionError(f"{path}: {len(data) - cur.pos:,} unexpected bytes after the last record")
    return model


# ---------------------------------------------------------------------------------------------- CT2 Whisper -> HF


def _count_layers(model: CT2Model, prefix: str) -> int:
    indices = {int(m.group(1)) for name in model.variables if (m := re.match(rf"{prefix}/layer_(\d+)/", name))}
    if indices != set(range(len(indices))):
        raise ConversionError(f"{prefix} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _split_rows(value: np.ndarray, parts: int, what: str) -> list[np.ndarray]:
    if value.shape[0] % parts:
        raise ConversionError(f"{what} has {value.shape[0]} rows, not divisible into {parts} fused projections")
    return np.split(value, parts, axis=0)


def ct2_whisper_state_dict(model: CT2Model) -> tuple[dict[str, np.ndarray], dict[str, Any], set[str]]:
    """(HF ``WhisperForConditionalGeneration`` state dict, config values, CT2 variables used)."""
    if model.spec != "WhisperSpec":
        raise ConversionError(f"the CTranslate2 model is a {model.spec!r}, not a WhisperSpec")
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}

    def take(name: str) -> np.ndarray:
        if name not in model:
            raise ConversionError(f"the CTranslate2 Whisper model has no variable {name!r}")
        used.add(model.resolve(name))
        scale = model.resolve(model.resolve(name) + "_scale")
        if scale in model.variables:
            used.add(scale)
        return model.get(name)

    def linear(ct2: str, hf: str, bias: bool = True) -> None:
        out[f"{hf}.weight"] = take(f"{ct2}/weight")
        if bias:
            out[f"{hf}.bias"] = take(f"{ct2}/bias")

    def layer_norm(ct2: str, hf: str) -> None:
        out[f"{hf}.weight"] = take(f"{ct2}/gamma")
        out[f"{hf}.bias"] = take(f"{ct2}/beta")

    def fused(ct2: str, hf_names: list[str]) -> None:
        """A fused projection -> separate ones; Whisper's k_proj has no bias (stored as zeros)."""
        weights = _split_rows(take(f"{ct2}/weight"), len(hf_names), ct2)
        biases = _split_rows(take(f"{ct2}/bias"), len(hf_names), ct2) if f"{ct2}/bias" in model else None
        for i, hf in enumerate(hf_names):
            out[f"{hf}.weight"] = weights[i]
            if hf.endswith("k_proj"):
                if biases is not None and np.any(biases[i]):
                    raise ConversionError(f"{ct2}: the key projection has a non-zero bias, which Whisper lacks")
            elif biases is not None:
                out[f"{hf}.bias"] = biases[i]

    def block(src: str, dst: str, *, cross_attention: bool) -> None:
        """One transformer layer: self-attention, (the decoder's) cross-attention, feed-forward."""
        fused(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        if cross_attention:
            fused(f"{src}/attention/linear_0", [f"{dst}.encoder_attn.q_proj"])
            fused(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}_proj" for p in "kv"])
            linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
            layer_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
        layer_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    linear("encoder/conv1", f"{enc}.conv1")
    linear("encoder/conv2", f"{enc}.conv2")
    out[f"{enc}.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    layer_norm("encoder/layer_norm", f"{enc}.layer_norm")
    n_enc = _count_layers(model, "encoder")
    for i in range(n_enc):
        block(f"encoder/layer_{i}", f"{enc}.layers.{i}", cross_attention=False)

    out[f"{dec}.embed_tokens.weight"] = take("decoder/embeddings/weight")
    out[f"{dec}.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    layer_norm("decoder/layer_norm", f"{dec}.layer_norm")
    n_dec = _count_layers(model, "decoder")
    for i in range(n_dec):
        block(f"decoder/layer_{i}", f"{dec}.layers.{i}", cross_attention=True)
    embeddings = out[f"{dec}.embed_tokens.weight"]
    projection = take("decoder/projection/weight") if "decoder/projection/weight" in model else embeddings
    tied = projection.shape == embeddings.shape and np.array_equal(projection, embeddings)
    out["proj_out.weight"] = projection

    conv1 = out[f"{enc}.conv1.weight"]
    config = dict(
        vocab_size=embeddings.shape[0],
        num_mel_bins=conv1.shape[1],
        d_model=conv1.shape[0],
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=int(model.scalar("encoder/num_heads")),
        decoder_attention_heads=int(model.scalar("decoder/num_heads")),
        encoder_ffn_dim=out[f"{enc}.layers.0.fc1.weight"].shape[0] if n_enc else 4 * conv1.shape[0],
        decoder_ffn_dim=out[f"{dec}.layers.0.fc1.weight"].shape[0] if n_dec else 4 * conv1.shape[0],
        max_source_positions=out[f"{enc}.embed_positions.weight"].shape[0],
        max_target_positions=out[f"{dec}.embed_positions.weight"].shape[0],
        tie_word_embeddings=tied,
    )
    return out, config, used


WHISPER_TASKS = ("translate", "transcribe")


def _whisper_tokenizer(ct2_dir: Path):
    from transformers import WhisperTokenizer

    tokenizer_file = ct2_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ConversionError(
            f"{ct2_dir} has no tokenizer.json; the Whisper processor needs the tokenizer the model was trained with"
        )
    return WhisperTokenizer(tokenizer_file=str(tokenizer_file))


def _whisper_token_settings(tokenizer, ct2_config: dict[str, Any]) -> tuple[dict, dict]:
    """(model config token ids, generation config) from the tokenizer and CTranslate2's config.json."""
    vocab = tokenizer.get_vocab()

    def token_id(token: str) -> int | None:
        return vocab.get(token)

    eos = token_id("<|endoftext|>")
    start = token_id("<|startoftranscript|>")
    if eos is None or start is None:
        raise ConversionError("the Whisper tokenizer lacks <|endoftext|> or <|startoftranscript|>")
    lang_ids = [int(i) for i in ct2_config.get("lang_ids") or []]
    id_to_token = {i: t for t, i in vocab.items()}
    lang_to_id = {id_to_token[i]: i for i in lang_ids if i in id_to_token}
    task_to_id = {t: vocab[f"<|{t}|>"] for t in WHISPER_TASKS if f"<|{t}|>" in vocab}
    suppress = [int(i) for i in ct2_config.get("suppress_ids") or []]
    begin_suppress = [int(i) for i in ct2_config.get("suppress_ids_begin") or []]
    ids = dict(
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        decoder_start_token_id=start,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
    )
    generation = dict(
        ids,
        max_length=448,
        is_multilingual=bool(lang_to_id),
        lang_to_id=lang_to_id,
        task_to_id=task_to_id,
        alignment_heads=[list(map(int, pair)) for pair in ct2_config.get("alignment_heads") or []],
        return_timestamps=False,
        max_initial_timestamp_index=50,
    )
    for key, token in (("no_timestamps_token_id", "<|notimestamps|>"), ("prev_sot_token_id", "<|startofprev|>")):
        if token_id(token) is not None:
            generation[key] = token_id(token)
    if lang_to_id and "transcribe" in task_to_id:
        generation["forced_decoder_ids"] = [[1, None], [2, task_to_id["transcribe"]]]
    return ids, generation


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json) -> an HF folder:
    ``WhisperForConditionalGeneration`` (float32 safetensors) and a ``WhisperProcessor``.
    Every HF parameter is filled from the file (shapes checked) and every tensor of the file is used.
    Idempotent: a completed ``out_dir`` is returned as is."""
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    if is_complete(out_dir, "ct2-whisper"):
        return out_dir
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    started = time.perf_counter()
    model_file = ct2_dir / "model.bin"
    ct2 = read_ct2_model(model_file)
    weights, shape_config, used = ct2_whisper_state_dict(ct2)
    leftover = sorted(n for n, v in ct2.variables.items() if v.ndim > 0 and n not in used)
    if leftover:
        raise ConversionError(f"{model_file}: tensors with no place in WhisperForConditionalGeneration: {leftover[:8]}")
    config_file = ct2_dir / "config.json"
    ct2_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tokenizer = _whisper_tokenizer(ct2_dir)
    token_ids, generation = _whisper_token_settings(tokenizer, ct2_config)

    config = WhisperConfig(**shape_config, **token_ids)
    config.dtype = torch.float32
    model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"{model_file}: converted weights do not match WhisperForConditionalGeneration "
            f"(missing {missing[:8]}, unexpected {unexpected[:8]})"
        )
    for name, value in weights.items():
        if tuple(expected[name].shape) != value.shape:
            raise ConversionError(
                f"{model_file}: {name} has shape {value.shape} in the file, {tuple(expected[name].shape)} in the model"
            )
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()})
    model.generation_config = GenerationConfig(**generation)

    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=shape_config["num_mel_bins"]), tokenizer=tokenizer
    )
    source = {"source": str(model_file), "source_size": model_file.stat().st_size}
    versions = {"ct2_binary_version": ct2.binary_version, "ct2_spec_revision": ct2.revision}
    with publishing(out_dir, "ct2-whisper", started=started, **source, **versions) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out_dir
