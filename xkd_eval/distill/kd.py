"""Cross-modal knowledge distillation (arXiv 2509.14930): text LLM teacher, speech LLM student.

Per example and channel (both by default):

- **T→T**: the student reads the text prompt (its chat template, no audio);
- **S→T**: the student hears the spoken prompt (cached audio-encoder features written into the
  embeddings by ``build_inputs_embeds``) with the fixed listening instruction;

the same response token ids (tokenised once) follow each prompt. The student's logits over the
response are aligned (``align_response``) to the teacher's logits over that response, teacher-forced on
the *text* prompt and precomputed into a disk cache (``teacher_cache``: top-k or full vocabulary), so
the teacher is not resident while the student trains. The loss of a step is
``Σ_channel weight · (CE + λ·τ²·D_τ(teacher, student))`` averaged over the response tokens.

The optimisation loop is ``xkd_eval.distill.train.train`` (seeded batch order, AdamW + warmup/cosine,
accelerate data parallelism, checkpoints every N steps and on interrupt, exact resume, NaN/inf stop).

``distill(teacher, student, data, out_dir, config)`` runs it all and writes ``out_dir/adapter`` (the
trainable weights: projector and/or LoRA), ``out_dir/student`` (the merged student, an HF folder that the
runner loads as ``qwen2-audio:<out_dir>/student`` or ``qwen2.5-omni:<out_dir>/student``) and ``out_dir/training.json``.

Students: Qwen2-Audio-style models (the organism) and Qwen2.5-Omni (its thinker; a whole Omni checkpoint loads
its thinker alone, and the merged student is a thinker checkpoint). The prompts are the ones the family's
evaluation adapter sends (Omni's system turn included), so the student trains on what it is measured on.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xkd_eval.audio import samples_digest
from xkd_eval.distill.config import KDConfig, load_kd_config
from xkd_eval.distill.losses import (
    TopK,
    align_response,
    channel_loss,
    check_vocab_compatible,
    combined_loss,
    response_labels,
)
from xkd_eval.distill.train import setup_trainable
from xkd_eval.errors import XkdError

STUDENT_ADAPTERS = ("qwen2-audio", "qwen2.5-omni")  # audio tower + projector + causal LLM, what the loss drives

# ---------------------------------------------------------------------------------------------- examples


@dataclass
class KDItem:
    """One tokenised KD example: both student prompts + the shared response, the teacher's logits."""

    id: str
    response_ids: list[int]
    tt_prompt: list[int]
    st_prompt: list[int] | None  # None when the S→T channel is off
    features: torch.Tensor | None
    teacher_prompt: list[int]
    teacher: TopK | torch.Tensor | None = None  # [R, k] / [R, V] (None: computed on the fly)
    audio: Any = None  # the 16 kHz clip, when the encoder runs on the fly (features is None then)

    @property
    def length(self) -> int:
        return len(self.response_ids) + max(len(self.tt_prompt), len(self.st_prompt or ()))


def _stack_rows(rows: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int):
    seqs = [p + r for p, r in zip(rows, responses, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (p, s) in enumerate(zip(rows, seqs, strict=True)):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention[row, : len(s)] = 1
        mask[row, len(p) : len(s)] = True
    return ids, attention, mask


def _right_align_teacher(items: Sequence[TopK | torch.Tensor]) -> TopK | torch.Tensor:
    """Per-example ``[R_i, ·]`` teacher logits, right-aligned into ``[B, R, ·]`` (as align_response)."""
    width = max(t.shape[0] for t in items)
    if isinstance(items[0], TopK):
        k = max(t.k for t in items)
        values = torch.zeros(len(items), width, k, dtype=items[0].values.dtype)
        indices = torch.zeros(len(items), width, k, dtype=torch.long)
        for row, t in enumerate(items):
            values[row, width - t.shape[0] :, : t.k] = t.values
            values[row, width - t.shape[0] :, t.k :] = float("-inf")
            indices[row, width - t.shape[0] :, : t.k] = t.indices
        return TopK(values, indices)
    out = torch.zeros(len(items), width, items[0].shape[-1], dtype=items[0].dtype)
    for row, t in enumerate(items):
        out[row, width - t.shape[0] :] = t
    return out


@dataclass
class KDBatch:
    ids: list[str]
    channels: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # name -> (ids, attention, response mask)
    features: list[torch.Tensor]
    teacher: TopK | torch.Tensor | None
    teacher_inputs: tuple[list[list[int]], list[list[int]]]
    audio: list[Any] = field(default_factory=list)  # clips for the on-the-fly encoder

    @property
    def n_tokens(self) -> int:
        return int(next(iter(self.channels.values()))[2].sum())


def collate_kd(items: Sequence[KDItem], pad_id: int, channels: Sequence[str]) -> KDBatch:
    responses = [i.response_ids for i in items]
    built: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    if "tt" in channels:
        built["tt"] = _stack_rows([i.tt_prompt for i in items], responses, pad_id)
    if "st" in channels:
        built["st"] = _stack_rows([i.st_prompt for i in items], responses, pad_id)
    on_the_fly = "st" in channels and items[0].features is None
    features = [i.features for i in items] if "st" in channels and not on_the_fly else []
    audio = [i.audio for i in items] if on_the_fly else []
    teacher = _right_align_teacher([i.teacher for i in items]) if items[0].teacher is not None else None
    teacher_inputs = ([i.teacher_prompt for i in items], responses)
    return KDBatch([i.id for i in items], built, features, teacher, teacher_inputs, audio)


# ---------------------------------------------------------------------------------------------- the loss


class KDLoss(torch.nn.Module):
    """``Σ_channel weight·(CE_sum + λ·τ²·D_sum)`` over a batch's response tokens (sums; the loop divides
    by the token count). Returns ``(loss_sum, parts)`` with each channel's ``*_ce`` and ``*_kd`` sums."""

    def __init__(
        self,
        model: Any,
        config: KDConfig,
        shared_size: int,
        teacher: Any = None,
        pad_id: int = 0,
        feature_extractor: Any = None,
    ):
        super().__init__()
        self.model = model
        self.config, self.shared_size, self.pad_id = config, shared_size, pad_id
        self._teacher = [teacher]  # not a submodule: never trained, never wrapped
        self.feature_extractor = feature_extractor  # for clips encoded on the fly

    def audio_features(self, batch: KDBatch) -> list[torch.Tensor]:
        if batch.features or not batch.audio:
            return batch.features
        from xkd_eval.models.encoder import audio_tower, encode_mels, mel_features, unwrap

        if self.feature_extractor is None:
            raise XkdError("clips to encode on the fly but no feature extractor")
        mels, frames = mel_features(self.feature_extractor, batch.audio)
        return encode_mels(audio_tower(unwrap(self.model)), mels, frames, window=self.config.feature_window)

    def teacher_logits(self, batch: KDBatch) -> TopK | torch.Tensor:
        if batch.teacher is not None:
            return batch.teacher
        from xkd_eval.distill.teacher_cache import teacher_response_logits

        teacher = self._teacher[0]
        if teacher is None:
            raise XkdError("no cached teacher logits in the batch and no resident teacher")
        with torch.no_grad():
            per_row = teacher_response_logits(teacher, *batch.teacher_inputs, self.pad_id)
        per_row = [r[..., : self.shared_size].float() for r in per_row]
        if self.config.top_k is not None:
            per_row = [TopK.from_logits(r, min(self.config.top_k, r.shape[-1])) for r in per_row]
        return _right_align_teacher(per_row)

    def channel(self, name: str, batch: KDBatch, teacher: TopK | torch.Tensor):
        """The student's logits over one channel's response tokens, their labels and the teacher's logits
        there, flattened to the counted tokens: ``([N, V], [N], [N, V'] or TopK)``."""
        from xkd_eval.models.encoder import build_inputs_embeds, unwrap

        base = unwrap(self.model)
        device = base.lm_head.weight.device  # batches are collated on the CPU
        ids, attention, resp = (t.to(device) for t in batch.channels[name])
        # T→T is text only: the audio tower and the projector are never touched
        if name == "st":
            embeds = build_inputs_embeds(base, ids, self.audio_features(batch))
        else:
            embeds = base.get_input_embeddings()(ids)
        hidden = base.model.language_model(
            inputs_embeds=embeds, attention_mask=attention, use_cache=False
        ).last_hidden_state
        # the hidden states that predict each response token, right-aligned like the teacher's cache
        h, _, mask = align_response(hidden, resp, hidden[..., :1], resp)
        logits = base.lm_head(h[mask]).float()
        labels = response_labels(ids, resp)[mask]
        t = teacher[mask.to(teacher.values.device if isinstance(teacher, TopK) else teacher.device)]
        if isinstance(t, TopK):
            t = TopK(t.values.to(logits.device).float(), t.indices.to(logits.device))
        else:
            t = t.to(logits.device).float()
        return logits, labels, t

    def forward(self, batch: KDBatch):
        teacher = self.teacher_logits(batch)
        weighted, parts = {}, {}
        for name, weight in self.config.channels.items():
            logits, labels, t = self.channel(name, batch, teacher)
            loss, terms = channel_loss(
                logits, labels, t,
                lam=self.config.lam, temperature=self.config.temperature, kind=self.config.divergence,
                beta=self.config.beta, shared_size=self.shared_size, reduction="sum",
            )  # fmt: skip
            weighted[name] = (loss, weight)
            parts[f"{name}_ce"], parts[f"{name}_kd"] = terms["ce"], terms["kd"]
        total, _ = combined_loss(weighted)
        return total, parts


def validation_losses(loss: KDLoss, items: Sequence[KDItem], batch_size: int, pad_id: int) -> dict[str, float]:
    """Held-out per-token means: each channel's ce, kd and loss (= ce + λ·kd), and the weighted total."""
    sums: dict[str, float] = {}
    n = 0
    channels = list(loss.config.channels)
    for start in range(0, len(items), batch_size):
        batch = collate_kd(items[start : start + batch_size], pad_id, channels)
        total, parts = loss(batch)
        n += batch.n_tokens
        for key, value in {**parts, "loss": total}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    out = {k: v / max(n, 1) for k, v in sums.items()}
    for name in channels:
        out[f"{name}_loss"] = out[f"{name}_ce"] + loss.config.lam * out[f"{name}_kd"]
    return out


# ---------------------------------------------------------------------------------------------- models


def _local_folder(spec: str) -> Path | None:
    from xkd_eval.models import named_model_folder

    named = named_model_folder(spec)
    if named is not None:
        return named
    head, sep, rest = spec.partition(":")
    for candidate in (rest if sep else None, spec):
        if candidate and Path(candidate).expanduser().is_dir():
            return Path(candidate).expanduser()
    return None


def model_source(spec: str) -> str:
    """What ``from_pretrained`` reads for a model spec: a local folder (named models included) or the hub
    id of ``ADAPTER:ID`` / a bare id."""
    folder = _local_folder(spec)
    if folder is not None:
        return str(folder)
    from xkd_eval.models import resolve_adapter

    adapter, model_id = resolve_adapter(spec)
    if adapter == "named":
        raise XkdError(f"model {spec!r} has no folder that distillation can load; give a folder or a hub id")
    return model_id


def student_family(spec: str) -> tuple[str, Any]:
    """(evaluation adapter name, its class) of a student spec, read from its config alone; other model
    types are refused here, before any weights load."""
    from transformers import AutoConfig

    from xkd_eval.models import MODEL_TYPES, adapter_class

    config = AutoConfig.from_pretrained(model_source(spec))
    adapter = MODEL_TYPES.get(config.model_type)
    if adapter not in STUDENT_ADAPTERS:
        raise XkdError(
            f"student {spec!r} is a {config.model_type} model; the trainer supports Qwen2-Audio-style students "
            "(audio tower + projector + causal LLM, like the organism) and Qwen2.5-Omni"
        )
    return adapter, adapter_class(adapter)


def _text_vocab_size(config: Any) -> int:
    config = getattr(config, "thinker_config", config)  # a whole Omni checkpoint: its thinker reads
    return int(getattr(config, "text_config", config).vocab_size)


def load_tokenizers(teacher: str, student: str) -> tuple[Any, Any, int]:
    """(teacher tokenizer, student processor, size of the student's output vocabulary), no weights loaded."""
    from transformers import AutoConfig, AutoTokenizer

    t_tok = AutoTokenizer.from_pretrained(model_source(teacher))
    _, family = student_family(student)
    source = model_source(student)
    processor = family.load_processor(source)
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "feature_extractor", None) is None:
        raise XkdError(f"student {student!r} has no speech processor (tokenizer + feature extractor)")
    return t_tok, processor, _text_vocab_size(AutoConfig.from_pretrained(source))


def special_tokens(*tokenizers: Any) -> set[str]:
    """Every tokenizer's added and special tokens (chat markers, modality placeholders)."""
    found: set[str] = set()
    for tok in tokenizers:
        found |= set(getattr(tok, "all_special_tokens", ()) or ())
        found |= set((tok.get_added_vocab() if hasattr(tok, "get_added_vocab") else {}).keys())
    return found


def process_state() -> Any:
    """accelerate's state of this process (rank, world size, device). On a machine without CUDA it must be
    made with ``cpu=True``: otherwise accelerate takes a ``torchrun`` launch for a single process, and every
    rank trains alone on all of the data (and writes the checkpoints) instead of sharing each batch."""
    import accelerate

    return accelerate.PartialState(cpu=not torch.cuda.is_available())


def compute_device() -> torch.device:
    """This process's accelerator (its own GPU under data parallelism), else the CPU."""
    return process_state().device


def load_teacher_model(spec: str) -> Any:
    """The frozen teacher on this process's device: bfloat16 on a GPU that has it (it only infers), else float32."""
    from transformers import AutoModelForCausalLM

    device = compute_device()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(model_source(spec), dtype=torch.bfloat16 if bf16 else torch.float32)
    return model.to(device).eval()


def load_student_model(spec: str) -> Any:
    """The student as its evaluation adapter loads it (an Omni checkpoint: its thinker), float32 master weights,
    on this process's device (so the audio encoder fills the feature cache there too)."""
    _, family = student_family(spec)
    return family.load_weights(model_source(spec), revision=None, device=str(compute_device()), dtype="float32").eval()


def _resolve_precision(value: str) -> str:
    """``auto``: bf16 autocast where the hardware computes bf16 (a GPU that has it; a CPU with AVX512-BF16,
    AMX or Arm's BF16), else float32: emulated bf16 on a CPU costs far more than it saves."""
    from xkd_eval.distill.train import cpu_has_native_bf16

    if value != "auto":
        return value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def _run_config(config: KDConfig, n_train: int, world: int = 1) -> KDConfig:
    """max_steps from epochs, warmup below max_steps, precision resolved."""
    steps = config.max_steps
    if steps is None:
        per_epoch = max(1, n_train // min(config.batch_size, n_train))
        steps = max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))
    return config.replace(
        max_steps=steps,
        warmup_steps=min(config.warmup_steps, steps - 1),
        mixed_precision=_resolve_precision(config.mixed_precision),
    )


def weights_fingerprint(model: Any) -> str:
    """A cheap content hash of every parameter (name, shape, dtype, its first 1024 values and its sum): a
    rebuilt adapter, merged into the LLM, changes it; hashing all of a 7B model's bytes would take a while."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
            digest.update(flat[:1024].float().cpu().numpy().tobytes())
            digest.update(flat.float().sum().cpu().numpy().tobytes())
    return digest.hexdigest()


def data_identity(items: Sequence[KDItem], heard: Sequence[str], teacher: str, student: str) -> str:
    """What a run's checkpoints were trained on: every example's tokens (prompts, response), the digest of its
    clip's samples, and the teacher's and student's weights. Resuming onto anything else is refused."""
    digest = hashlib.sha256(json.dumps([teacher, student]).encode())
    for item in items:
        tokens = [item.id, item.teacher_prompt, item.tt_prompt, item.st_prompt, item.response_ids]
        digest.update(json.dumps(tokens).encode())
    for clip in heard:
        digest.update(clip.encode())
    return digest.hexdigest()


def _record_of_finished_run(out_dir: Path, run: KDConfig, result: Any) -> dict[str, Any] | None:
    """The training.json of the run that trained this folder's weights, when this call resumed at its last
    step and trained nothing: its figures (wall time, the targets and caches it filled) stay the record, and
    its exported weights stay as they are."""
    from xkd_eval.distill.train import config_changes
    from xkd_eval.models.adapter_weights import TRAINING_FILE

    record_file = out_dir / TRAINING_FILE
    if result.resumed_from is None or result.resumed_from != result.steps or not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    exported = (out_dir / "adapter").is_dir() and (not run.save_merged or (out_dir / "student").is_dir())
    then = record.get("config") or {}
    same = bool(then) and not config_changes(then, run.to_dict())
    if record.get("steps") != result.steps or not same or not exported:
        return None
    return record


# ---------------------------------------------------------------------------------------------- entry point


@dataclass
class DistillRun:
    """What the stages of ``distill`` hand on to each other, in the order they fill it."""

    config: KDConfig
    teacher: str
    student: str
    out_dir: Path
    cache_root: Path
    say: Callable[[str], None]
    progress: bool
    figures: dict[str, Any]
    # data
    t_tok: Any = None
    processor: Any = None
    family: Any = None
    adapter: str = ""
    shared: int = 0
    t_model: Any = None
    identity: str = ""
    train_ex: list[Any] = field(default_factory=list)
    eval_ex: list[Any] = field(default_factory=list)
    train_items: list[KDItem] = field(default_factory=list)
    eval_items: list[KDItem] = field(default_factory=list)
    t_pad: int = 0
    # teacher cache
    resident: Any = None
    # features
    s_model: Any = None
    heard: list[str] = field(default_factory=list)

    @property
    def items(self) -> list[KDItem]:
        return self.train_items + self.eval_items


def distill(
    teacher: str | None,
    student: str | None,
    data: str | None,
    out_dir: str | os.PathLike,
    config: KDConfig | str | os.PathLike | dict[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
    cache_root: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Distil ``teacher`` (text LLM spec) into ``student`` (speech LLM spec) on ``data`` (JSONL or hub).

    Writes ``out_dir/adapter`` (export_adapter), ``out_dir/student`` (merged, when ``save_merged``),
    ``out_dir/training.json`` (config, steps, wall time, per-channel curves, validation losses) and
    checkpoints; returns the figures of training.json. Evaluate the result with the model spec
    ``qwen2-audio:<out_dir>/student``. The stages, in order: data (tokenizers, the vocabulary check, the
    examples and the teacher's answers), teacher cache, features (the spoken side), train, export."""
    from xkd_eval.distill.train import refuse_to_overwrite

    config = load_kd_config(config)
    teacher, student, data = teacher or config.teacher, student or config.student, data or config.data
    if not (teacher and student and data):
        raise XkdError("distill needs a teacher, a student and data (arguments or config fields)")
    out_dir = Path(out_dir).expanduser()
    refuse_to_overwrite(out_dir, resume)
    if cache_root is None:
        from xkd_eval.io import cache_root as default_cache

        cache_root = default_cache() / "kd"
    wall = time.perf_counter()
    run = DistillRun(
        config, teacher, student, out_dir, Path(cache_root).expanduser(), log or (lambda message: None), progress,
        {"teacher": teacher, "student": student, "data": str(data)},
    )  # fmt: skip
    data_stage(run, data)
    teacher_cache_stage(run)
    features_stage(run)
    model, result, n_trainable, schedule = train_stage(run, resume)
    return export_stage(run, model, result, n_trainable, schedule, wall)


def data_stage(run: DistillRun, data: str) -> None:
    """Tokenizers and the vocabulary check first (refused before any model loads or work is spent), then the
    examples, the teacher's greedy answers where they are the targets, the split, and the text side of
    every example: the response ids, the T→T prompt and the teacher's prompt."""
    from xkd_eval.distill.kd_data import load_kd_examples, split_examples, teacher_prompt
    from xkd_eval.distill.kd_data import teacher_targets as make_targets
    from xkd_eval.distill.teacher_cache import teacher_identity

    config, say = run.config, run.say
    run.t_tok, run.processor, student_vocab_size = load_tokenizers(run.teacher, run.student)
    run.adapter, run.family = student_family(run.student)
    s_tok = run.processor.tokenizer
    shared = check_vocab_compatible(
        s_tok.get_vocab(), run.t_tok.get_vocab(), special_tokens=special_tokens(s_tok, run.t_tok)
    )
    shared = min(shared, student_vocab_size)
    # bad data: refused before any model loads
    examples = load_kd_examples(data, limit=config.data_limit, seed=config.seed, log=say, progress=run.progress)
    run.out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good: a refusal leaves nothing
    run.t_model = load_teacher_model(run.teacher)
    run.shared = min(shared, run.t_model.get_output_embeddings().weight.shape[0])
    run.figures["shared_vocab"] = run.shared
    say(f"teacher {run.teacher}, student {run.student}: vocabularies compatible ({run.shared} shared ids)")

    run.identity = teacher_identity(run.t_model)
    if config.targets != "data":
        started = time.perf_counter()
        given = config.targets == "data_else_teacher"
        ask = [e for e in examples if not (given and e.answered)]
        answered = make_targets(
            ask, run.t_model, run.t_tok, run.identity, run.cache_root / "targets",
            max_new_tokens=config.max_new_tokens, batch_size=config.teacher_batch_size,
            context=config.teacher_context, log=say, progress=run.progress,
        )  # fmt: skip
        by_id = {e.id: e for e in answered}
        examples = [by_id.get(e.id, e) for e in examples]
        run.figures["targets_seconds"] = round(time.perf_counter() - started, 1)
        run.figures["teacher_targets"] = len(answered)
    missing = [e.id for e in examples if not e.answered]
    if missing:
        raise XkdError(
            f"{len(missing)} examples have no response (e.g. {missing[:3]}); use targets: teacher or data_else_teacher"
        )
    run.train_ex, run.eval_ex = split_examples(examples, config.eval_fraction, config.seed)
    run.figures |= {"examples_train": len(run.train_ex), "examples_eval": len(run.eval_ex)}

    eos = s_tok.eos_token or ""
    tt_cache: dict[str, list[int]] = {}

    def tokenize_text(example) -> KDItem:
        response = s_tok(example.response + eos, add_special_tokens=False)["input_ids"][: config.max_response_tokens]
        tt_text = run.processor.apply_chat_template(
            run.family.conversation(example.instruction), tokenize=False, add_generation_prompt=True
        )
        tt = tt_cache.setdefault(tt_text, s_tok(tt_text)["input_ids"])
        tp = run.t_tok(teacher_prompt(run.t_tok, example.instruction, config.teacher_context))["input_ids"]
        return KDItem(example.id, list(response), list(tt), None, None, list(tp))

    run.train_items = [tokenize_text(e) for e in run.train_ex]
    run.eval_items = [tokenize_text(e) for e in run.eval_ex]
    run.t_pad = run.t_tok.pad_token_id if run.t_tok.pad_token_id is not None else run.t_tok.eos_token_id


def teacher_cache_stage(run: DistillRun) -> None:
    """The teacher's logits over every response, computed once into the disk cache (top-k or the full
    vocabulary), then the teacher unloaded; ``teacher_mode: on_the_fly`` keeps it resident instead."""
    from xkd_eval.distill.teacher_cache import TeacherCache, fill_teacher_cache, fill_teacher_cache_vllm
    from xkd_eval.models.encoder import progress_bar

    config = run.config
    if config.teacher_mode != "cached":
        run.resident = run.t_model
        return
    started = time.perf_counter()
    everything = run.items
    prompts, responses = [i.teacher_prompt for i in everything], [i.response_ids for i in everything]
    if config.teacher_backend == "vllm":
        # an engine's log-probabilities, not our logits: their own entries, never mixed with the HF teacher's
        cache = TeacherCache(run.cache_root / "teacher", f"{run.identity}+vllm", config.top_k, run.shared)
        run.t_model = None  # the engine takes the memory
        gc.collect()
        with progress_bar(len(everything), "teacher top-k (vLLM)", run.progress) as advance:
            logits = fill_teacher_cache_vllm(cache, run.teacher, prompts, responses, progress=advance)
    else:
        cache = TeacherCache(run.cache_root / "teacher", run.identity, config.top_k, run.shared)
        with progress_bar(len(everything), "teacher logits", run.progress) as advance:
            logits = fill_teacher_cache(
                cache, run.t_model, prompts, responses, pad_id=run.t_pad, batch_size=config.teacher_batch_size,
                progress=advance,
            )  # fmt: skip
    for item, value in zip(everything, logits, strict=True):
        item.teacher = value
    run.figures["teacher_cache"] = {**cache.stats, "seconds": round(time.perf_counter() - started, 1)}
    run.t_model = None
    gc.collect()  # unloaded before the student loads: the two are never resident together
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # and its GPU memory goes back to the student


def features_stage(run: DistillRun) -> None:
    """The student loads; for the S→T channel, each example's clip (synthesised where it has none), its
    frozen encoder's features (cached on disk; ``feature_mode: on_the_fly`` encodes them every step) and
    its spoken prompt with the audio expanded to the clip's token count."""
    from xkd_eval.distill.examples import load_example_audio
    from xkd_eval.distill.kd_data import spoken_examples
    from xkd_eval.models.encoder import (
        CacheStats,
        FeatureCache,
        audio_token_id,
        compute_features,
        expand_audio_tokens,
        mel_features,
        num_audio_tokens,
    )

    config, processor = run.config, run.processor
    run.s_model = load_student_model(run.student)
    if "st" not in config.channels:
        return
    started = time.perf_counter()
    spoken = spoken_examples(run.train_ex + run.eval_ex, config.voices, progress=run.progress)
    audios = load_example_audio(spoken)  # duck-typed: .audio and .id
    run.heard = [samples_digest(a) for a in audios]
    if config.feature_mode == "cached":
        stats = CacheStats()
        feats = compute_features(
            run.s_model, processor.feature_extractor, audios,
            FeatureCache.for_model(run.s_model, processor.feature_extractor),
            batch_size=config.encoder_batch_size, window=config.feature_window, progress=run.progress, stats=stats,
        )  # fmt: skip
        counts = [f.shape[0] for f in feats]
        run.figures |= {"features_computed": stats.computed, "features_reused": stats.reused}
    else:
        feats = [None] * len(audios)
        counts = [num_audio_tokens(int(mel_features(processor.feature_extractor, [a])[1][0])) for a in audios]
    run.figures["speech_seconds"] = round(time.perf_counter() - started, 1)
    audio_token = getattr(processor, "audio_token", "<|AUDIO|>")
    audio_id = audio_token_id(run.s_model)
    st_prompts: dict[str, str] = {}
    for item, example, audio, feat, n_audio in zip(run.items, spoken, audios, feats, counts, strict=True):
        instruction = example.heard_instruction
        if instruction not in st_prompts:
            st_prompts[instruction] = processor.apply_chat_template(
                run.family.conversation(instruction, "clip.wav"), tokenize=False, add_generation_prompt=True
            )
        st_text = expand_audio_tokens(st_prompts[instruction], [n_audio], audio_token)
        item.st_prompt = processor.tokenizer(st_text)["input_ids"]
        if sum(1 for t in item.st_prompt if t == audio_id) != n_audio:
            raise XkdError(f"example {item.id}: audio tokens and features disagree")
        item.features = feat
        item.audio = audio if feat is None else None


def train_stage(run: DistillRun, resume: bool):
    """The trainable parts set up, the KD loss built, and the shared training loop run (checkpoints, resume,
    the schedule fitted to a time budget). Returns the model, the loop's result, the trainable parameter
    count and the schedule's config."""
    from xkd_eval.distill.train import train

    s_tok = run.processor.tokenizer
    student_identity = weights_fingerprint(run.s_model)
    channels = list(run.config.channels)
    schedule = _run_config(run.config, len(run.train_items), process_state().num_processes)
    model = setup_trainable(run.s_model, schedule)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pad_id = s_tok.pad_token_id if s_tok.pad_token_id is not None else 0
    loss = KDLoss(
        model, schedule, run.shared, run.resident, run.t_pad, feature_extractor=run.processor.feature_extractor
    )
    run.say(
        f"training {schedule.trainable} ({n_trainable:,} parameters), channels {schedule.channels}, "
        f"{schedule.max_steps} steps"
    )
    eval_items = run.eval_items
    result = train(
        model, run.train_items, schedule, run.out_dir,
        pad_id=pad_id, resume=resume, progress=run.progress, log=run.say, loss_module=loss,
        collate_fn=lambda items: collate_kd(items, pad_id, channels),
        validate=(lambda module: validation_losses(module, eval_items, schedule.eval_batch_size, pad_id))
        if eval_items
        else None,
        eval_every=schedule.eval_every,
        lengths=[i.length for i in run.train_items],
        data_identity=data_identity(run.items, run.heard, run.identity, student_identity),
    )  # fmt: skip
    model.eval()
    return model, result, n_trainable, schedule


def export_stage(run: DistillRun, model: Any, result: Any, n_trainable: int, schedule: KDConfig, wall: float):
    """The adapter (and the merged student) written, and ``training.json`` with the figures and curves."""
    from xkd_eval.io import atomic_write_text
    from xkd_eval.models.adapter_weights import TRAINING_FILE, export_adapter

    out_dir, figures, channels = run.out_dir, run.figures, list(schedule.channels)
    main = process_state().is_main_process
    kept = _record_of_finished_run(out_dir, schedule, result)
    if kept is not None:
        run.say(f"the training in {out_dir} was already complete ({result.steps} steps): keeping its record")
        return kept
    written = export_adapter(model, schedule, out_dir / "adapter", base_name=run.student) if main else []
    merged = None
    if schedule.save_merged and main:
        merged_model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged = out_dir / "student"
        merged_model.save_pretrained(str(merged))
        run.processor.save_pretrained(str(merged))
    train_log = [r for r in result.log if "loss" in r]
    val_log = [r for r in result.log if any(k.startswith("val_") for k in r)]
    curves = {
        key: [[r["step"], round(r[key], 5)] for r in train_log if key in r]
        for key in ["loss"] + [f"{c}_{p}" for c in channels for p in ("ce", "kd")]
    }
    figures |= {
        "steps": result.steps,
        "stopped": result.stopped,
        "resumed_from": result.resumed_from,
        "train_seconds": round(result.seconds, 2),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "trainable_parameters": n_trainable,
        "tokens_trained": sum(r.get("tokens", 0) for r in train_log),
        "curves": curves,
        "validation": val_log,
        "loss_first": train_log[0]["loss"] if train_log else None,
        "loss_last": train_log[-1]["loss"] if train_log else None,
        "adapter_dir": str(out_dir / "adapter"),
        "adapter_files": {p.name: p.stat().st_size for p in written},
        "merged_student": str(merged) if merged else None,
        "model_spec": f"{run.adapter}:{merged}" if merged else None,
        "config": schedule.to_dict(),
    }
    if main:
        atomic_write_text(out_dir / TRAINING_FILE, json.dumps(figures, indent=1) + "\n")
    # the other ranks go on to measure the merged student that the main process has just written
    process_state().wait_for_everyone()
    losses = " -> ".join("?" if v is None else f"{v:.3f}" for v in (figures["loss_first"], figures["loss_last"]))
    run.say(f"distilled in {figures['train_seconds']:.0f} s ({result.steps} steps); loss {losses}")
    return figures


__all__ = ["DistillRun", "KDBatch", "KDItem", "KDLoss", "collate_kd", "distill"]
