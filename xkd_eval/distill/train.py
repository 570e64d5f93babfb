"""The training loop every trainer of a speech LLM here shares, readable top to bottom.

It trains a model already set up by ``setup_trainable`` (LoRA on the LLM's linear layers, the projector,
or the whole LLM) on tokenised examples, with a loss module: by default ``ResponseLoss`` (cross-entropy
on the response after a spoken instruction, the organism's adaptation); the distillation passes its
``KDLoss``. In order:

1. each example's user turn is the audio placeholder and the instruction, rendered by the model's
   chat template with the generation prompt; its ``<|AUDIO|>`` is expanded to the clip's audio-token
   count; the response (and the end-of-turn token) follows. Only response tokens carry a label;
2. the audio encoder never runs here: its outputs come from the feature cache
   (``xkd_eval.models.encoder``); the projector maps them into the embeddings at the audio positions;
3. batches are drawn in a seeded order (a fresh permutation per epoch, a function of the seed and the
   epoch only), so the step alone says which examples come next; the loss of an optimizer step is the
   mean over all response tokens of its micro-batches;
4. AdamW, linear warmup then cosine decay to zero, gradient clipping; a non-finite loss or gradient
   stops the run naming the step and the example ids, leaving the last good checkpoint in place;
5. checkpoints (trainable weights, optimizer, scheduler, RNG states, step, log) are written into a
   temporary folder and renamed, every ``checkpoint_every`` steps and at the end; ``resume`` continues
   from the latest one and reproduces the uninterrupted run's losses exactly on CPU.

The trained weights are exported in the adapter format of ``xkd_eval.models.adapter_weights``.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xkd_eval.distill.config import TrainConfig
from xkd_eval.distill.examples import SpokenExample
from xkd_eval.errors import XkdError
from xkd_eval.io import atomic_write_text
from xkd_eval.models.adapter_weights import peft_quiet
from xkd_eval.models.encoder import (
    build_inputs_embeds,
    expand_audio_tokens,
    progress_bar,
    projector,
    unwrap,
)

IGNORE = -100
LOG_FILE = "training_log.json"
CHECKPOINT_STATE = "state.json"  # written last: a checkpoint folder without it is incomplete
# fields that may differ between a run and its resumption
RESUMABLE_CHANGES = {
    "time_budget_s", "checkpoint_every", "keep_checkpoints", "log_every", "debug_inject_nan_step", "num_threads",
}  # fmt: skip


BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 and AMX, the Arm BF16 extension


def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 in hardware (a flag of ``BF16_CPU_FLAGS`` in ``cpuinfo``). Without it
    bf16 autocast on the CPU is emulated: a training step of the demo's pair then takes minutes, not seconds.
    Where there is no such file (macOS, Windows) the answer is no."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & BF16_CPU_FLAGS)


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> set[str]:
    """The recipe fields that differ from a checkpoint's, leaving out those a resume may change."""
    return {k for k, v in saved.items() if k not in RESUMABLE_CHANGES and now.get(k) != v}


class CheckpointMismatchError(XkdError):
    """``--resume`` found checkpoints that this run cannot continue (another recipe, or other data)."""


class TrainingConfigChangedError(CheckpointMismatchError):
    """``--resume`` found checkpoints written with other recipe settings."""


class TrainingDataChangedError(CheckpointMismatchError):
    """``--resume`` found checkpoints written for other training data (examples, tokens, audio or models)."""


class TrainingDivergedError(XkdError):
    """The loss or the gradient became NaN/inf; the message names the step, the examples and the last
    good checkpoint."""


# ---------------------------------------------------------------------------------------------- examples -> ids


@dataclass
class TrainExample:
    """One tokenised example: prompt and response ids, and its clip's cached encoder features."""

    id: str
    input_ids: list[int]
    prompt_len: int  # ids before the response (their labels are IGNORE)
    features: torch.Tensor  # [n_audio_tokens, d_model]


def render_prompt(processor: Any, instruction: str) -> str:
    """The speech arm's prompt (a clip, then ``instruction``) as the ``qwen2-audio`` evaluation adapter renders it."""
    from xkd_eval.models.qwen2_audio import Qwen2AudioAdapter

    turns = Qwen2AudioAdapter.conversation(instruction, "clip.wav")
    return processor.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def tokenize_example(processor: Any, example: SpokenExample, features: torch.Tensor) -> TrainExample:
    """Prompt (audio expanded to ``len(features)`` tokens) + response + end-of-turn, tokenised as the
    evaluation tokenises prompts and continuations."""
    tokenizer = processor.tokenizer
    audio_token = getattr(processor, "audio_token", "<|AUDIO|>")
    prompt = expand_audio_tokens(render_prompt(processor, example.instruction), [features.shape[0]], audio_token)
    prompt_ids = tokenizer(prompt)["input_ids"]
    reply = example.response + (tokenizer.eos_token or "")
    whole = tokenizer(prompt + reply, add_special_tokens=False)["input_ids"]
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    suffix = whole[len(head) :]
    if whole[: len(head)] != head:  # a merge across the boundary: the reply alone (as the evaluation does)
        suffix = tokenizer(reply, add_special_tokens=False)["input_ids"]
    if not suffix:
        raise XkdError(f"example {example.id!r} has an empty response")
    return TrainExample(example.id, list(prompt_ids) + list(suffix), len(prompt_ids), features)


@dataclass
class Batch:
    ids: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    features: list[torch.Tensor]

    @property
    def n_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def collate(examples: Sequence[TrainExample], pad_id: int) -> Batch:
    """Right-padded ids, attention mask and labels (prompt and padding IGNORE)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.input_ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
        labels[row, example.prompt_len : len(ids)] = ids[example.prompt_len :]
    return Batch([e.id for e in examples], input_ids, attention, labels, [e.features for e in examples])


class BatchOrder:
    """Micro-batch ``i`` of a seeded, epoch-wise shuffled stream. Epoch ``e`` is a permutation drawn
    from ``seed`` and ``e`` alone, cut into full batches (the remainder waits for the next epoch).
    With ``lengths``, each window of ``group`` batches is sorted by length before it is cut (less
    padding), and the batches of the epoch are then shuffled again (same seed)."""

    def __init__(self, n: int, batch_size: int, seed: int, lengths: Sequence[int] | None = None, group: int = 16):
        if n < 1:
            raise XkdError("no training examples")
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.lengths, self.group = (list(lengths) if lengths is not None else None), group
        self.per_epoch = n // self.batch_size
        self._epoch, self._batches = -1, []

    def epoch(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=generator).tolist()[: self.per_epoch * self.batch_size]
        if self.lengths is not None:
            window = self.batch_size * self.group
            perm = [
                i
                for s in range(0, len(perm), window)
                for i in sorted(perm[s : s + window], key=self.lengths.__getitem__)
            ]
        batches = [perm[s : s + self.batch_size] for s in range(0, len(perm), self.batch_size)]
        if self.lengths is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __call__(self, index: int) -> list[int]:
        epoch, position = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self.epoch(epoch)
        return self._batches[position]


# ---------------------------------------------------------------------------------------------- model side


class ResponseLoss(torch.nn.Module):
    """Sum of the response tokens' cross-entropy, from cached encoder features (the encoder never runs;
    the output head runs on the response positions only)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels, features):
        base = unwrap(self.model)
        device = base.lm_head.weight.device  # batches are collated on the CPU
        input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
        embeds = build_inputs_embeds(base, input_ids, features)
        hidden = base.model.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = base.lm_head(hidden[:, :-1][keep]).float()
        return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")


def lora_target_regex(targets: Sequence[str], layers: Sequence[int] | None = None) -> str:
    """A peft ``target_modules`` regex naming the LLM's linear layers only (the audio tower has
    ``q_proj``/``k_proj``/``v_proj`` too)."""
    layer = r"\d+" if layers is None else "(?:" + "|".join(str(int(i)) for i in layers) + ")"
    names = "|".join(re.escape(t) for t in targets)
    return rf".*language_model\.layers\.{layer}\.(?:self_attn|mlp)\.(?:{names})"


def setup_trainable(model: Any, config: Any) -> Any:
    """Freeze everything, then: LoRA adapters on the LLM's linear layers (peft) and/or the projector and/or
    the whole LLM, as ``config`` (an AdaptConfig or a KDConfig) says. Returns the model to train (a
    ``PeftModel`` when LoRA is on)."""
    model.requires_grad_(False)
    if getattr(config, "gradient_checkpointing", False):
        # non-reentrant: gradients reach LoRA weights and the projector although the layers' inputs are frozen
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.uses_lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_target_regex(config.lora_targets, config.lora_layers),
            bias="none",
        )
        torch.manual_seed(config.seed)  # LoRA A matrices are drawn here
        with peft_quiet():
            model = get_peft_model(model, lora)
    if config.trains_projector:
        projector(model).requires_grad_(True)
    if getattr(config, "trains_llm", False):
        base = unwrap(model)
        base.model.language_model.requires_grad_(True)
        base.lm_head.requires_grad_(True)
    return model


def trainable_parameters(module: Any) -> dict[str, Any]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def make_optimizer(module: Any, config: TrainConfig):
    groups: dict[tuple[float, float], list] = {}
    bridge = {id(p) for p in projector(getattr(module, "model", module)).parameters()}  # module: a loss wrapper
    for param in trainable_parameters(module).values():
        lr = config.learning_rate
        if id(param) in bridge and config.projector_learning_rate is not None:
            lr = config.projector_learning_rate
        decay = config.weight_decay if param.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    if not groups:
        raise XkdError(f"trainable scope {config.trainable!r} leaves nothing to train")
    params = [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]
    return torch.optim.AdamW(params, lr=config.learning_rate, betas=config.adam_betas, weight_decay=0.0)


def make_scheduler(optimizer, config: TrainConfig, horizon: int | None = None, done: int = 0):
    """Warmup, then cosine (or linear) decay to 0 at ``horizon`` steps (default ``config.max_steps``), standing
    at step ``done`` (a schedule refitted mid-run continues from where the old one stood)."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    make = get_cosine_schedule_with_warmup if getattr(config, "cosine", True) else get_linear_schedule_with_warmup
    return make(optimizer, config.warmup_steps, horizon or config.max_steps, last_epoch=done - 1)


FIT_AFTER_STEPS = 3  # steps timed (at least; and the warmup) before the schedule is fitted to a time budget
FIT_WHEN_OVER = 1.1  # fit only when the projected time exceeds the budget by more than this factor
FIT_TARGET = 0.95  # the fitted schedule's projected share of the budget


def step_costs(order: BatchOrder, lengths: Sequence[int] | None, n_steps: int, grad_accum: int) -> list[int] | None:
    """Each step's relative cost, known before it runs: the padded tokens of its micro-batches (rows × the
    longest example). Steps differ by several times where lengths do (a batch of long clips against one of
    short questions); None without lengths."""
    if lengths is None:
        return None
    costs = []
    for step in range(n_steps):
        batches = [order(step * grad_accum + m) for m in range(grad_accum)]
        costs.append(sum(len(b) * max(lengths[i] for i in b) for b in batches))
    return costs


def fitted_horizon(
    config: Any, step: int, seconds: float, rate: float | None = None, costs: Sequence[float] | None = None
) -> int | None:
    """The schedule's length fitted to ``config.time_budget_s``, when the recipe's ``max_steps`` would overrun
    it (by more than ``FIT_WHEN_OVER``): on a slower machine the run then finishes a shorter cosine schedule,
    instead of stopping at the budget in mid-schedule with its learning rate still high. None when it fits.

    ``step`` steps took ``seconds``; the rest is projected at ``rate`` seconds per unit of ``costs`` (each
    step's cost, step_costs), by default the mean step time over equal costs. Projecting by cost matters
    where the first steps happen to be long or short ones."""
    budget = config.time_budget_s
    if budget is None or step < 1 or seconds <= 0:
        return None
    if costs is None:
        costs, rate = [1.0] * config.max_steps, seconds / step
    elif rate is None:
        rate = seconds / max(sum(costs[:step]), 1e-9)
    if seconds + rate * sum(costs[step : config.max_steps]) <= FIT_WHEN_OVER * budget:
        return None
    horizon, spent = step, seconds
    while horizon < config.max_steps and spent + rate * costs[horizon] <= FIT_TARGET * budget:
        spent += rate * costs[horizon]
        horizon += 1
    return max(step + 1, horizon)


# ---------------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / CHECKPOINT_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


class EarlierTrainingError(XkdError):
    """A training without ``--resume`` found an earlier training's checkpoints in its folder."""


def refuse_to_overwrite(out_dir: str | os.PathLike, resume: bool) -> None:
    """Without ``resume``, refuse a folder that holds an earlier training's checkpoints: a fresh start there
    would replace its log and, from its first checkpoint on, prune the earlier run's."""
    found = [] if resume else checkpoint_dirs(out_dir)
    if found:
        raise EarlierTrainingError(
            f"{out_dir} holds an earlier training (checkpoints up to {found[-1].name}): pass --resume to continue "
            f"it (a finished one is reused as it is), train into another folder, or remove "
            f"{Path(out_dir) / 'checkpoints'} to start over"
        )


def save_checkpoint(out_dir: Path, step: int, module, optimizer, scheduler, state: dict[str, Any], keep: int) -> Path:
    from safetensors.torch import save_file

    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(module).items()}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / CHECKPOINT_STATE).write_text(json.dumps({**state, "step": step}, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, module, optimizer, scheduler) -> dict[str, Any]:
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = trainable_parameters(module)
    if set(weights) != set(params):
        raise XkdError(f"checkpoint {path} holds other trainable weights than this run (another scope or LoRA?)")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / CHECKPOINT_STATE).read_text())


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    steps: int
    seconds: float
    log: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "max_steps"  # max_steps | fitted_to_time_budget (a shorter schedule, finished) | time_budget
    resumed_from: int | None = None
    checkpoint: str | None = None

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.log if "loss" in r]


def _write_log(out_dir: Path, log: list[dict[str, Any]]) -> None:
    atomic_write_text(out_dir / LOG_FILE, json.dumps(log, indent=0) + "\n")


def train(
    model: Any,
    examples: Sequence[TrainExample],
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    pad_id: int,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    loss_module: torch.nn.Module | None = None,
    collate_fn: Callable[[Sequence[Any]], Any] | None = None,
    validate: Callable[[Any], dict[str, float]] | None = None,
    eval_every: int | None = None,
    lengths: Sequence[int] | None = None,
    data_identity: str | None = None,
) -> TrainResult:
    """Train ``model`` (already set up by ``setup_trainable``) on tokenised examples; checkpoints and the
    training log go to ``out_dir``. Raises TrainingDivergedError on a non-finite loss or gradient.

    The loop is generic: by default the loss is the response cross-entropy of ``ResponseLoss`` over
    ``collate``d ``TrainExample`` batches. A caller (the KD trainer) may pass its own ``loss_module``
    (called as ``loss_module(batch)``, returning ``(loss_sum, parts)``: the loss summed over the batch's
    tokens and a dict of named summed terms, all divided by the step's ``batch.n_tokens`` total) and
    ``collate_fn`` (examples -> a batch with ``ids`` and ``n_tokens``). ``validate(module)`` (main process,
    every ``eval_every`` steps and at the end) returns held-out figures recorded in the log as ``val_*``.
    A KeyboardInterrupt writes a checkpoint of the last completed step, then propagates. ``data_identity`` (a
    digest of everything the examples were built from) is kept in each checkpoint; resuming with another one
    raises TrainingDataChangedError instead of continuing another run's curve on new data."""
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    refuse_to_overwrite(out_dir, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda message: None)
    # mixed precision by an explicit autocast around the loss (accelerate's wrapper did not engage it on CPU)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    if half is not None and accelerator.device.type == "cpu" and not (half is torch.bfloat16 and cpu_has_native_bf16()):
        say(
            f"warning: {config.mixed_precision} autocast on a CPU without native support (no "
            f"{'/'.join(sorted(BF16_CPU_FLAGS))} in /proc/cpuinfo) is emulated and runs many times slower than "
            "float32; set mixed_precision: no (or auto, in a distill recipe)"
        )
    torch.manual_seed(config.seed)
    custom = loss_module is not None
    loss_module = loss_module if custom else ResponseLoss(model)
    make_batch = collate_fn if collate_fn is not None else (lambda items: collate(items, pad_id))
    optimizer = make_optimizer(loss_module, config)
    scheduler = make_scheduler(optimizer, config)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    if lengths is None and config.group_by_length:
        lengths = [len(e.input_ids) for e in examples]
    elif not config.group_by_length:
        lengths = None
    order = BatchOrder(len(examples), config.batch_size, config.seed, lengths)
    costs = step_costs(order, lengths, config.max_steps, config.grad_accum) if config.time_budget_s else None

    step, seconds, history, resumed_from = 0, 0.0, [], None
    horizon = config.max_steps  # the schedule's length: fewer steps where it is fitted to time_budget_s
    if resume:
        found = checkpoint_dirs(out_dir)
        if found:
            state = load_checkpoint(found[-1], accelerator.unwrap_model(loss_module), optimizer, scheduler)
            changed = config_changes(state["config"], config.to_dict())
            if changed:
                raise TrainingConfigChangedError(
                    f"cannot resume from {found[-1]}: the config changed in {sorted(changed)}; train into a new "
                    f"output folder, or remove {out_dir}'s checkpoints to start over"
                )
            if data_identity is not None and state.get("data") != data_identity:
                raise TrainingDataChangedError(
                    f"cannot resume from {found[-1]}: it was written for other training data (data "
                    f"{str(state.get('data'))[:12]}, now {data_identity[:12]}: the examples, their tokens, their "
                    f"audio or the models differ); train into a new output folder, or remove {out_dir}'s "
                    "checkpoints to start over"
                )
            step, seconds, history = state["step"], state["seconds"], state["log"]
            horizon = state.get("horizon", config.max_steps)
            if horizon != config.max_steps:
                scheduler = make_scheduler(optimizer, config, horizon, done=step)
            resumed_from = step
            say(f"resumed from {found[-1]} (step {step})")
    last_good = str(checkpoint_dirs(out_dir)[-1]) if checkpoint_dirs(out_dir) else None
    result = TrainResult(step, seconds, history, resumed_from=resumed_from, checkpoint=last_good)
    if horizon != config.max_steps:
        result.stopped = "fitted_to_time_budget"

    def checkpoint() -> None:
        state = {"seconds": round(seconds, 3), "log": history, "config": config.to_dict(), "data": data_identity}
        state["horizon"] = horizon
        path = save_checkpoint(
            out_dir, step, accelerator.unwrap_model(loss_module), optimizer, scheduler, state, config.keep_checkpoints
        )
        result.checkpoint = str(path)

    def run_validation() -> None:
        if validate is None or not accelerator.is_main_process:
            return
        inner = accelerator.unwrap_model(loss_module)
        inner.eval()
        with torch.no_grad():
            figures = validate(inner)
        inner.train()
        record = {"step": step, **{f"val_{k}": v for k, v in figures.items()}}
        history.append(record)
        say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step"))

    loss_module.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    # the rate of this process's steps after its first (which also pays for warming up), per unit of cost
    first_step, timed_seconds, timed_cost = step, 0.0, 0.0
    show = progress and accelerator.is_main_process
    with (
        _interrupt_guard(accelerator, checkpoint),
        progress_bar(config.max_steps, "training", show, completed=step) as advance,
    ):
        while step < horizon:
            if step == max(FIT_AFTER_STEPS, config.warmup_steps) and horizon == config.max_steps:
                from accelerate.utils import broadcast

                # 0.0 stands for "no rate yet" (fitted_horizon then takes the mean over the costs so far)
                rate = timed_seconds / timed_cost if costs and timed_cost else 0.0
                timing = torch.tensor([seconds, rate], dtype=torch.float64).to(accelerator.device)
                taken, rate = (float(x) for x in broadcast(timing))  # the main process's: one schedule for all
                fitted = fitted_horizon(config, step, taken, rate or None, costs)
                if fitted is not None and fitted < horizon:
                    horizon = fitted
                    scheduler = make_scheduler(optimizer, config, horizon, done=step)
                    result.stopped = "fitted_to_time_budget"
                    say(
                        f"{step} steps took {taken:.0f} s here: {config.max_steps} steps would overrun "
                        f"time_budget_s {config.time_budget_s:g}; the schedule is fitted to {horizon} steps"
                    )
            if config.time_budget_s is not None and seconds >= config.time_budget_s:
                result.stopped = "time_budget"
                break
            started = time.perf_counter()
            micro = [
                make_batch([examples[i] for i in order(step * config.grad_accum + m)[rank::world]])
                for m in range(config.grad_accum)
            ]
            n_tokens = sum(b.n_tokens for b in micro)
            ids = [i for b in micro for i in b.ids]
            total, parts_total = 0.0, {}
            for m, batch in enumerate(micro):
                sync = accelerator.no_sync(loss_module) if m < len(micro) - 1 else nullcontext()
                autocast = torch.autocast(
                    accelerator.device.type, dtype=half or torch.float32, enabled=half is not None
                )
                with sync, autocast:
                    if custom:
                        loss_sum, parts = loss_module(batch)
                        loss = loss_sum / n_tokens
                        for key, value in parts.items():
                            parts_total[key] = parts_total.get(key, 0.0) + float(value) / n_tokens
                    else:
                        loss = loss_module(batch.input_ids, batch.attention_mask, batch.labels, batch.features)
                        loss = loss / n_tokens
                    if config.debug_inject_nan_step is not None and step + 1 == config.debug_inject_nan_step:
                        loss = loss * float("nan")
                    if not torch.isfinite(loss):
                        _diverged(out_dir, history, step + 1, ids, f"loss {float(loss.detach())}", result.checkpoint)
                    accelerator.backward(loss)
                total += float(loss.detach())
            grad_norm = None
            if config.max_grad_norm is not None:
                grad_norm = float(accelerator.clip_grad_norm_(loss_module.parameters(), config.max_grad_norm))
                if not math.isfinite(grad_norm):
                    _diverged(out_dir, history, step + 1, ids, f"gradient norm {grad_norm}", result.checkpoint)
            lr = config.learning_rate * scheduler.get_last_lr()[0] / optimizer.param_groups[0]["initial_lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            took = time.perf_counter() - started
            seconds += took
            if costs and step - 1 > first_step:
                timed_seconds, timed_cost = timed_seconds + took, timed_cost + costs[step - 1]
            if step % config.log_every == 0 or step == horizon:
                record = {"step": step, "loss": total, "lr": lr, "seconds": round(seconds, 3), "tokens": n_tokens}
                if grad_norm is not None:
                    record["grad_norm"] = round(grad_norm, 6)
                record.update(parts_total)
                history.append(record)
                if accelerator.is_main_process:
                    _write_log(out_dir, history)
            if eval_every and (step % eval_every == 0 or step == horizon):
                run_validation()
            if step % config.checkpoint_every == 0 and accelerator.is_main_process:
                checkpoint()
            advance(1)
    if accelerator.is_main_process:
        if not checkpoint_dirs(out_dir) or int(checkpoint_dirs(out_dir)[-1].name.split("-")[1]) != step:
            checkpoint()
        _write_log(out_dir, history)
    result.steps, result.seconds, result.log = step, seconds, history
    return result


class _interrupt_guard:
    """On KeyboardInterrupt: checkpoint the last completed step (main process), then let it propagate."""

    def __init__(self, accelerator: Any, checkpoint: Callable[[], None]) -> None:
        self.accelerator, self.checkpoint = accelerator, checkpoint

    def __enter__(self) -> _interrupt_guard:
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is KeyboardInterrupt and self.accelerator.is_main_process:
            self.checkpoint()
        return False


def _diverged(out_dir: Path, history: list, step: int, ids: list[str], what: str, checkpoint: str | None) -> None:
    history.append({"step": step, "error": f"non-finite {what}", "batch_ids": ids})
    _write_log(out_dir, history)
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written before it"
    raise TrainingDivergedError(
        f"non-finite {what} at step {step} (batch ids: {', '.join(ids)}); stopped, {kept}. "
        "Lower the learning rate or check those examples, then resume."
    )


# ---------------------------------------------------------------------------------------------- export / import


# ---------------------------------------------------------------------------------------------- organism


__all__ = [
    "Batch",
    "BatchOrder",
    "EarlierTrainingError",
    "TrainExample",
    "TrainResult",
    "TrainingDataChangedError",
    "TrainingDivergedError",
    "checkpoint_dirs",
    "collate",
    "config_changes",
    "lora_target_regex",
    "refuse_to_overwrite",
    "render_prompt",
    "setup_trainable",
    "tokenize_example",
    "train",
]
