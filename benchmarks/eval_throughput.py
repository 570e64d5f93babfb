"""Runner throughput: batched + cached vs a per-item loop in the style of VoiceBench's main.py.

Each path runs in its own process (so peak RSS is its own) on the same tiny Qwen2-Audio model and the
same spoken items. Prints items/s of both, the ratio, whether greedy outputs agree, and a cached
rerun; the last line is one JSON object of the figures.

    .venv/bin/python benchmarks/eval_throughput.py [--items 48] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny real architectures the tests use


def build(workdir: Path, n_items: int) -> tuple[Path, Path]:
    import soundfile as sf
    from conftest import tone
    from tiny_models import build_qwen2_audio

    # small but not trivial: the language model's decoding, which batching speeds up, must be part of
    # the cost, as it is for any real speech LLM (the 30 s encoder window costs the same either way)
    model_dir = build_qwen2_audio(
        workdir / "model", hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8
    )
    (workdir / "audio").mkdir()
    with (workdir / "items.jsonl").open("w") as handle:
        for i in range(n_items):
            sf.write(workdir / "audio" / f"{i}.wav", tone(1.0 + (i % 5) * 0.7, seed=i), 16_000)
            prompt = f"Question {i}: which is a mammal?\nA. shark\nB. whale\nC. trout\nD. squid"
            handle.write(
                json.dumps({"id": f"q{i}", "prompt": prompt, "audio": f"audio/{i}.wav", "reference": "B"}) + "\n"
            )
    return model_dir, workdir / "items.jsonl"


def path_runner(model_dir: str, items: str, out: str, batch_size: int, max_new_tokens: int) -> dict:
    from xkd_eval.models import GenerationSettings, load_model
    from xkd_eval.runner.core import RunConfig, prepare_tasks, run_arm

    config = RunConfig(
        out_dir=out, settings=GenerationSettings(max_new_tokens=max_new_tokens), scorer="mcq", batch_size=batch_size
    )
    [run] = prepare_tasks([f"jsonl:{items}"], config)
    model = load_model(model_dir)
    warm_up = run.items[0]
    from xkd_eval.audio import load_audio
    from xkd_eval.models import Query

    model.generate([Query("warm-up", "Hello", load_audio(warm_up))], config.settings)  # lazy init, untimed
    started = time.perf_counter()
    rows = run_arm(model, "bench", "slm_speech", run, config)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "responses": {r["item_id"]: r["response"] for r in rows}}


def path_per_item(model_dir: str, items: str, max_new_tokens: int) -> dict:
    """One item at a time: decode, build the prompt, generate, decode (VoiceBench's main.py loop)."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from xkd_eval.audio import decode_audio
    from xkd_eval.models.base import SPEECH_INSTRUCTION

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
    records = [json.loads(line) for line in Path(items).read_text().splitlines()]
    responses = {}
    for at, record in enumerate([records[0], *records]):
        if at == 1:
            started = time.perf_counter()  # after one untimed warm-up item
        audio = decode_audio(str(Path(items).parent / record["audio"]))
        messages = [
            {
                "role": "user",
                "content": [{"type": "audio", "audio_url": "x"}, {"type": "text", "text": SPEECH_INSTRUCTION}],
            }
        ]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], audio=[audio], sampling_rate=16_000, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :]
        responses[record["id"]] = processor.batch_decode(new, skip_special_tokens=True)[0].strip()
    return {"seconds": time.perf_counter() - started, "responses": responses}


def child(argv: list[str]) -> None:
    kind, model_dir, items, out, batch_size, tokens = argv
    if kind == "per-item":
        result = path_per_item(model_dir, items, int(tokens))
    else:
        result = path_runner(model_dir, items, out, int(batch_size), int(tokens))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_child(*args: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir, items = build(workdir, args.items)
        common = (str(model_dir), str(items), str(workdir / "out"), str(args.batch_size), str(args.max_new_tokens))
        per_item = run_child("per-item", *common)
        batched = run_child("runner", *common)
        cached = run_child("runner", *common)
    n = args.items
    agree = sum(per_item["responses"][k] == batched["responses"][k] for k in per_item["responses"])
    figures = {
        "items": n,
        "batch_size": args.batch_size,
        "items_per_s_per_item": n / per_item["seconds"],
        "items_per_s_batched": n / batched["seconds"],
        "speedup": per_item["seconds"] / batched["seconds"],
        "items_per_s_cached": n / cached["seconds"],
        "cached_speedup_vs_batched": batched["seconds"] / cached["seconds"],
        "greedy_outputs_agree": f"{agree}/{n}",
        "peak_rss_mb_per_item": per_item["peak_rss_mb"],
        "peak_rss_mb_batched": batched["peak_rss_mb"],
        "peak_rss_mb_cached": cached["peak_rss_mb"],
    }
    print(f"per-item loop : {figures['items_per_s_per_item']:.2f} items/s, peak RSS {per_item['peak_rss_mb']:.0f} MB")
    print(f"runner batched: {figures['items_per_s_batched']:.2f} items/s, peak RSS {batched['peak_rss_mb']:.0f} MB")
    print(f"runner cached : {figures['items_per_s_cached']:.1f} items/s (rerun, nothing recomputed)")
    print(f"speedup batched vs per-item: {figures['speedup']:.2f}x; greedy outputs agree on {agree}/{n} items")
    print(json.dumps(figures))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
