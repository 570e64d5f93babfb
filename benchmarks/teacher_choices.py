"""The teacher's ranking of a choice question's options (KD targets with ``choices``): each prompt run once
for all its options through the KV cache (ours, ``teacher_choices``) against one row per option, each
with its own copy of the prompt (the naive way).

Both paths run in their own process (peak RSS is its own) on the demo's teacher (organism-base,
SmolLM2-135M-Instruct) and the same four-option questions of ``xkd_eval/organism/choice_questions.jsonl``,
float32. Prints questions/s of both, the ratio, the largest difference between their log-probability
sums and whether they pick the same options; the last line is one JSON object of the figures.

    .venv/bin/python benchmarks/teacher_choices.py [--questions 96] [--batch-size 16]
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
sys.path.insert(0, str(ROOT))
QUESTIONS = ROOT / "xkd_eval" / "organism" / "choice_questions.jsonl"


def load(n: int):
    from xkd_eval.distill.kd_data import KDExample

    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()[:n]]
    return [KDExample(f"q{i}", r["question"], choices=tuple(r["choices"])) for i, r in enumerate(rows)]


def per_option_rows(examples, model, tokenizer, batch_size: int) -> list[list[float]]:
    """The naive way: every (prompt + option) its own right-padded row, ``batch_size`` questions' rows at a time."""
    import torch

    from xkd_eval.distill.kd_data import teacher_prompt
    from xkd_eval.models.hf import suffix_ids

    pairs = []
    for example in examples:
        prompt = teacher_prompt(tokenizer, example.instruction)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        pairs += [(example.id, head, suffix_ids(tokenizer, prompt, option)) for option in example.choices]
    sums: dict[str, list[float]] = {}
    rows_per_batch = batch_size * len(examples[0].choices)
    for start in range(0, len(pairs), rows_per_batch):
        chunk = pairs[start : start + rows_per_batch]
        rows = [head + option for _, head, option in chunk]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for i, (example_id, head, option) in enumerate(chunk):
            at = torch.arange(len(head) - 1, len(head) + len(option) - 1)
            sums.setdefault(example_id, []).append(float(logprobs[i, at, torch.tensor(option)].sum()))
    return [sums[e.id] for e in examples]


def child(argv: list[str]) -> None:
    path, n, batch_size = argv[0], int(argv[1]), int(argv[2])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xkd_eval.distill.kd_data import teacher_choices
    from xkd_eval.organism import smollm2_hf_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir(), dtype=torch.float32).eval()
    examples = load(n)
    per_option_rows(examples[:batch_size], model, tokenizer, batch_size)  # warm-up, either path's kernels
    start = time.perf_counter()
    if path == "shared":
        with tempfile.TemporaryDirectory() as cache:
            teacher_choices(examples, model, tokenizer, "bench", cache, batch_size=batch_size, progress=False)
            sums = [json.loads(p.read_text()) for p in Path(cache).iterdir()]
            by_instruction = {s["instruction"]: s["logprobs"] for s in sums}
            sums = [by_instruction[e.instruction] for e in examples]
    else:
        sums = per_option_rows(examples, model, tokenizer, batch_size)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"path": path, "seconds": seconds, "sums": sums, "peak_rss_mb": peak}))


def run_child(*args: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16, help="questions per batch, for both paths")
    args = parser.parse_args()
    n, batch = str(args.questions), str(args.batch_size)
    naive = run_child("per_option", n, batch)
    shared = run_child("shared", n, batch)
    pairs = zip(naive["sums"], shared["sums"], strict=True)
    diff = max(abs(a - b) for qa, qb in pairs for a, b in zip(qa, qb, strict=True))
    same = sum(
        max(range(len(qa)), key=qa.__getitem__) == max(range(len(qb)), key=qb.__getitem__)
        for qa, qb in zip(naive["sums"], shared["sums"], strict=True)
    )
    rate = {p["path"]: args.questions / p["seconds"] for p in (naive, shared)}
    print(f"{args.questions} questions (4 options each), organism-base, float32, {args.batch_size} questions a batch")
    print(f"  per-option rows (naive): {rate['per_option']:7.2f} questions/s   peak RSS {naive['peak_rss_mb']:7.0f} MB")
    print(f"  prompt shared (ours):    {rate['shared']:7.2f} questions/s   peak RSS {shared['peak_rss_mb']:7.0f} MB")
    print(f"  speed-up {rate['shared'] / rate['per_option']:.2f}x; largest sum difference {diff:.2e}; "
          f"same pick on {same}/{args.questions}")  # fmt: skip
    figures = {
        "questions": args.questions,
        "batch_size": args.batch_size,
        "naive_questions_per_s": round(rate["per_option"], 3),
        "shared_questions_per_s": round(rate["shared"], 3),
        "speedup": round(rate["shared"] / rate["per_option"], 3),
        "max_sum_difference": diff,
        "same_pick": same,
        "naive_peak_rss_mb": round(naive["peak_rss_mb"]),
        "shared_peak_rss_mb": round(shared["peak_rss_mb"]),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
