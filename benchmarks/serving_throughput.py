"""Serving throughput: the organism's speech arm through transformers (batched), `vllm:` and `openai:` (a local
vLLM server), in one run, on the same spoken items with the same greedy settings.

    .venv-serving/bin/python benchmarks/serving_throughput.py [--items 64] [--max-new-tokens 32] [--batch-size 8]

Every path runs in its own process; its peak memory is the highest resident memory of its process tree (the
engine's processes and, for `openai:`, the server's included), sampled every 0.1 s. Items/s counts answering
only: loading a model or starting an engine or a server is timed apart. Greedy agreement is each path's
answers against transformers', item by item. The last line is JSON with ``vllm_vs_hf`` (items/s of `vllm:` over
transformers'), ``openai_vs_hf`` and ``greedy_agreement`` (per path).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def queries(n: int) -> dict[str, list]:
    """Per arm, n queries: the first n spoken items of built-in listen and mcq, each with the speech arm's
    instruction; the first n written questions of built-in qa and mcq."""
    from xkd_eval.audio import load_audio
    from xkd_eval.builtin import load_builtin
    from xkd_eval.models import SPEECH_INSTRUCTION, Query

    spoken = [i for name in ("listen", "mcq") for i in load_builtin(name, progress=False).items if i.audio][:n]
    written = [i for name in ("qa", "mcq") for i in load_builtin(name, progress=False, audio="off").items][:n]
    return {
        "speech": [Query(item.id, SPEECH_INSTRUCTION, load_audio(item)) for item in spoken],
        "text": [Query(item.id, item.prompt) for item in written],
    }


def worker(path: str, n: int, max_new_tokens: int, batch_size: int, api_base: str | None) -> dict:
    from xkd_eval.models import GenerationSettings, load_model

    asked = queries(n)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    started = time.perf_counter()
    if path == "hf":
        model = load_model("organism", encoder_cache=False)  # every clip through the encoder, as vLLM does
    elif path == "vllm":
        model = load_model("vllm:organism")
    else:
        model = load_model("openai:organism", api_base=api_base, max_concurrency=batch_size)
    figures: dict = {"load_s": round(time.perf_counter() - started, 1)}
    for arm, batch in asked.items():
        step = batch_size if path == "hf" else len(batch)  # an engine schedules its own batches
        started = time.perf_counter()
        answers = []
        for at in range(0, len(batch), step):
            answers += model.generate(batch[at : at + step], settings)
        seconds = time.perf_counter() - started
        figures[arm] = {"answer_s": round(seconds, 2), "items_per_s": round(len(batch) / seconds, 3),
                        "answers": dict(zip((q.item_id for q in batch), answers, strict=True))}  # fmt: skip
    model.close()
    return figures


def tree_rss(pids: list[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for member in [process, *process.children(recursive=True)]:
                total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def measured(command: list[str], also: list[int] = ()) -> tuple[dict, float]:
    """Run a worker; (its JSON result, the peak RSS in MB of its tree and of the ``also`` processes' trees)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss([process.pid, *also]))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode})")
    return json.loads(out.strip().splitlines()[-1]), peak / 2**20


def start_server(port: int, log: Path) -> subprocess.Popen:
    import urllib.request

    from xkd_eval.organism.export import served_named_model

    folder, _ = served_named_model("organism")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", "organism", "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", "4096", "--enforce-eager", "--dtype", "float32", "--limit-mm-per-prompt",
               '{"audio":1}']  # fmt: skip
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        if server.poll() is not None:
            raise SystemExit(f"the server exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:  # not listening yet
            pass
        time.sleep(2)
    raise SystemExit(f"the server did not come up; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="items per arm (spoken, written)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers' batch; openai:'s requests in flight")
    parser.add_argument("--port", type=int, default=8411)
    parser.add_argument("--worker", choices=("hf", "vllm", "openai"), help=argparse.SUPPRESS)
    parser.add_argument("--api-base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # on a machine without a GPU vLLM keeps a core for its front end unless told otherwise; transformers uses
    # every core, so the engine gets them all too
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if args.worker:
        print(json.dumps(worker(args.worker, args.items, args.max_new_tokens, args.batch_size, args.api_base)))
        return
    base = [sys.executable, __file__, "--items", str(args.items), "--max-new-tokens", str(args.max_new_tokens),
            "--batch-size", str(args.batch_size)]  # fmt: skip
    results: dict[str, dict] = {}
    for path in ("hf", "vllm"):
        results[path], results[path]["peak_rss_mb"] = measured([*base, "--worker", path])
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "xkd-serving-benchmark-server.log"
    started = time.perf_counter()
    server = start_server(args.port, log)
    server_start = time.perf_counter() - started
    try:
        api = f"http://127.0.0.1:{args.port}/v1"
        results["openai"], results["openai"]["peak_rss_mb"] = measured(
            [*base, "--worker", "openai", "--api-base", api], also=[server.pid]
        )
        results["openai"]["load_s"] = round(results["openai"]["load_s"] + server_start, 1)  # the server's start too
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its engine's processes
        server.wait(60)

    arms = ("speech", "text")
    print(f"organism, {args.items} items per arm, greedy, {args.max_new_tokens} new tokens at most, 2 CPU cores")
    print(f"{'path':<8} {'arm':<7} {'load s':>7} {'answer s':>9} {'items/s':>8} {'vs hf':>6} {'peak MB':>8} "
          f"{'same as hf':>11}")  # fmt: skip
    agreement: dict[str, float] = {}
    for path, figures in results.items():
        same = total = 0
        for arm in arms:
            reference = results["hf"][arm]["answers"]
            equal = sum(figures[arm]["answers"][k].strip() == v.strip() for k, v in reference.items())
            same, total = same + equal, total + len(reference)
            ratio = figures[arm]["items_per_s"] / results["hf"][arm]["items_per_s"]
            print(f"{path:<8} {arm:<7} {figures['load_s']:>7} {figures[arm]['answer_s']:>9} "
                  f"{figures[arm]['items_per_s']:>8} {ratio:>5.2f}x {figures['peak_rss_mb']:>8.0f} "
                  f"{equal:>5}/{len(reference)}")  # fmt: skip
            for key, answer in reference.items():
                if figures[arm]["answers"][key].strip() != answer.strip():
                    print(f"    {key}: hf {answer!r} | {path} {figures[arm]['answers'][key]!r}")
        agreement[path] = round(same / total, 4)

    def overall(path: str) -> float:  # items/s over both arms
        return sum(len(results[path][a]["answers"]) for a in arms) / sum(results[path][a]["answer_s"] for a in arms)

    summary = {
        "items": {arm: len(results["hf"][arm]["answers"]) for arm in arms},
        "items_per_s": {path: {arm: results[path][arm]["items_per_s"] for arm in arms} for path in results},
        "peak_rss_mb": {path: round(figures["peak_rss_mb"]) for path, figures in results.items()},
        "vllm_vs_hf": round(overall("vllm") / overall("hf"), 3),
        "vllm_vs_hf_by_arm": {
            a: round(results["vllm"][a]["items_per_s"] / results["hf"][a]["items_per_s"], 3) for a in arms
        },  # fmt: skip
        "openai_vs_hf": round(overall("openai") / overall("hf"), 3),
        "greedy_agreement": agreement,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
