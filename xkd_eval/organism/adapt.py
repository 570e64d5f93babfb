"""The organism's speech adaptation: projector + LoRA on the LLM, cross-entropy on spoken examples.

This is how the committed ``organism`` was made from the assembled, untrained speech LLM (Whisper-base
encoder + projector + SmolLM2): generated spoken examples (``xkd_eval.organism.adapt_data``), synthesised
by the project's voices, the encoder's features cached, the projector optionally started by a closed-form
least-squares fit (``xkd_eval.organism.projector_init``), then the training loop that the distillation
trainer also uses (``xkd_eval.distill.train``), with the response's cross-entropy as its loss.
``distill/organism-hear.yaml`` is the recipe of the committed adapter (``xkd-eval adapt-organism``);
``distill/organism-adapt.yaml`` that of the organism's first, naive adaptation, which hardly heard.
"""

from __future__ import annotations

import json
import os
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xkd_eval.distill.config import TrainConfig
from xkd_eval.distill.examples import SpokenExample
from xkd_eval.distill.train import TrainExample, refuse_to_overwrite, setup_trainable, tokenize_example, train
from xkd_eval.errors import XkdError
from xkd_eval.io import atomic_write_text
from xkd_eval.models.adapter_weights import PROJECTOR_FILE, TRAINING_FILE, export_adapter, portable_model_name
from xkd_eval.models.encoder import audio_token_id

PROJECTOR_INITS = ("assembled", "least_squares")


@dataclass
class AdaptConfig(TrainConfig):
    """How the speech LLM is adapted: the training fields, then the base model and the generated data."""

    kind = "adaptation config"
    scopes: typing.ClassVar[tuple[str, ...]] = ("projector", "lora", "projector+lora")

    # --- training fields whose default differs from TrainConfig's
    lora_dropout: float = 0.05
    max_steps: int = 400
    batch_size: int = 8
    learning_rate: float = 5e-4
    warmup_steps: int = 20
    mixed_precision: str = "no"  # "no" (float32) or "bf16" (autocast; about 3x faster on CPUs with AVX512-BF16)

    # --- base model
    base_model: str = "organism"  # "organism": the assembled Whisper-base + SmolLM2 speech LLM; or a folder
    base_seed: int = 0  # seed of the organism's random projector initialisation (speech_llm_base_dir)
    # --- data
    n_examples: int = 1200  # generated spoken examples (xkd_eval.organism.adapt_data); 0 = user data only
    data_seed: int = 0  # seed of the example generator
    data_mix: dict[str, float] | None = None  # family -> weight; None = adapt_data.DEFAULT_MIX
    data_jsonl: str | None = None  # extra user examples (id, instruction, spoken_text, response, audio)
    # "assembled": start from the base's projector as it is; "least_squares": first fit it, in closed form, to
    # map each word's encoder frames onto the LLM's embedding of the word, on the transcription examples
    # (response = spoken text); xkd_eval.organism.projector_init
    projector_init: str = "assembled"
    projector_init_ridge: float = 1.0  # ridge penalty of that fit
    # at most this many transcription examples (the first, in the data's shuffled order) feed the fit: its
    # frame matrices grow with the clips, and a few thousand determine a 512 -> 576 map well (None = all)
    projector_init_clips: int | None = None
    # an adapter folder this adaptation starts from (its projector and LoRA weights, same LoRA shape): a later
    # stage that continues an earlier one's weights on its own schedule and data; None = start afresh
    init_adapter: str | None = None
    num_threads: int | None = None  # CPU threads for torch (None = its default); 1 is fastest on a busy machine

    def problems(self) -> list[str]:
        from xkd_eval.organism.adapt_data import FAMILIES

        problems = super().problems()
        checks = [
            (self.projector_init in PROJECTOR_INITS, f"projector_init must be one of {', '.join(PROJECTOR_INITS)}"),
            (self.n_examples >= 0, "n_examples must be >= 0"),
            (self.n_examples > 0 or bool(self.data_jsonl), "n_examples is 0 and no data_jsonl is given: no data"),
            (self.max_steps is not None, "max_steps must be set"),
            (self.max_steps is None or self.warmup_steps < self.max_steps, "warmup_steps must be in [0, max_steps)"),
            (self.num_threads is None or self.num_threads >= 1, "num_threads must be >= 1 (or null)"),
            (self.projector_init_clips is None or self.projector_init_clips >= 1, "projector_init_clips must be >= 1"),
            (
                not (self.init_adapter and self.projector_init != "assembled"),
                "init_adapter starts from an adapter's projector: projector_init must be 'assembled'",
            ),
        ]
        if self.data_mix is not None:
            bad = sorted(set(self.data_mix) - set(FAMILIES))
            checks += [
                (not bad, f"data_mix names unknown families {bad} (known: {', '.join(FAMILIES)})"),
                (all(w >= 0 for w in self.data_mix.values()), "data_mix weights must be >= 0"),
            ]
        return problems + [message for ok, message in checks if not ok]


def load_config(source: str | os.PathLike | dict[str, Any] | AdaptConfig) -> AdaptConfig:
    """An ``AdaptConfig`` from a YAML path, a dict or a config."""
    return AdaptConfig.load(source)


def _load_speech_llm(folder: Path):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(str(folder))
    model = Qwen2AudioForConditionalGeneration.from_pretrained(str(folder), dtype="float32")
    return model, processor


def prepare_data(
    config: AdaptConfig,
    model: Any,
    processor: Any,
    *,
    feature_root: str | os.PathLike | None = None,
    tts_cache: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[list[SpokenExample], list[TrainExample], dict[str, Any]]:
    """Generate (and/or read) the examples, synthesise their audio, fill the feature cache, tokenise."""
    from xkd_eval.distill.examples import load_example_audio, read_examples_jsonl, synthesize_examples
    from xkd_eval.models.encoder import CacheStats, FeatureCache, compute_features
    from xkd_eval.organism.adapt_data import generate_examples

    say = log or (lambda message: None)
    figures: dict[str, Any] = {}
    started = time.perf_counter()
    examples: list[SpokenExample] = []
    if config.n_examples:
        examples += generate_examples(config.n_examples, seed=config.data_seed, mix=config.data_mix)
    if config.data_jsonl:
        examples += read_examples_jsonl(config.data_jsonl)
    examples = synthesize_examples(examples, config.voices, tts_cache, progress=progress)
    figures["tts_seconds"] = round(time.perf_counter() - started, 1)
    audios = load_example_audio(examples)
    figures["audio_seconds"] = round(sum(a.size for a in audios) / 16_000, 1)
    say(f"{len(examples)} examples, {figures['audio_seconds']} s of audio ({figures['tts_seconds']} s TTS)")
    cache = FeatureCache.for_model(model, processor.feature_extractor, feature_root)
    stats = CacheStats()
    features = compute_features(
        model,
        processor.feature_extractor,
        audios,
        cache,
        batch_size=config.encoder_batch_size,
        window=config.feature_window,
        progress=progress,
        stats=stats,
    )
    figures |= {
        "features_computed": stats.computed,
        "features_reused": stats.reused,
        "encoder_seconds": round(stats.encoder_seconds, 1),
    }
    say(f"encoder features: {stats.computed} computed ({stats.encoder_seconds:.0f} s), {stats.reused} cached")
    prepared = [tokenize_example(processor, e, f) for e, f in zip(examples, features, strict=True)]
    audio_id = audio_token_id(model)
    for example, item in zip(prepared, features, strict=True):
        if sum(1 for t in example.input_ids if t == audio_id) != item.shape[0]:
            raise XkdError(f"example {example.id}: audio tokens and features disagree")
    figures["tokens_mean"] = round(float(np.mean([len(e.input_ids) for e in prepared])), 1)
    return examples, prepared, figures


def _least_squares_start(model, processor, examples, prepared, config: AdaptConfig, say) -> dict[str, Any]:
    from xkd_eval.distill.examples import load_example_audio
    from xkd_eval.organism.projector_init import init_projector_least_squares

    chosen = [(e, p) for e, p in zip(examples, prepared, strict=True) if e.response.strip() == e.spoken_text.strip()]
    chosen = chosen[: config.projector_init_clips]
    if not chosen:
        raise XkdError("projector_init least_squares needs transcription examples (response = spoken text)")
    fit = init_projector_least_squares(
        model,
        processor.tokenizer,
        [p.features for _, p in chosen],
        # read again (a second or two) rather than keep every clip of prepare_data in memory through training
        load_example_audio([e for e, _ in chosen]),
        [e.spoken_text for e, _ in chosen],
        ridge=config.projector_init_ridge,
    )
    say(
        f"projector fitted by least squares on {fit.clips} transcription clips ({fit.words} words): "
        f"{fit.train_word_accuracy:.0%} of the words' middle frames map nearest to one of the word's tokens"
    )
    return fit.record()


def adapt_organism(
    config_path: str | os.PathLike | dict[str, Any] | AdaptConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Adapt the embedded speech LLM (or ``base_model``) by the recipe; write the adapter weights and
    ``training.json`` into ``out_dir``; return the figures (steps, wall time, loss start/end ...)."""
    import torch

    from xkd_eval.distill.examples import examples_digest, write_examples_jsonl

    config = load_config(config_path)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    out_dir = Path(out_dir).expanduser()
    refuse_to_overwrite(out_dir, resume)
    if config.init_adapter and not (Path(config.init_adapter).expanduser() / PROJECTOR_FILE).is_file():
        raise XkdError(
            f"init_adapter {config.init_adapter} holds no adapter (no {PROJECTOR_FILE}): give the folder an "
            "earlier `xkd-eval adapt-organism --out` wrote"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda message: None)
    wall = time.perf_counter()
    if config.base_model == "organism":
        from xkd_eval.organism import speech_llm_base_dir

        base_dir = speech_llm_base_dir(config.base_seed)
    else:
        base_dir = Path(config.base_model).expanduser()
    say(f"base speech LLM: {base_dir}")
    model, processor = _load_speech_llm(base_dir)
    model.eval()
    examples, prepared, figures = prepare_data(config, model, processor, progress=progress, log=say)
    write_examples_jsonl(examples, out_dir / "data.jsonl")
    if config.projector_init == "least_squares":  # closed form and deterministic: refitted on resume too
        figures["projector_init"] = _least_squares_start(model, processor, examples, prepared, config, say)
    model = setup_trainable(model, config)
    if config.init_adapter:
        from xkd_eval.models.adapter_weights import files_hash, load_trainable_adapter

        load_trainable_adapter(model, config.init_adapter)
        init_dir = Path(config.init_adapter).expanduser()
        figures["init_adapter_sha256"] = files_hash(init_dir, [p.name for p in sorted(init_dir.glob("*.safetensors"))])
        say(f"starting from the adapter in {init_dir} ({figures['init_adapter_sha256'][:12]})")
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"trainable: {config.trainable}, {n_trainable:,} parameters")
    result = train(
        model,
        prepared,
        config,
        out_dir,
        pad_id=processor.tokenizer.pad_token_id,
        resume=resume,
        progress=progress,
        log=say,
    )
    model.eval()
    written = export_adapter(model, config, out_dir, base_name=config.base_model)
    losses = result.losses
    head = losses[: max(1, min(10, len(losses) // 10))]
    tail = losses[-max(1, min(10, len(losses) // 10)) :]
    figures |= {
        "base_model": portable_model_name(str(base_dir)),  # no folder of this machine in the record
        "examples": len(examples),
        "data_sha256": examples_digest(examples),
        "families": {t: sum(1 for e in examples if e.task == t) for t in sorted({e.task for e in examples})},
        "trainable_parameters": n_trainable,
        "steps": result.steps,
        "stopped": result.stopped,
        "resumed_from": result.resumed_from,
        "train_seconds": round(result.seconds, 1),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "loss_start": round(float(np.mean(head)), 4) if losses else None,
        "loss_end": round(float(np.mean(tail)), 4) if losses else None,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_curve": [[r["step"], round(r["loss"], 4)] for r in result.log if "loss" in r][
            :: max(1, len(losses) // 40)
        ],
        "adapter_files": {p.name: p.stat().st_size for p in written},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # the folder this run started from is this machine's: the record names it by its last component
        "config": config.to_dict()
        | ({"init_adapter": portable_model_name(config.init_adapter)} if config.init_adapter else {}),
    }
    atomic_write_text(out_dir / TRAINING_FILE, json.dumps(figures, indent=1) + "\n")
    say(
        f"adapted in {figures['train_seconds']} s of training ({result.steps} steps); loss "
        f"{figures['loss_start']} -> {figures['loss_end']}; weights in {out_dir}"
    )
    return figures
