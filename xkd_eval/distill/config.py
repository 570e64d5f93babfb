"""The speech-adaptation recipe: one dataclass, loaded from YAML, checked when it is made.

``distill/organism-adapt.yaml`` at the repository's top level is the recipe of the committed organism
adapter; any field left out takes the default below.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.registry import close_matches

TRAINABLE_SCOPES = ("projector", "lora", "projector+lora")
LLM_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FEATURE_WINDOWS = ("trim", "full")
PROJECTOR_INITS = ("assembled", "least_squares")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
MIXED_PRECISION = ("no", "bf16", "fp16")


class ConfigError(XkdError):
    """A recipe field is missing, unknown or out of range; the message names it."""


def _refuse_unknown(cls: type, values: dict[str, Any], where: str) -> None:
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(values) - set(known))
    if not unknown:
        return
    guesses = {name: close_matches(name, known, n=1) for name in unknown}
    hint = "; ".join(f"{name!r}: did you mean {match[0]!r}?" for name, match in guesses.items() if match)
    hint = f" ({hint})" if hint else ""
    raise ConfigError(f"{where}: unknown fields {unknown}{hint}; known: {', '.join(known)}")


def _number_field(name: str, value: Any, hint: Any, kind: str) -> Any:
    """``value`` as the number its field's annotation asks for. YAML 1.1 reads ``1e-3`` (no dot) as a string,
    so numeric strings are read as numbers; anything else that is not a number is refused by name."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None or not ({int, float} & set(allowed)):
        return value
    wanted = float if float in allowed else int
    what = "a number" if wanted is float else "a whole number"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"bad {kind}: {name} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"bad {kind}: {name} must be {what}, got {value!r}")
    if wanted is int:
        if not float(value).is_integer():
            raise ConfigError(f"bad {kind}: {name} must be {what}, got {value!r}")
        return int(value)
    return float(value)


class RecipeConfig:
    """What every recipe dataclass shares: a dict/YAML round trip with unknown fields refused, and numeric
    fields read as numbers (``_read_numbers``, first thing in each ``__post_init__``)."""

    kind = "config"

    def _read_numbers(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _number_field(f.name, value, hints.get(f.name), self.kind))

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["adam_betas"] = list(self.adam_betas)
        return record

    def replace(self, **changes: Any):
        _refuse_unknown(type(self), changes, self.kind)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str | None = None):
        _refuse_unknown(cls, values, source or cls.kind)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike):
        import yaml

        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"{cls.kind} {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of fields")
        return cls.from_dict(values, source=str(path))

    @classmethod
    def load(cls, source):
        """From a YAML path, a dict, or an instance (returned as it is)."""
        if isinstance(source, cls):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source)
        return cls.from_yaml(source)


@dataclass
class AdaptConfig(RecipeConfig):
    """How the speech LLM is adapted: base model, data, trainable scope, optimisation, checkpoints."""

    kind = "adaptation config"

    # --- base model
    base_model: str = "organism"  # "organism": the assembled Whisper-base + SmolLM2 speech LLM; or a folder
    base_seed: int = 0  # seed of the organism's random projector initialisation (speech_llm_base_dir)

    # --- data
    n_examples: int = 1200  # generated spoken examples (xkd_eval.distill.data); 0 = user data only
    data_seed: int = 0  # seed of the example generator
    data_mix: dict[str, float] | None = None  # family -> weight; None = data.DEFAULT_MIX
    data_jsonl: str | None = None  # extra user examples (id, instruction, spoken_text, response, audio)
    voices: list[str] | None = None  # TTS voices; None = xkd_eval.tts.DEFAULT_VOICES
    feature_window: str = "trim"  # encoder window for the feature cache: "trim" (fast) or "full"
    encoder_batch_size: int = 8  # clips per encoder pass when filling the feature cache

    # --- what trains
    trainable: str = "projector+lora"  # "projector", "lora" or "projector+lora"; the encoder never trains
    # "assembled": start from the base's projector as it is; "least_squares": first fit it, in closed form, to
    # map each word's encoder frames onto the LLM's embedding of the word, on the transcription examples
    # (response = spoken text); xkd_eval.distill.projector_init
    projector_init: str = "assembled"
    projector_init_ridge: float = 1.0  # ridge penalty of that fit
    lora_rank: int = 16  # LoRA rank r
    lora_alpha: float = 32.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch input
    lora_targets: list[str] = field(default_factory=lambda: list(LLM_LINEAR_MODULES))  # LLM linear layers
    lora_layers: list[int] | None = None  # only these decoder layers (None = all)

    # --- optimisation
    seed: int = 0  # data order, LoRA initialisation and dropout
    max_steps: int = 400  # optimizer steps
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    group_by_length: bool = True  # batch examples of similar length (less padding; order still seeded)
    learning_rate: float = 5e-4  # peak learning rate of the LoRA weights
    projector_learning_rate: float | None = None  # peak learning rate of the projector (None = learning_rate)
    weight_decay: float = 0.0  # AdamW weight decay (not applied to biases)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 20  # linear warmup from 0, then cosine decay to 0 at max_steps
    max_grad_norm: float | None = 1.0  # gradient clipping (None = off)
    num_threads: int | None = None  # CPU threads for torch (None = its default); 1 is fastest on a busy machine
    mixed_precision: str = "no"  # "no" (float32) or "bf16" (autocast; about 3x faster on CPUs with AVX512-BF16)

    # --- checkpoints and logs
    checkpoint_every: int = 100  # steps between checkpoints (a final one is always written)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    log_every: int = 1  # steps between training-log records
    time_budget_s: float | None = None  # stop (and save) after this much training time
    save_dtype: str = "float32"  # dtype of the exported adapter weights
    debug_inject_nan_step: int | None = None  # testing aid: make this step's loss NaN

    def __post_init__(self) -> None:
        self._read_numbers()
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        if self.lora_targets is not None:
            self.lora_targets = list(self.lora_targets)
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.trainable in TRAINABLE_SCOPES, f"trainable must be one of {', '.join(TRAINABLE_SCOPES)}")
        need(self.feature_window in FEATURE_WINDOWS, f"feature_window must be one of {', '.join(FEATURE_WINDOWS)}")
        need(self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}")
        need(self.save_dtype in SAVE_DTYPES, f"save_dtype must be one of {', '.join(SAVE_DTYPES)}")
        need(self.projector_init in PROJECTOR_INITS, f"projector_init must be one of {', '.join(PROJECTOR_INITS)}")
        need(self.n_examples >= 0, "n_examples must be >= 0")
        need(self.n_examples > 0 or bool(self.data_jsonl), "n_examples is 0 and no data_jsonl is given: no data")
        need(self.encoder_batch_size >= 1, "encoder_batch_size must be >= 1")
        need(self.lora_rank >= 1, "lora_rank must be >= 1")
        need(self.lora_alpha > 0, "lora_alpha must be > 0")
        need(0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)")
        need(bool(self.lora_targets), "lora_targets must name at least one module")
        unknown = sorted(set(self.lora_targets or ()) - set(LLM_LINEAR_MODULES))
        need(not unknown, f"lora_targets {unknown} are not LLM linear layers ({', '.join(LLM_LINEAR_MODULES)})")
        need(self.lora_layers is None or all(i >= 0 for i in self.lora_layers), "lora_layers must be >= 0")
        need(self.max_steps >= 1, "max_steps must be >= 1")
        need(self.num_threads is None or self.num_threads >= 1, "num_threads must be >= 1 (or null)")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.grad_accum >= 1, "grad_accum must be >= 1")
        need(self.learning_rate > 0, "learning_rate must be > 0")
        need(self.projector_learning_rate is None or self.projector_learning_rate > 0, "projector_learning_rate > 0")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas: two values in [0, 1)")
        need(0 <= self.warmup_steps < self.max_steps, "warmup_steps must be in [0, max_steps)")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0 (or null)")
        need(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        need(self.log_every >= 1, "log_every must be >= 1")
        need(self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s must be > 0 (or null)")
        if self.data_mix is not None:
            from xkd_eval.distill.data import FAMILIES

            bad = sorted(set(self.data_mix) - set(FAMILIES))
            need(not bad, f"data_mix names unknown families {bad} (known: {', '.join(FAMILIES)})")
            need(all(w >= 0 for w in self.data_mix.values()), "data_mix weights must be >= 0")
        if problems:
            raise ConfigError("bad adaptation config: " + "; ".join(problems))

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.trainable

    @property
    def trains_projector(self) -> bool:
        return "projector" in self.trainable


def load_config(source: str | os.PathLike | dict[str, Any] | AdaptConfig) -> AdaptConfig:
    """An ``AdaptConfig`` from a YAML path, a dict or a config."""
    return AdaptConfig.load(source)


__all__ = ["LLM_LINEAR_MODULES", "TRAINABLE_SCOPES", "AdaptConfig", "ConfigError", "RecipeConfig", "load_config"]
