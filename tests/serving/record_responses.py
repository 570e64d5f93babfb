"""Record a real OpenAI-compatible server's replies for the unit tests of the ``openai:`` backend
(tests/test_openai_backend.py replays them): a vLLM server serving the exported organism, e.g.

    .venv-serving/bin/python -m vllm.entrypoints.openai.api_server --model EXPORTED --served-model-name organism ...
    .venv/bin/python tests/serving/record_responses.py http://127.0.0.1:8011/v1 CLIP.wav

Each exchange is saved as {"request": ..., "status": ..., "response": ...}, the clip's base64 shortened.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "serving"
INSTRUCTION = "Listen to the audio and respond to the question or request it contains."


def main(base: str, clip: Path) -> None:
    audio = {"data": base64.b64encode(clip.read_bytes()).decode("ascii"), "format": "wav"}
    spoken = [{"role": "user", "content": [{"type": "input_audio", "input_audio": audio},
                                           {"type": "text", "text": INSTRUCTION}]}]  # fmt: skip
    written = [{"role": "user", "content": "What is the capital of France?"}]
    continued = {"add_generation_prompt": False, "continue_final_message": True, "prompt_logprobs": 0}
    exchanges = {
        "models": ("GET", "/models", None),
        "text": ("POST", "/chat/completions", {"model": "organism", "messages": written, "max_tokens": 16,
                                               "temperature": 0.0}),
        "speech": ("POST", "/chat/completions", {"model": "organism", "messages": spoken, "max_tokens": 16,
                                                 "temperature": 0.0}),
        "instruction_only": ("POST", "/chat/completions", {"model": "organism", "max_tokens": 1, "temperature": 0.0,
                             "messages": [{"role": "user", "content": INSTRUCTION}]}),
        "text_option": ("POST", "/chat/completions", {"model": "organism", "max_tokens": 1, "temperature": 0.0,
                        "messages": [*written, {"role": "assistant", "content": " Paris"}], **continued}),
        "speech_option": ("POST", "/chat/completions", {"model": "organism", "max_tokens": 1, "temperature": 0.0,
                          "messages": [*spoken, {"role": "assistant", "content": " Paris"}], **continued}),
        "wrong_model": ("POST", "/chat/completions", {"model": "no-such-model", "messages": written,
                                                      "max_tokens": 4}),
    }  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (method, path, body) in exchanges.items():
        status, answer = exchange(base + path, method, body)
        if body and "messages" in body:
            body = json.loads(json.dumps(body).replace(audio["data"], audio["data"][:64] + "..."))
        record = {"request": {"method": method, "path": path, "body": body}, "status": status, "response": answer}
        (OUT / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(name, status)


def exchange(url: str, method: str, body: dict | None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:  # a 404 is a reply worth recording too
        return error.code, json.loads(error.read())


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"), Path(sys.argv[2]))
