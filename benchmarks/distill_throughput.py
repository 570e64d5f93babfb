"""Distillation throughput: training tokens/s and peak RSS of

(a) our cached path: teacher top-k logits from disk (filled by a separate process first, so the
    trainer never runs the teacher, and the teacher is unloaded before the student loads) and the frozen
    audio encoder's outputs from disk;
(b) the naive way, as a GKD-style trainer runs a speech student: the teacher resident and run every
    step, and the student's frozen audio encoder run on every step's clips as the model's own forward
    runs it (Qwen2-Audio's tower takes the processor's 30 s window, ``feature_window="full"``);
(b_trim) (b) with our trimmed encoder pass (the clip's own frames, ``feature_window="trim"``);
(b_teacher) only the teacher on the fly (encoder outputs cached): what the teacher cache alone saves;
(a_gc) (a) with gradient checkpointing: the LLM's layers recomputed in the backward pass, for memory;
(c) TRL's ``GKDTrainer`` on the T→T channel (teacher resident, lmbda=0: no on-policy generation), when
    ``trl`` imports (``pip install --target DIR trl`` and ``XKD_TRL_PATH=DIR`` keep it out of the venv).

``--pair organism`` (default) is the demo's real pair: organism-base (SmolLM2-135M-Instruct) teaching the
organism (Whisper-base encoder + SmolLM2), on 2–4 s clips; ``--pair tiny`` a random pair with a tiny
encoder (hidden 256, 4 layers) for a quick check. Same data, same steps, fp32, for every path. Each path
runs in its own subprocess (peak RSS = that process's ru_maxrss, glibc's hoarded free memory included;
peak live = the same in one more run with every large block handed back when freed, ``--no-memory``
skips those runs). "Training tokens" are response tokens
× channels; (a) and (b) train both channels; (a_tt) is (a) with T→T only, comparable with (c).
The last line printed is one JSON object.

    python benchmarks/distill_throughput.py [--pair organism|tiny] [--steps 8] [--batch-size 8] [--repeats 2]
        [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
WORDS = ["yes", "no", "answer", "question", "audio", "speech", "text", "option", "sentence", "mammal", "whale"]
MODES = ("cached", "on_the_fly", "on_the_fly_trim", "teacher_on_the_fly", "cached_gc", "cached_tt", "trl")
SIZE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)


def build(work: Path, n: int, pair: str) -> None:
    import soundfile as sf
    from conftest import tone

    if pair == "organism":
        from xkd_eval.organism import smollm2_hf_dir
        from xkd_eval.organism.trained import organism_dir

        (work / "teacher").symlink_to(smollm2_hf_dir())
        (work / "student").symlink_to(organism_dir())
    else:
        import torch
        from tiny_models import build_qwen2_audio, build_tokenizer, llama_config
        from transformers import LlamaForCausalLM

        tokenizer = build_tokenizer(work / "teacher")
        torch.manual_seed(1)
        config = llama_config(
            len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SIZE
        )
        LlamaForCausalLM(config).save_pretrained(work / "teacher")
        build_qwen2_audio(work / "student", seed=0, **SIZE)
    lines = []
    for i in range(n):
        seconds = 2.0 + 2.0 * (i % 5) / 4  # spoken queries of 2 to 4 s
        sf.write(work / f"clip{i}.wav", tone(seconds, freq=180.0 + 20 * i, seed=i), 16_000)
        instruction = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6)) + " question"
        response = " ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(24))
        lines.append({"id": f"b{i}", "instruction": instruction, "response": response, "audio": f"clip{i}.wav"})
    (work / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def kd_config(mode: str, steps: int, batch: int):
    from xkd_eval.distill.config import KDConfig

    return KDConfig(
        targets="data",
        top_k=64,
        trainable="projector+lora",
        lora_rank=8,
        lora_alpha=16,
        learning_rate=1e-4,
        batch_size=batch,
        max_steps=steps,
        eval_fraction=0.0,
        checkpoint_every=10_000,
        mixed_precision="no",
        teacher_mode="on_the_fly" if mode in ("on_the_fly", "on_the_fly_trim", "teacher_on_the_fly") else "cached",
        feature_mode="on_the_fly" if mode in ("on_the_fly", "on_the_fly_trim") else "cached",
        feature_window="full" if mode == "on_the_fly" else "trim",
        st_weight=0.0 if mode == "cached_tt" else 1.0,
        gradient_checkpointing=mode == "cached_gc",
    )


def child(mode: str, work: Path, steps: int, batch: int) -> dict:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    teacher, student, data = (str(work / "teacher"), str(work / "student"), str(work / "data.jsonl"))
    out = work / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)  # each repeat trains from scratch (a training refuses to overwrite)
    if mode == "trl":
        return trl_child(teacher, student, data, out, steps, batch)
    from xkd_eval.distill.kd import distill

    cfg = kd_config("cached" if mode == "prepare" else mode, 1 if mode == "prepare" else steps, batch)
    started = time.perf_counter()
    figures = distill(teacher, student, data, out, cfg, progress=False, log=None, cache_root=work / "cache")
    channels = 2 if cfg.st_weight > 0 else 1
    return {
        "tokens": figures["tokens_trained"] * channels,
        "train_seconds": figures["train_seconds"],
        "wall_seconds": round(time.perf_counter() - started, 2),
        "teacher_cache": figures.get("teacher_cache"),
    }


def trl_child(teacher: str, student: str, data: str, out: Path, steps: int, batch: int) -> dict:
    extra = os.environ.get("XKD_TRL_PATH")
    if extra:
        sys.path.insert(0, extra)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoProcessor, Qwen2AudioForConditionalGeneration

    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        from trl import GKDConfig, GKDTrainer

    rows = [json.loads(line) for line in Path(data).read_text().splitlines()]
    messages = [
        {"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}]}
        for r in rows
    ]
    processor = AutoProcessor.from_pretrained(student)
    tokenizer = processor.tokenizer
    model = Qwen2AudioForConditionalGeneration.from_pretrained(student)
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher)
    from peft import LoraConfig

    from xkd_eval.distill.train import lora_target_regex

    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=lora_target_regex(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    )
    args = GKDConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        lmbda=0.0,
        beta=0.0,
        temperature=2.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        bf16=False,
        max_length=512,
    )
    trainer = GKDTrainer(
        model=model,
        teacher_model=teacher_model,
        args=args,
        train_dataset=Dataset.from_list(messages),
        processing_class=tokenizer,
        peft_config=lora,
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # completion tokens trained: the assistant turn (response + end-of-turn) of each example drawn
    per_example = [
        len(tokenizer(r["response"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) for r in rows
    ]
    mean = sum(per_example) / len(per_example)
    return {"tokens": round(mean * batch * steps), "train_seconds": round(seconds, 2)}


# glibc keeps freed memory for reuse, so a process's peak RSS also counts whatever its allocator hoards (with
# PyTorch's varying shapes, about as much again as is live). A fixed mmap threshold hands every large
# block back at once: the peak RSS of such a run is the memory the path really holds at its peak. It
# slows allocation, so these runs give the memory figures only, never the speed.
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def spawn(mode: str, work: Path, steps: int, batch: int, env: dict[str, str] | None = None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--work",
        str(work),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pair", choices=("organism", "tiny"), default="organism")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one more run of each path for its live peak memory (glibc's mmap threshold fixed)",
    )
    parser.add_argument("--child")
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.child:
        figures = child(args.child, Path(args.work), args.steps, args.batch_size)
        figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(figures))
        return
    work = Path(tempfile.mkdtemp(prefix="xkd-kd-bench-"))
    build(work, args.examples, args.pair)
    results = {"prepare": spawn("prepare", work, args.steps, args.batch_size)}
    print("prepare", json.dumps(results["prepare"]), flush=True)
    # the modes interleaved, each ``repeats`` times; the fastest run of each counts (shared CPUs are noisy)
    for round_ in range(args.repeats):
        for mode in MODES:
            if round_ and "error" in results.get(mode, {}):
                continue
            got = spawn(mode, work, args.steps, args.batch_size)
            print(mode, json.dumps(got), flush=True)
            best = results.get(mode)
            if best is None or "error" in best or ("error" not in got and got["train_seconds"] < best["train_seconds"]):
                results[mode] = got

    live: dict[str, dict] = {}
    for mode in MODES if args.memory else ():
        if "error" not in results.get(mode, {}):
            live[mode] = spawn(mode, work, args.steps, args.batch_size, LIVE_MEMORY_ENV)
            print(f"{mode} (live memory)", json.dumps(live[mode]), flush=True)

    def rate(mode: str) -> float | None:
        r = results[mode]
        return round(r["tokens"] / r["train_seconds"], 1) if "tokens" in r and r["train_seconds"] else None

    def ratio(fast: str, slow: str) -> float | None:
        return round(rate(fast) / rate(slow), 2) if rate(fast) and rate(slow) else None

    summary: dict = {}
    for mode, label in (
        ("cached", "cached"),
        ("on_the_fly", "on_the_fly"),
        ("on_the_fly_trim", "on_the_fly_trimmed_encoder"),
        ("teacher_on_the_fly", "teacher_on_the_fly"),
    ):
        summary[f"tokens_per_s_{label}"] = rate(mode)
        summary[f"peak_rss_mb_{label}"] = results[mode].get("peak_rss_mb")
        summary[f"peak_live_mb_{label}"] = live.get(mode, {}).get("peak_rss_mb")
        if mode != "cached":
            summary[f"speedup_vs_{label}"] = ratio("cached", mode)
    summary |= {
        "tokens_per_s_cached_gradient_checkpointing": rate("cached_gc"),
        "peak_rss_mb_cached_gradient_checkpointing": results["cached_gc"].get("peak_rss_mb"),
        "peak_live_mb_cached_gradient_checkpointing": live.get("cached_gc", {}).get("peak_rss_mb"),
        "teacher_cache_fill_s": (results["prepare"].get("teacher_cache") or {}).get("seconds"),
        "tokens_per_s_cached_tt_only": rate("cached_tt"),
        "pair": args.pair,
        "steps": args.steps,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
    }
    if "error" in results["trl"]:
        summary["trl"] = f"skipped: {results['trl']['error']}"
    else:
        summary["tokens_per_s_trl_gkd_tt"] = rate("trl")
        summary["peak_rss_mb_trl_gkd"] = results["trl"].get("peak_rss_mb")
        summary["speedup_tt_vs_trl"] = ratio("cached_tt", "trl")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
