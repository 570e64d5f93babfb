"""Training recipes as dataclasses: loaded from YAML, every field documented, checked when made.

``TrainConfig`` holds what every training of a speech LLM shares (what trains, the optimiser, the
checkpoints, the audio features); ``KDConfig`` extends it with the cross-modal distillation's models,
data, channels and loss, and the organism's adaptation recipe (``xkd_eval.organism.adapt.AdaptConfig``)
with its generated data. ``distill/*.yaml`` at the repository's top level are recipes; a field left out
takes the default below.
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

LLM_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FEATURE_WINDOWS = ("trim", "full")
SAVE_DTYPES = ("float32", "float16", "bfloat16")


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
class TrainConfig(RecipeConfig):
    """What every training of a speech LLM shares: what trains, the optimiser, checkpoints, audio features.

    The trainers read these fields; a recipe (``KDConfig``, the organism's ``AdaptConfig``) extends them
    with its models and data, and may give a field another default."""

    kind = "training config"
    scopes: typing.ClassVar[tuple[str, ...]] = ("projector", "lora", "projector+lora")
    precisions: typing.ClassVar[tuple[str, ...]] = ("auto", "no", "bf16", "fp16")

    # --- what trains
    # the audio encoder never trains; "llm"/"all" (where the recipe allows them) train the whole LLM
    trainable: str = "projector+lora"
    lora_rank: int = 16  # LoRA rank r
    lora_alpha: float = 32.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA branch input
    lora_targets: list[str] = field(default_factory=lambda: list(LLM_LINEAR_MODULES))  # the LLM's linear layers
    lora_layers: list[int] | None = None  # only these decoder layers (None = all)
    # --- optimisation
    seed: int = 0  # data order, LoRA initialisation and dropout
    max_steps: int | None = None  # optimizer steps
    batch_size: int = 4  # examples per micro-batch (global: split across data-parallel processes)
    grad_accum: int = 1  # micro-batches per optimizer step
    group_by_length: bool = True  # batch examples of similar length (less padding; the order is still seeded)
    learning_rate: float = 5e-6  # peak learning rate (of the LoRA weights or the LLM)
    projector_learning_rate: float | None = None  # peak learning rate of the projector (None = learning_rate)
    weight_decay: float = 0.0  # AdamW weight decay (not applied to biases)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # linear warmup from 0, then the decay to 0 at max_steps
    max_grad_norm: float | None = 1.0  # gradient clipping (None = off)
    # "auto": bf16 autocast where the GPU or CPU computes it natively (AVX512-BF16, AMX), else float32;
    # "no": float32; "bf16"/"fp16": autocast
    mixed_precision: str = "auto"
    # --- checkpoints and logs
    checkpoint_every: int = 100  # steps between checkpoints (a final one is always written)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    log_every: int = 1  # steps between training-log records
    time_budget_s: float | None = None  # stop (and save) after this much training time
    save_dtype: str = "float32"  # dtype of the exported adapter weights
    debug_inject_nan_step: int | None = None  # testing aid: make this step's loss NaN
    # --- audio
    voices: list[str] | None = None  # TTS voices for text without audio (None = xkd_eval.tts's defaults)
    feature_window: str = "trim"  # encoder window for the feature cache: "trim" (fast) or "full"
    encoder_batch_size: int = 8  # clips per encoder pass when filling the feature cache

    def __post_init__(self) -> None:
        self._read_numbers()
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        if self.lora_targets is not None:
            self.lora_targets = list(self.lora_targets)
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        problems = self.problems()
        if problems:
            raise ConfigError(f"bad {self.kind}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with the fields, each said by name (a recipe adds its own checks)."""
        not_linear = sorted(set(self.lora_targets or ()) - set(LLM_LINEAR_MODULES))
        checks = [
            (self.trainable in self.scopes, f"trainable must be one of {', '.join(self.scopes)}"),
            (self.feature_window in FEATURE_WINDOWS, f"feature_window must be one of {', '.join(FEATURE_WINDOWS)}"),
            (self.mixed_precision in self.precisions, f"mixed_precision must be one of {', '.join(self.precisions)}"),
            (self.save_dtype in SAVE_DTYPES, f"save_dtype must be one of {', '.join(SAVE_DTYPES)}"),
            (self.encoder_batch_size >= 1, "encoder_batch_size must be >= 1"),
            (self.lora_rank >= 1, "lora_rank must be >= 1"),
            (self.lora_alpha > 0, "lora_alpha must be > 0"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (bool(self.lora_targets), "lora_targets must name at least one module"),
            (not not_linear, f"lora_targets {not_linear} are not LLM linear layers ({', '.join(LLM_LINEAR_MODULES)})"),
            (self.lora_layers is None or all(i >= 0 for i in self.lora_layers), "lora_layers must be >= 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (
                self.projector_learning_rate is None or self.projector_learning_rate > 0,
                "projector_learning_rate must be > 0",
            ),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (
                len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
                "adam_betas: two values in [0, 1)",
            ),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0 (or null)"),
            (self.checkpoint_every >= 1 and self.keep_checkpoints >= 1, "checkpoint_every/keep_checkpoints >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s must be > 0 (or null)"),
        ]
        return [message for ok, message in checks if not ok]

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.trainable

    @property
    def trains_projector(self) -> bool:
        return self.trainable in ("projector", "projector+lora", "all")

    @property
    def trains_llm(self) -> bool:
        return self.trainable in ("llm", "all")


TARGETS = ("data", "teacher", "data_else_teacher")
TEACHER_MODES = ("cached", "on_the_fly")
TEACHER_BACKENDS = ("transformers", "vllm")
FEATURE_MODES = ("cached", "on_the_fly")


@dataclass
class KDConfig(TrainConfig):
    """The cross-modal distillation recipe: the training fields, then models, data, channels and loss.
    Load from YAML with ``KDConfig.from_yaml`` / ``load_kd_config``."""

    kind = "KD config"
    scopes: typing.ClassVar[tuple[str, ...]] = ("projector", "lora", "projector+lora", "llm", "all")

    # --- models and data (``distill``'s arguments override these)
    teacher: str | None = None  # model spec of the text LLM teacher (e.g. organism-base, a folder, a hub id)
    student: str | None = None  # model spec of the speech LLM student (e.g. organism, qwen2-audio:<folder>)
    data: str | None = None  # JSONL path, or hub:Open-Orca/OpenOrca
    data_limit: int | None = None  # use at most this many examples
    eval_fraction: float = 0.05  # seeded held-out split for validation losses
    # --- channels and loss
    tt_weight: float = 1.0  # T→T channel weight (0 = off: S→T-only ablation)
    st_weight: float = 1.0  # S→T channel weight (0 = off: T→T-only ablation; no audio is touched)
    lam: float = 0.5  # λ: weight of the τ²-scaled divergence next to CE
    temperature: float = 2.0  # τ
    divergence: str = "forward_kl"  # forward_kl | reverse_kl | jsd
    beta: float = 0.5  # JSD mixture weight on the teacher
    # "teacher": the teacher's greedy answers (cached); "data": the given responses; "data_else_teacher": the
    # given response where there is one (e.g. a listening request's sentence), else the teacher's answer
    targets: str = "teacher"
    # [question, answer] turns the teacher reads before every instruction (its targets and its logits), never
    # the students: context distillation. Worked examples of short answers make the teacher answer first
    # instead of restating the question, so the S→T student must take the answer from the clip itself
    teacher_context: list[list[str]] | None = None
    max_new_tokens: int = 64  # length limit of the teacher's greedy targets
    max_response_tokens: int = 128  # responses are cut to this many tokens
    top_k: int | None = 64  # teacher cache: top-k logits (None = exact full vocabulary)
    teacher_mode: str = "cached"  # "cached" (precomputed, teacher unloaded) or "on_the_fly" (resident)
    teacher_batch_size: int = 8  # batch of the teacher's target generation and logits pass
    # what fills the top-k teacher cache: "transformers" (the teacher's logits), or "vllm" (its top-k
    # log-probabilities from vLLM's prompt_logprobs, the same cache format; needs vLLM and a cached top_k)
    teacher_backend: str = "transformers"
    # --- schedule (max_steps None = epochs × (examples // batch_size) / grad_accum)
    cosine: bool = True  # cosine decay to 0 after warmup (False: linear)
    epochs: float = 1.0
    # recompute each LLM layer in the backward pass instead of keeping its activations: far less memory
    # (two channels of long sequences), about a third more compute
    gradient_checkpointing: bool = False
    # --- validation and output
    eval_every: int = 50  # steps between held-out validation losses (also at the end)
    eval_batch_size: int = 8
    save_merged: bool = True  # also write the merged student folder (out_dir/student)
    # "cached": the frozen encoder's outputs are computed once and kept on disk; "on_the_fly": the encoder
    # runs on every step's clips (the naive way, for comparison)
    feature_mode: str = "cached"

    def problems(self) -> list[str]:
        from xkd_eval.distill.losses import KINDS

        problems = super().problems()

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.tt_weight >= 0 and self.st_weight >= 0, "tt_weight and st_weight must be >= 0")
        need(self.tt_weight > 0 or self.st_weight > 0, "at least one channel (tt_weight, st_weight) must be > 0")
        need(self.lam >= 0, "lam must be >= 0")
        need(self.temperature > 0, "temperature must be > 0")
        need(self.divergence in KINDS, f"divergence must be one of {', '.join(KINDS)}")
        need(0 <= self.beta <= 1, "beta must be in [0, 1]")
        need(self.targets in TARGETS, f"targets must be one of {', '.join(TARGETS)}")
        if self.teacher_context is not None:
            turns = self.teacher_context
            well_formed = isinstance(turns, list | tuple) and all(
                isinstance(t, list | tuple) and len(t) == 2 and all(isinstance(x, str) and x.strip() for x in t)
                for t in turns
            )
            need(well_formed, "teacher_context must be a list of [question, answer] pairs of non-empty strings")
            if well_formed:
                self.teacher_context = [list(t) for t in turns]
                from xkd_eval.builtin import asks_builtin_question

                asked = [q for q, _ in self.teacher_context if asks_builtin_question(q)]
                need(
                    not asked,
                    f"teacher_context asks built-in benchmark questions ({asked}): the teacher would be shown how "
                    "to answer the items the reports score; choose other worked questions",
                )
        need(self.top_k is None or self.top_k >= 1, "top_k must be >= 1 or null (full vocabulary)")
        need(self.teacher_mode in TEACHER_MODES, f"teacher_mode must be one of {', '.join(TEACHER_MODES)}")
        need(
            self.teacher_backend in TEACHER_BACKENDS,
            f"teacher_backend must be one of {', '.join(TEACHER_BACKENDS)}",
        )
        need(
            self.teacher_backend != "vllm" or (self.teacher_mode == "cached" and self.top_k is not None),
            "teacher_backend: vllm fills the top-k teacher cache: it needs teacher_mode: cached and a top_k",
        )
        need(self.feature_mode in FEATURE_MODES, f"feature_mode must be one of {', '.join(FEATURE_MODES)}")
        need(self.epochs > 0, "epochs must be > 0")
        need(0 <= self.eval_fraction < 1, "eval_fraction must be in [0, 1)")
        need(self.eval_every >= 1, "eval_every must be >= 1")
        need(self.max_new_tokens >= 1 and self.max_response_tokens >= 1, "token limits must be >= 1")
        return problems

    @property
    def channels(self) -> dict[str, float]:
        return {name: w for name, w in (("tt", self.tt_weight), ("st", self.st_weight)) if w > 0}


def load_kd_config(source: str | os.PathLike | dict[str, Any] | KDConfig) -> KDConfig:
    return KDConfig.load(source)


__all__ = ["LLM_LINEAR_MODULES", "ConfigError", "KDConfig", "RecipeConfig", "TrainConfig", "load_kd_config"]
