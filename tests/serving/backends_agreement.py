"""`make test-serving`'s main check: the organism measured through each backend, compared item by item.

    .venv/bin/python tests/serving/backends_agreement.py WORK [--limit N]

1. transformers (the reference): `gap --model organism --base organism-base` on built-in mcq (cloze) and qa;
2. `vllm:` in .venv-serving: the same command with `vllm:organism` and `vllm:organism-base`;
3. `openai:` from this environment against two local vLLM servers (the exported organism and organism-base);
   the organism's server is killed mid-run (SIGKILL), the run must stop with the answers it had, the server
   is restarted, and the rerun must ask only for what is missing: nothing is answered twice.
Then `xkd-eval report` compares the runs, and this script fails unless every arm's greedy answers equal the
reference's on >= 95% of the items; it lists every disagreement and how close the option log-likelihoods are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / ".venv" / "bin" / "xkd-eval"
SERVING = Path(os.environ.get("SERVING_VENV", ROOT / ".venv-serving")) / "bin"
FLOOR = 0.95
TASKS = ("builtin/mcq", "builtin/qa")


def gap(executable: Path, model: str, base: str, out: Path, limit: int, *extra: str) -> list[str]:
    tasks = [arg for task in TASKS for arg in ("--task", task)]
    return [str(executable), "gap", "--model", model, "--base", base, *tasks, "--mcq-mode", "cloze",
            "--limit", str(limit), "--out", str(out), *extra]  # fmt: skip


def run(command: list[str], log: Path, **env: str) -> int:
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    with log.open("a") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ | env).returncode
    print(f"  exit {code} after {time.perf_counter() - started:.0f} s (log: {log})", flush=True)
    return code


def answering(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as reply:
            return reply.status == 200
    except OSError:  # refused, reset, or an HTTP error while it starts
        return False


class Server:
    """A vLLM OpenAI-compatible server for one exported model, in .venv-serving."""

    def __init__(self, folder: Path, name: str, port: int, log: Path) -> None:
        self.folder, self.name, self.port, self.log = folder, name, port, log
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process: subprocess.Popen | None = None
        self.requests_at_start = 0

    def start(self) -> Server:
        command = [str(SERVING / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.folder),
                   "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port),
                   "--max-model-len", "4096", "--enforce-eager", "--dtype", "float32",
                   "--limit-mm-per-prompt", '{"audio":1}']  # fmt: skip
        self.requests_at_start = self.completions()
        # a session of its own: the kill takes the engine's processes with the server, as a crash of the machine would
        self.process = subprocess.Popen(
            command, stdout=self.log.open("a"), stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the {self.name} server exited (code {self.process.returncode}); see {self.log}")
            if answering(self.url):
                print(f"  {self.name} served at {self.url}", flush=True)
                return
            time.sleep(2)
        raise SystemExit(f"the {self.name} server did not come up in {timeout:.0f} s; see {self.log}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def completions(self) -> int:
        """Chat completions this server's log has answered (access log lines), all starts together."""
        if not self.log.is_file():
            return 0
        return sum('"POST /v1/chat/completions HTTP/1.1" 200' in line for line in self.log.open(errors="replace"))


def stored(out: Path, model: str) -> dict[str, dict]:
    """The result records of one model in a run folder, by key (each key once, or the check fails)."""
    from xkd_eval.runner.store import slug

    records: dict[str, dict] = {}
    for path in sorted((out / "results" / slug(model)).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["key"] in records:
                raise SystemExit(f"{path}: key {record['key']} stored twice: an item was answered twice")
            records[record["key"]] = record
    return records


def requests_per_answer(record: dict) -> int:
    return len(record.get("option_logprobs") or {}) or 1


def killed_and_resumed(work: Path, limit: int, organism: Server, base: Server, log: Path) -> dict:
    """The openai: run, its organism server killed once the speech LLM has answered some items."""
    out = work / "openai"
    shutil.rmtree(out, ignore_errors=True)  # the kill must land mid-run, so this run starts from nothing
    command = gap(MAIN, "openai:organism", "openai:organism-base", out, limit,
                  "--api-base", organism.url, "--base-api-base", base.url)  # fmt: skip
    print("$", " ".join(command), flush=True)
    first = subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT)
    while first.poll() is None and len(stored(out, "openai:organism")) < 60:
        time.sleep(1)
    if first.poll() is not None:
        raise SystemExit(f"the openai: run ended (code {first.returncode}) before the kill; see {log}")
    organism.kill()
    code = first.wait(600)
    said = log.read_text(errors="replace").strip().splitlines()[-1]
    before = stored(out, "openai:organism")
    print(f"  killed the organism's server: the run exited {code} with {len(before)} answers kept: {said}")
    if code == 0 or "cannot reach" not in said:
        raise SystemExit("a killed server must stop the run with one line saying so")
    organism.start().wait()
    asked_before = organism.completions()
    if run(command, log) != 0:
        raise SystemExit(f"the rerun after the restart failed; see {log}")
    after = stored(out, "openai:organism")
    new = [record for key, record in after.items() if key not in before]
    asked = organism.completions() - asked_before
    needed = sum(requests_per_answer(r) for r in new)
    print(f"  rerun: {len(new)} answers added ({needed} requests needed, the restarted server answered {asked})")
    # beyond what the missing answers need: one probe for option log-probabilities and one text-only prompt per
    # instruction (the audio check); anything more would be an item asked twice
    if not needed <= asked <= needed + 4:
        raise SystemExit("the rerun asked the server for more than the missing answers")
    return {"kept": len(before), "added": len(new), "requests_needed": needed, "requests_made": asked}


def logprob_closeness(reference: Path, other: Path, model: str, other_model: str) -> dict[str, dict[str, float]]:
    """Per modality: how far apart the two runs' option log-likelihoods are (absolute, nats)."""

    def by_item(out: Path, name: str) -> dict[tuple[str, str], dict[str, float]]:
        return {(r["item_id"], "speech" if "input_audio" in r["prompt"] or "<|AUDIO|>" in r["prompt"] else "text"):
                r["option_logprobs"] for r in stored(out, name).values() if r.get("option_logprobs")}  # fmt: skip

    ours, theirs = by_item(reference, model), by_item(other, other_model)
    out: dict[str, dict[str, float]] = {}
    for modality in ("text", "speech"):
        gaps = [abs(ours[k][label] - theirs[k][label]) for k in ours if k in theirs and k[1] == modality
                for label in ours[k]]  # fmt: skip
        if gaps:
            out[modality] = {"options": len(gaps), "max": max(gaps), "median": statistics.median(gaps)}
    return out


def verdict(work: Path) -> int:
    import pandas as pd

    from xkd_eval.report.agreement import response_agreement

    reference = pd.read_parquet(work / "hf" / "items.parquet")
    failed = False
    lines = []
    for backend in ("vllm", "openai"):
        for arm in response_agreement(reference, pd.read_parquet(work / backend / "items.parquet")):
            ok = arm.share >= FLOOR
            failed |= not ok
            lines.append(f"{backend:<7} {arm.task:<12} {arm.arm:<10} {arm.equal}/{arm.n} equal "
                         f"({100 * arm.share:.1f}%){'' if ok else '  BELOW 95%'}")  # fmt: skip
            lines += [f"    {item}: transformers {a!r} | {backend} {b!r}" for item, a, b in arm.differing]
        for role, name in (("model", "organism"), ("base", "organism-base")):
            for modality, gaps in logprob_closeness(work / "hf", work / backend, name, f"{backend}:{name}").items():
                lines.append(f"{backend:<7} {role} {modality} option log-likelihoods: {gaps['options']} compared, "
                             f"max |diff| {gaps['max']:.2g}, median {gaps['median']:.2g} nats")  # fmt: skip
    print("\n".join(lines))
    (work / "agreement.txt").write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--port", type=int, default=8311)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    from xkd_eval.organism.export import served_named_model

    folders = {name: served_named_model(name)[0] for name in ("organism", "organism-base")}
    if run(gap(MAIN, "organism", "organism-base", work / "hf", args.limit), logs / "hf.log") != 0:
        return 1
    if run(gap(SERVING / "xkd-eval", "vllm:organism", "vllm:organism-base", work / "vllm", args.limit),
           logs / "vllm.log") != 0:  # fmt: skip
        return 1
    organism = Server(folders["organism"], "organism", args.port, logs / "server-organism.log")
    base = Server(folders["organism-base"], "organism-base", args.port + 1, logs / "server-organism-base.log")
    try:
        organism.start(), base.start()
        organism.wait(), base.wait()
        resumed = killed_and_resumed(work, args.limit, organism, base, logs / "openai.log")
    finally:
        organism.stop(), base.stop()
    (work / "resume.json").write_text(json.dumps(resumed, indent=1) + "\n")
    run([str(MAIN), "report", str(work / "hf"), str(work / "vllm"), str(work / "openai"), "--out",
         str(work / "compare")], logs / "report.log")  # fmt: skip
    return verdict(work)


if __name__ == "__main__":
    sys.exit(main())
