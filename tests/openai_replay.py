"""A local HTTP server that answers as a real vLLM OpenAI-compatible server answered (tests/data/serving/, recorded
by tests/serving/record_responses.py against the exported organism), so the ``openai:`` backend's requests and
its parsing are tested without a GPU or an engine. Knobs make it misbehave the ways real servers do."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).parent / "data" / "serving"


def recorded(name: str) -> dict[str, Any]:
    return json.loads((RECORDED / f"{name}.json").read_text())


def has_audio(body: dict[str, Any]) -> bool:
    return any(
        isinstance(turn["content"], list) and any(part.get("type") == "input_audio" for part in turn["content"])
        for turn in body.get("messages", [])
    )


@dataclass
class Replay:
    """The recorded replies, and how to misbehave: ``fail_next`` statuses answered before the real reply (429, 503
    ...), ``always`` a status for every completion, ``without_prompt_logprobs`` a server that ignores vLLM's
    extension, ``deaf`` one that drops the audio (the text-only prompt's token count), ``die_after`` completions
    answered before the server stops answering at all."""

    fail_next: list[int] = field(default_factory=list)
    always: int | None = None
    without_prompt_logprobs: bool = False
    deaf: bool = False
    die_after: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    completions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append({"method": method, "path": path, "body": body})
            if path.endswith("/models"):
                return 200, recorded("models")["response"]
            if self.die_after is not None and self.completions >= self.die_after:
                return -1, {}
            if self.fail_next:
                status = self.fail_next.pop(0)
                return status, {"error": {"message": f"recorded status {status}", "code": status}}
            if self.always:
                return self.always, {"error": {"message": f"status {self.always}", "code": self.always}}
            self.completions += 1
        if body["model"] != "organism":
            exchange = recorded("wrong_model")
            return exchange["status"], exchange["response"]
        if "prompt_logprobs" in body:
            response = recorded("speech_option" if has_audio(body) else "text_option")["response"]
            if self.without_prompt_logprobs:
                response = {k: v for k, v in response.items() if k != "prompt_logprobs"}
            return 200, response
        if has_audio(body):
            response = json.loads(json.dumps(recorded("speech")["response"]))
            if self.deaf:
                response["usage"]["prompt_tokens"] = recorded("instruction_only")["response"]["usage"]["prompt_tokens"]
            return 200, response
        return 200, recorded("instruction_only" if body.get("max_tokens") == 1 else "text")["response"]

    def completions_asked(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"].endswith("/chat/completions")]


def serve(replay: Replay, *, key: str | None = None) -> tuple[ThreadingHTTPServer, str]:
    """Start the server on a free port; returns it and its base URL (``.../v1``). ``key``: the bearer key it wants."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            if key is not None and self.headers.get("authorization") != f"Bearer {key}":
                status, payload = 401, {"error": {"message": "Unauthorized", "code": 401}}
            else:
                status, payload = replay.reply(method, self.path, body)
            if status == -1:  # a dead server: the connection closes without a reply
                self.close_connection = True
                self.connection.shutdown(2)
                return
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("retry-after-ms", "5")  # the SDK honours it: retries stay quick here
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
