"""`make test-serving`'s first check: the exported organism answers the same through vLLM as through
transformers. Three steps, in two environments (vLLM lives in .venv-serving):

    .venv/bin/python tests/serving/export_agreement.py prepare WORK      # export, clips, prompt
    .venv-serving/bin/python tests/serving/export_agreement.py vllm WORK # vLLM's greedy answers
    .venv/bin/python tests/serving/export_agreement.py compare WORK      # transformers' and the verdict

Greedy repetitions of the built-in listen subset's first 65 clips (the engine's agreement, not the subset's
score, so a sample does); the check fails below 95% equal answers and
lists every disagreement.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

INSTRUCTION = "Repeat exactly what the speaker says."
MAX_TOKENS = 24
FLOOR = 0.95


def prepare(work: Path) -> None:
    from transformers import AutoProcessor

    from xkd_eval.builtin import load_builtin
    from xkd_eval.organism.export import export_named_model

    model = work / "organism"
    if not (model / "xkd-export.json").is_file():
        export_named_model("organism", model)
    items = [i for i in load_builtin("listen", progress=False, limit=65).items if i.audio is not None]
    processor = AutoProcessor.from_pretrained(model)
    turns = [
        {"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"}, {"type": "text", "text": INSTRUCTION}]}
    ]
    prompt = processor.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    record = {"model": str(model), "prompt": prompt, "clips": {i.id: i.audio.path for i in items}}
    (work / "agreement.json").write_text(json.dumps(record, indent=1))


def _clip(path: str):
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16_000 and audio.ndim == 1, f"{path}: expected 16 kHz mono"
    return audio


def answer_with_vllm(work: Path) -> None:
    from vllm import LLM, SamplingParams

    record = json.loads((work / "agreement.json").read_text())
    llm = LLM(model=record["model"], dtype="float32", enforce_eager=True, max_model_len=2048,
              limit_mm_per_prompt={"audio": 1})  # fmt: skip
    requests = [{"prompt": record["prompt"], "multi_modal_data": {"audio": (_clip(p), 16_000)}}
                for p in record["clips"].values()]  # fmt: skip
    outputs = llm.generate(requests, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    record["vllm"] = dict(zip(record["clips"], (o.outputs[0].text for o in outputs), strict=True))
    (work / "agreement.json").write_text(json.dumps(record, indent=1))


def _differs(processor, model, record, item: str, path: str) -> list[tuple[str, str, str]]:
    import torch

    inputs = processor(text=record["prompt"], audio=[_clip(path)], sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    hf = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return [] if hf == record["vllm"][item].strip() else [(item, hf, record["vllm"][item])]


def compare(work: Path) -> int:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from xkd_eval.models.encoder import progress_bar

    record = json.loads((work / "agreement.json").read_text())
    processor = AutoProcessor.from_pretrained(record["model"])
    model = Qwen2AudioForConditionalGeneration.from_pretrained(record["model"], dtype="float32").eval()
    differ = []
    with progress_bar(len(record["clips"]), "transformers, greedy") as advance:
        for item, path in record["clips"].items():
            differ += _differs(processor, model, record, item, path)
            advance(1)
    n = len(record["clips"])
    print(f"exported organism, greedy repetitions of {n} listen clips: vLLM equals transformers on {n - len(differ)}")
    for item, hf, vllm in differ:
        print(f"  {item}: transformers {hf!r} | vLLM {vllm!r}")
    return 0 if n and (n - len(differ)) / n >= FLOOR else 1


if __name__ == "__main__":
    step, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    if step == "prepare":
        prepare(work)
    elif step == "vllm":
        answer_with_vllm(work)
    else:
        sys.exit(compare(work))
