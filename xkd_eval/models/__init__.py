"""The model registry: ``ADAPTER:ID_OR_PATH``, or a bare id/path whose config picks the adapter.

Adapters are imported lazily (by "module:Class" entries), so naming a model costs nothing until it
is loaded.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xkd_eval.errors import UnknownNameError, XkdError
from xkd_eval.models.base import SPEECH_INSTRUCTION, GenerationSettings, ModelAdapter, Query
from xkd_eval.registry import Registry, close_matches, unknown_name_message

ADAPTERS: Registry[str] = Registry("model adapter")
ADAPTERS.add("hf-text", "xkd_eval.models.hf_text:HFTextAdapter")
ADAPTERS.add("qwen2-audio", "xkd_eval.models.qwen2_audio:Qwen2AudioAdapter")
ADAPTERS.add("voxtral", "xkd_eval.models.voxtral:VoxtralAdapter")
ADAPTERS.add("qwen2.5-omni", "xkd_eval.models.qwen_omni:QwenOmniThinkerAdapter")
ADAPTERS.add("audioflamingo3", "xkd_eval.models.audioflamingo3:AudioFlamingo3Adapter")
ADAPTERS.add("cascade", "xkd_eval.models.cascade:CascadeAdapter")
ADAPTERS.add("vllm", "xkd_eval.models.vllm_engine:VLLMAdapter")
ADAPTERS.add("openai", "xkd_eval.models.openai_api:OpenAIAdapter")

# config.model_type -> adapter, for bare ids
MODEL_TYPES: dict[str, str] = {
    "qwen2_audio": "qwen2-audio",
    "voxtral": "voxtral",
    "qwen2_5_omni": "qwen2.5-omni",
    "qwen2_5_omni_thinker": "qwen2.5-omni",
    "audioflamingo3": "audioflamingo3",
}


def _resolve(entry: str | Callable[..., Any]) -> Callable[..., Any]:
    """A lazy ``"module:attr"`` entry, imported on use (naming a model costs nothing until it loads)."""
    if not isinstance(entry, str):
        return entry
    module_name, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class NamedModel:
    """A model known by name (``--model organism``)."""

    load: str | Callable[..., ModelAdapter]  # factory(**options) -> ModelAdapter, or a lazy "module:function"
    folder: str | Callable[[], Path] | None = None  # its HF folder (what a trainer loads), built on first use
    # settings that fit the model, used unless the command sets them, e.g. {"mcq_mode": "cloze"} for a model
    # too small to answer with a letter; reports say which applied
    recommended: Mapping[str, Any] = field(default_factory=dict)
    # name -> (a stock folder serving engines load, the revision its results are keyed by), for `vllm:NAME`
    served: str | Callable[[str], tuple[Path, str]] | None = None


_SMALL = {"mcq_mode": "cloze"}  # a 135M model ranks options well but cannot answer with a letter
_SERVED = "xkd_eval.organism.export:served_named_model"
NAMED_MODELS: Registry[NamedModel] = Registry("model")
NAMED_MODELS.add(
    "organism-base",
    NamedModel("xkd_eval.organism:load_organism_base", "xkd_eval.organism:smollm2_hf_dir", _SMALL, _SERVED),
)
NAMED_MODELS.add(
    "organism",
    NamedModel("xkd_eval.organism.trained:load_organism", "xkd_eval.organism.trained:organism_dir", _SMALL, _SERVED),
)
NAMED_MODELS.add(
    "organism-distilled",
    NamedModel(
        "xkd_eval.organism.trained:load_organism_distilled",
        "xkd_eval.organism.trained:distilled_student_dir",
        _SMALL,
        _SERVED,
    ),
)


def named_model_folder(spec: str) -> Path | None:
    """The HF folder behind a named model (built on first use); None for other specs or names without one."""
    if spec not in NAMED_MODELS or NAMED_MODELS.get(spec).folder is None:
        return None
    return Path(_resolve(NAMED_MODELS.get(spec).folder)())


def served_model_folder(name: str) -> tuple[Path, str] | None:
    """(stock folder, revision) a serving engine loads for a named model; None for names without one."""
    if name not in NAMED_MODELS or NAMED_MODELS.get(name).served is None:
        return None
    folder, revision = _resolve(NAMED_MODELS.get(name).served)(name)
    return Path(folder), revision


def recommended_settings(spec: str) -> dict[str, Any]:
    """The settings a named model recommends, served in-process too (``vllm:organism``); empty otherwise. An
    ``openai:`` model is whatever its server serves under that name, so it gets none."""
    name = spec.removeprefix("vllm:")
    return dict(NAMED_MODELS.get(name).recommended) if name in NAMED_MODELS else {}


def backend_of(spec: str) -> str:
    """What computes a spec's answers (transformers, vllm, openai), decided without loading it."""
    if spec in NAMED_MODELS:
        return "transformers"
    head, sep, _ = spec.partition(":")
    return adapter_class(head).backend if sep and head in ADAPTERS else "transformers"


def model_behind(spec: str) -> str:
    """The model a spec measures, whatever engine answers it: ``vllm:organism`` and ``openai:organism`` are
    ``organism`` (an ``openai:`` model is its served name)."""
    head, sep, rest = spec.partition(":")
    return rest if sep and head in ADAPTERS and adapter_class(head).backend != "transformers" else spec


# options only a serving backend takes (the CLI's --tensor-parallel-size, --api-base, --max-concurrency)
ENGINE_OPTIONS: dict[str, tuple[str, ...]] = {
    "vllm": ("tensor_parallel_size",),
    "openai": ("api_base", "max_concurrency"),
}


def options_for(spec: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given (None: not given) that the spec's backend takes: ``--api-base`` reaches an
    ``openai:`` model and not the transformers base beside it."""
    engine_only = {name for names in ENGINE_OPTIONS.values() for name in names}
    own = ENGINE_OPTIONS.get(backend_of(spec), ())
    return {k: v for k, v in options.items() if v is not None and (k not in engine_only or k in own)}


def unused_engine_options(specs: Sequence[str | None], options: Mapping[str, Any]) -> list[str]:
    """Engine options given that none of the specs' backends takes (a typo'd backend, a forgotten prefix)."""
    backends = {backend_of(spec) for spec in specs if spec}
    return [
        name
        for backend, names in ENGINE_OPTIONS.items()
        for name in names
        if options.get(name) is not None and backend not in backends
    ]


def adapter_class(name: str) -> type[ModelAdapter]:
    return _resolve(ADAPTERS.get(name))


def model_config(model_id: str, revision: str | None = None) -> dict[str, Any]:
    """A local folder's or hub id's ``config.json``, as a dict; one clear error when there is none."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        config_file = local / "config.json"
        if not config_file.is_file():
            raise XkdError(f"model folder {local} has no config.json; name its adapter: ADAPTER:{model_id}")
        return json.loads(config_file.read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id, revision=revision).to_dict()
    except OSError as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        named = close_matches(model_id, NAMED_MODELS.names()) or NAMED_MODELS.names()
        raise XkdError(
            f"cannot read the config of model {model_id!r} ({why}); it is not a local folder or a named model "
            f"({', '.join(named)})"
        ) from exc


def resolve_adapter(spec: str) -> tuple[str, str]:
    """``ADAPTER:ID`` -> (adapter, id); a bare id/path -> adapter picked from its config's model_type."""
    if spec in NAMED_MODELS:
        return "named", spec
    head, sep, rest = spec.partition(":")
    if sep and head in ADAPTERS:
        return head, rest
    if sep and not Path(spec).exists() and "/" not in head:
        raise UnknownNameError(unknown_name_message("model adapter", head, ADAPTERS.names()))
    model_type = model_config(spec)["model_type"]
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type], spec
    return "hf-text", spec  # a text LLM: anything AutoModelForCausalLM can load


def load_model(spec: str, *, revision: str | None = None, **options: Any) -> ModelAdapter:
    """Load a model by spec: ``hf-text:HuggingFaceTB/SmolLM2-135M-Instruct``, ``qwen2-audio:/path``, a
    bare id/path, or a registered name."""
    if spec in NAMED_MODELS:
        return _resolve(NAMED_MODELS.get(spec).load)(**options)
    if ":" not in spec and not Path(spec).expanduser().exists() and "/" not in spec:
        known = [*NAMED_MODELS.names(), *(f"{a}:<id>" for a in ADAPTERS.names())]
        raise UnknownNameError(unknown_name_message("model", spec, known))
    adapter, model_id = resolve_adapter(spec)
    return adapter_class(adapter)(model_id, revision=revision, **options)


__all__ = [
    "ADAPTERS",
    "MODEL_TYPES",
    "NAMED_MODELS",
    "ENGINE_OPTIONS",
    "NamedModel",
    "SPEECH_INSTRUCTION",
    "GenerationSettings",
    "ModelAdapter",
    "Query",
    "adapter_class",
    "backend_of",
    "load_model",
    "model_behind",
    "model_config",
    "named_model_folder",
    "options_for",
    "recommended_settings",
    "resolve_adapter",
    "served_model_folder",
    "unused_engine_options",
]
