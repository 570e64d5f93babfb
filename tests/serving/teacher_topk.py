"""`make test-serving`'s teacher check (in .venv-serving): the top-k teacher cache filled through vLLM
(``teacher_backend: vllm``) against the transformers teacher's, on the organism pair's teacher (organism-base)
and the distillation recipe's own examples (distill/organism-kd-dictation.jsonl, those with a response).

    .venv-serving/bin/python tests/serving/teacher_topk.py WORK [--examples 48] [--top-k 20]

Per response token: is the top-1 token the same, how much of the top-k set is shared, and how far apart the
log-probabilities of the tokens both keep are. Fails if the top-1 tokens agree on fewer than 99% of positions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR = 0.99


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--top-k", type=int, default=20)
    args = parser.parse_args()

    import torch

    from xkd_eval.distill.teacher_cache import TeacherCache, fill_teacher_cache, fill_teacher_cache_vllm
    from xkd_eval.models import load_model

    lines = [json.loads(x) for x in (ROOT / "distill" / "organism-kd-dictation.jsonl").read_text().splitlines()]
    examples = [x for x in lines if x.get("response")][: args.examples]
    hf = load_model("organism-base")
    tokenizer = hf.tokenizer
    prompts = [tokenizer(hf.render_prompt(_query(x["instruction"])), add_special_tokens=False)["input_ids"]
               for x in examples]  # fmt: skip
    responses = [tokenizer(x["response"], add_special_tokens=False)["input_ids"] for x in examples]
    shared = len(tokenizer)
    work = args.work / "teacher-topk"
    shutil.rmtree(work, ignore_errors=True)  # computed afresh: the check is of the engines, not of a cache
    reference = TeacherCache(work / "hf", "hf", args.top_k, shared, dtype="float32")  # the engines, not fp16
    with torch.no_grad():
        ours = fill_teacher_cache(reference, hf.model, prompts, responses, pad_id=tokenizer.pad_token_id)
    hf.close()
    del hf
    engine = TeacherCache(work / "vllm", "vllm", args.top_k, shared, dtype="float32")
    theirs = fill_teacher_cache_vllm(engine, "organism-base", prompts, responses)

    same_top1 = overlap = positions = 0
    gaps = []
    for a, b in zip(ours, theirs, strict=True):
        a_logprobs = torch.log_softmax(a.values.float(), dim=-1)  # over the top-k: what the loss sees
        b_logprobs = torch.log_softmax(b.values.float(), dim=-1)
        for row in range(a.indices.shape[0]):
            positions += 1
            same_top1 += int(a.indices[row, 0] == b.indices[row, 0])
            kept_a = dict(zip(a.indices[row].tolist(), a_logprobs[row].tolist(), strict=True))
            kept_b = dict(zip(b.indices[row].tolist(), b_logprobs[row].tolist(), strict=True))
            both = kept_a.keys() & kept_b.keys()
            overlap += len(both)
            gaps += [abs(kept_a[t] - kept_b[t]) for t in both]
    share = same_top1 / positions
    print(f"teacher top-{args.top_k} over {positions} response tokens of {len(examples)} examples: top-1 equal on "
          f"{same_top1} ({100 * share:.2f}%), {100 * overlap / (positions * args.top_k):.1f}% of the top-k shared, "
          f"log-probabilities renormalised over the top-k differ by max {max(gaps):.2g}, median "
          f"{statistics.median(gaps):.2g} nats")  # fmt: skip
    return 0 if share >= FLOOR else 1


def _query(text: str):
    from xkd_eval.models import Query

    return Query("teacher", text)


if __name__ == "__main__":
    sys.exit(main())
