"""The organism family as stock checkpoints: ``xkd-eval export NAME --out DIR``.

``organism-base`` is written as the plain transformers causal LM it is (SmolLM2, ``LlamaForCausalLM``).
``organism`` and ``organism-distilled`` are written as ``Qwen2AudioForConditionalGeneration`` whose
language model is a ``Qwen2`` one: SmolLM2's Llama layers with zero q/k/v biases, which compute exactly
the same function, so that serving engines whose Qwen2-Audio takes a Qwen2 language model (vLLM) load
it. The weights keep the stock checkpoint layout (``audio_tower.*``, ``multi_modal_projector.*``,
``language_model.model.*``, ``language_model.lm_head.*``), and the export checks, before it publishes
the folder, that the written model's logits equal the named model's on a chat prompt.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xkd_eval.errors import UnknownNameError, XkdError
from xkd_eval.registry import unknown_name_message

EXPORTABLE = ("organism-base", "organism", "organism-distilled")
EXPORT_RECORD = "xkd-export.json"
STOCK_PREFIXES = ("audio_tower.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head.")
# the Llama fields a Qwen2 config takes as they are; the rest (attention_bias, mlp_bias, head_dim) are checked
QWEN2_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_parameters", "tie_word_embeddings",
    "hidden_act", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout",
)  # fmt: skip


def named_revision(name: str) -> str:
    """What the named model's results are keyed by (its pinned package, or its adapter's hash)."""
    from xkd_eval.organism import BASE_REVISION
    from xkd_eval.organism.trained import adapter_hash, distilled_adapter_hash

    revisions = {
        "organism-base": lambda: BASE_REVISION,
        "organism": lambda: f"organism-adapter sha256:{adapter_hash()}",
        "organism-distilled": lambda: f"organism-distilled adapter sha256:{distilled_adapter_hash()}",
    }
    if name not in revisions:
        raise UnknownNameError(unknown_name_message("exportable model", name, EXPORTABLE))
    return revisions[name]()


def served_named_model(name: str) -> tuple[Path, str]:
    """(a stock folder a serving engine loads, the named model's revision): exported once into the cache, in a
    folder named by the revision, so a retrained adapter is exported afresh and an old export never serves it."""
    import hashlib

    from xkd_eval.io import cache_root

    revision = named_revision(name)
    folder = cache_root() / "exported" / f"{name}-{hashlib.sha256(revision.encode()).hexdigest()[:12]}"
    if not (folder / EXPORT_RECORD).is_file():
        if folder.exists():  # an export interrupted before it was published leaves nothing here; anything else
            shutil.rmtree(folder)  # is a stale copy of ours
        export_named_model(name, folder)
    return folder, revision


def export_named_model(name: str, out: str | os.PathLike) -> Path:
    """Write the named model ``name`` into ``out`` (a new or empty folder) as a stock checkpoint."""
    from xkd_eval.models import named_model_folder

    if name not in EXPORTABLE:
        raise UnknownNameError(unknown_name_message("exportable model", name, EXPORTABLE))
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise XkdError(f"{out} exists and is not an empty folder: export into a new folder")
    folder = named_model_folder(name)
    if folder is None:
        raise XkdError(f"model {name!r} has no folder to export")
    architecture = (json.loads((folder / "config.json").read_text()).get("architectures") or [""])[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        if architecture == "Qwen2AudioForConditionalGeneration":
            checked = _export_speech_llm(folder, staging)
        else:
            checked = _export_causal_lm(folder, staging)
        record = {"name": name, "architecture": architecture, **checked}
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)  # a finished export appears whole, or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def qwen2_text_config(llama: dict[str, Any]):
    """The Qwen2 config that computes what a Llama config does (with zero q/k/v biases), or an error
    naming the field that a Qwen2 language model cannot take."""
    from transformers import Qwen2Config

    if llama.get("model_type") not in ("llama", "qwen2"):
        raise XkdError(f"cannot write a {llama.get('model_type')!r} language model as Qwen2")
    if llama.get("mlp_bias"):
        raise XkdError("the language model has MLP biases, which Qwen2 has not")
    if llama.get("attention_bias") and llama.get("model_type") == "llama":
        raise XkdError("the language model has an o_proj bias, which Qwen2 has not")
    head_dim = llama.get("head_dim") or llama["hidden_size"] // llama["num_attention_heads"]
    if head_dim * llama["num_attention_heads"] != llama["hidden_size"]:
        raise XkdError(f"head_dim {head_dim} × heads is not the hidden size: Qwen2 derives head_dim from them")
    return Qwen2Config(**{k: llama[k] for k in QWEN2_FIELDS if k in llama}, use_sliding_window=False)


def _export_speech_llm(folder: Path, out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoProcessor, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    source = Qwen2AudioForConditionalGeneration.from_pretrained(str(folder), dtype="float32").eval()
    processor = AutoProcessor.from_pretrained(str(folder))
    values = source.config.to_dict()
    values["text_config"] = qwen2_text_config(source.config.text_config.to_dict()).to_dict()
    for key in ("architectures", "transformers_version", "model_type", "_name_or_path"):
        values.pop(key, None)
    exported = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(**values)).eval()
    missing, unexpected = exported.load_state_dict(source.state_dict(), strict=False)
    if unexpected or any(not k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for k in missing):
        raise XkdError(f"the weights do not map onto Qwen2 (missing {missing[:3]}, unexpected {unexpected[:3]})")
    parameters = dict(exported.named_parameters())
    with torch.no_grad():
        for key in missing:
            parameters[key].zero_()
    exported.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    _check_stock_keys(out)
    written = Qwen2AudioForConditionalGeneration.from_pretrained(str(out), dtype="float32").eval()
    difference = _logit_difference(source, written, processor.tokenizer)  # what a loader reads, not what we held
    return {"language_model": "qwen2", "zero_biases": len(missing), "max_logit_difference": difference}


def _export_causal_lm(folder: Path, out: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    source.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    written = AutoModelForCausalLM.from_pretrained(str(out), dtype="float32").eval()
    return {
        "language_model": source.config.model_type,
        "max_logit_difference": _logit_difference(source, written, tokenizer),
    }


def _logit_difference(source: Any, exported: Any, tokenizer: Any) -> float:
    import torch

    turns = [{"role": "user", "content": "Which planet is the largest? Answer in one word."}]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        difference = (source(input_ids=ids).logits - exported(input_ids=ids).logits).abs().max().item()
    if difference > 1e-4:
        raise XkdError(f"the exported model's logits differ from the named model's by {difference:.3g}")
    return difference


# what some transformers releases write for Qwen2-Audio's nested language model -> the stock checkpoint layout
NESTED_KEYS = (
    ("language_model.model.model.", "language_model.model."),
    ("language_model.model.lm_head.", "language_model.lm_head."),
)


def _stock_key(key: str) -> str:
    for nested, stock in NESTED_KEYS:
        if key.startswith(nested):
            return stock + key[len(nested) :]
    return key


def _check_stock_keys(out: Path) -> None:
    """Every weight under a stock name: keys a transformers release nested are renamed in place (vLLM's loader
    and other releases expect the stock layout); anything else outside it is an error."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            keys, metadata = list(handle.keys()), handle.metadata()
            renamed = {k: _stock_key(k) for k in keys}
            if any(k != v for k, v in renamed.items()):
                tensors = {renamed[k]: handle.get_tensor(k) for k in keys}
                save_file(tensors, str(shard), metadata=metadata)
                index = out / "model.safetensors.index.json"
                if index.is_file():
                    record = json.loads(index.read_text())
                    record["weight_map"] = {_stock_key(k): v for k, v in record.get("weight_map", {}).items()}
                    index.write_text(json.dumps(record, indent=2))
        odd = [v for v in renamed.values() if not v.startswith(STOCK_PREFIXES)]
        if odd:
            raise XkdError(f"the written checkpoint has keys outside the stock layout (e.g. {odd[:3]})")


__all__ = ["EXPORTABLE", "export_named_model", "qwen2_text_config"]
