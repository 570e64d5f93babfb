"""``openai:<model>``: any OpenAI-compatible chat-completions endpoint (vLLM's or SGLang's server, llama.cpp,
a hosted API), through the official ``openai`` SDK.

Where: ``--api-base``, else ``OPENAI_BASE_URL``, else OpenAI's API; the key from ``OPENAI_API_KEY`` (never
written anywhere). Speech goes as an ``input_audio`` part (16 kHz WAV, base64) before the instruction, as
the transformers adapters order it. A bounded number of requests is in flight; timeouts, 429 and 5xx are
retried with backoff by the SDK; a failure that persists is recorded on its item while the run goes on,
except one that ends the endpoint for every item (unreachable, key refused, model not served): the run then
stops with every answer so far saved, and a rerun asks only the rest.

MCQ options (``letter``/``cloze``) are scored from the server's ``prompt_logprobs`` (a vLLM extension): the
option is sent as the assistant's reply, continued rather than closed, and its tokens are found at the end of
the prompt. A server without them is refused before any item is asked.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from xkd_eval.audio import wav_base64
from xkd_eval.errors import AudioError, EndpointError, PartialFailure, XkdError
from xkd_eval.models.base import GenerationSettings, ModelAdapter, Query
from xkd_eval.models.serving import continuation_span

log = logging.getLogger(__name__)

OPENAI_API = "https://api.openai.com/v1"
CONTINUE_REPLY = {"add_generation_prompt": False, "continue_final_message": True}  # vLLM's chat extras
AUDIO_SLACK = 2  # tokens a boundary merge may add to a text-only prompt; any clip adds far more


def endpoint_url(api_base: str | None) -> str:
    return (api_base or os.environ.get("OPENAI_BASE_URL") or OPENAI_API).rstrip("/")


class OpenAIAdapter(ModelAdapter):
    """``openai:MODEL``. ``client`` takes a ready ``openai.OpenAI`` (tests)."""

    adapter = "openai"
    backend = "openai"
    supports_audio: ClassVar[bool | None] = True  # the endpoint decides; a clip it drops is caught per item
    engine_batch = 64  # requests handed over at a time: keeps the slots busy; a batch is what progress shows

    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        api_base: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        audio_subtype: str = "PCM_16",
        client: Any = None,
        device: str | None = None,  # a local-model option: nothing to place here
    ) -> None:
        super().__init__(model_id, revision=revision)
        if max_concurrency < 1:
            raise XkdError("--max-concurrency must be >= 1")
        self.base_url = endpoint_url(api_base)
        self.max_concurrency = max_concurrency
        self.audio_subtype = audio_subtype
        self._text_prompt_tokens: dict[str, int] = {}
        self._baseline_lock = threading.Lock()  # requests in flight share one baseline per instruction
        self._can_rank: bool | None = None
        if client is None:
            import openai

            key = os.environ.get(api_key_env)
            if not key and self.base_url == OPENAI_API:
                raise XkdError(f"openai:{model_id} on {OPENAI_API} needs a key: set {api_key_env}")
            client = openai.OpenAI(
                base_url=self.base_url, api_key=key or "EMPTY", timeout=timeout_s, max_retries=max_retries
            )
        self.client = client
        self._check_served()

    # ------------------------------------------------------------------ the endpoint

    def _fatal(self, exc: Exception, *, mid_run: bool = True) -> EndpointError | None:
        """The error as one that ends the run, or None if it is the item's alone."""
        import openai

        where = f"{self.base_url} (model {self.model_id})"
        rerun = "; the answers so far are saved, rerun to go on" if mid_run else ""
        if isinstance(exc, openai.APITimeoutError):
            return EndpointError(f"{where} did not answer in time, retries spent{rerun}")
        if isinstance(exc, openai.APIConnectionError):
            return EndpointError(
                f"cannot reach {self.base_url}: {exc}; is the server running? (--api-base or OPENAI_BASE_URL){rerun}"
            )
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return EndpointError(f"{where} refused the API key ({exc.status_code}): check OPENAI_API_KEY")
        if isinstance(exc, openai.NotFoundError):
            return EndpointError(f"{where}: not found (404): {_message(exc)}; check the model name and --api-base")
        return None

    def _ended(self, exc: Exception, *, mid_run: bool = True) -> EndpointError:
        """The error that ends the run for a failure outside any item's batch (a probe, a baseline)."""
        return self._fatal(exc, mid_run=mid_run) or EndpointError(f"{self.base_url}: {_message(exc)}")

    def _check_served(self) -> None:
        """Reachable, key accepted, and the model served: one clear line before any item is asked."""
        import openai

        try:
            served = [m.id for m in self.client.with_options(max_retries=1).models.list()]
        except openai.NotFoundError:  # a server without /models: the first request will tell
            return
        except openai.APIError as exc:
            raise self._ended(exc, mid_run=False) from exc
        if served and self.model_id not in served:
            shown = ", ".join(served[:12]) + (" ..." if len(served) > 12 else "")
            raise EndpointError(f"{self.base_url} serves no model named {self.model_id!r}; it serves: {shown}")

    def identity(self) -> dict[str, Any]:
        # the served name is the model (serve other weights under another name); the URL is where, not what
        return super().identity() | {"backend": "openai", "audio": f"wav {self.audio_subtype}"}

    # ------------------------------------------------------------------ requests

    def messages(self, query: Query, reply: str | None = None, *, clip: str | None = None) -> list[dict[str, Any]]:
        """The request's turns: the clip (base64 WAV, or ``clip`` in its place) before the text, and ``reply`` as
        the assistant's turn to be continued."""
        content: Any = query.text
        if query.audio is not None:
            data = clip or wav_base64(query.audio, subtype=self.audio_subtype)
            content = [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                       {"type": "text", "text": query.text}]  # fmt: skip
        turns = [{"role": "user", "content": content}]
        if reply is not None:
            turns.append({"role": "assistant", "content": reply})
        return turns

    def render_prompt(self, query: Query) -> str:
        """The request's messages, the clip shown by name (the server renders the template; the samples are part
        of each result's key)."""
        return json.dumps(self.messages(query, clip=f"<{query.item_id}.wav>"), ensure_ascii=False)

    def _all(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run the calls, at most ``max_concurrency`` in flight; failures become a PartialFailure whose answers
        keep every call that succeeded (a fatal one included, so nothing answered is asked twice)."""
        results: list[Any] = [None] * len(calls)
        failures: dict[int, str] = {}
        fatal: EndpointError | None = None

        def attempt(index: int) -> None:
            nonlocal fatal
            if fatal is not None:  # the endpoint is gone: do not queue more requests at it
                failures[index] = str(fatal)
                return
            try:
                results[index] = calls[index]()
            except XkdError as exc:
                failures[index] = str(exc)
            except Exception as exc:
                ended = self._fatal(exc)
                if ended is not None:
                    fatal = fatal or ended
                failures[index] = str(ended or f"{type(exc).__name__}: {_message(exc)}")

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(len(calls), 1))) as pool:
            list(pool.map(attempt, range(len(calls))))
        if failures:
            raise PartialFailure(results, failures, fatal)
        return results

    def _text_baseline(self, text: str) -> int:
        """Prompt tokens of the same request without its clip (asked once per instruction)."""
        with self._baseline_lock:
            if text not in self._text_prompt_tokens:
                response = self.client.chat.completions.create(
                    model=self.model_id, messages=self.messages(Query("baseline", text)), max_tokens=1, temperature=0.0
                )
                self._text_prompt_tokens[text] = _prompt_tokens(response)
            return self._text_prompt_tokens[text]

    def _ask_baselines(self, queries: Sequence[Query]) -> None:
        """The text-only baselines of a batch's spoken queries, asked before any clip: an endpoint that dies
        mid-batch then cannot take answers already received down with a baseline it no longer gives."""
        import openai

        for text in dict.fromkeys(q.text for q in queries if q.audio is not None):
            try:
                self._text_baseline(text)
            except openai.APIError as exc:
                raise self._ended(exc) from exc

    def _check_heard(self, query: Query, prompt_tokens: int | None, reply_tokens: int = 0) -> None:
        if query.audio is None or prompt_tokens is None:
            return
        baseline = self._text_baseline(query.text)
        if prompt_tokens <= baseline + reply_tokens + (AUDIO_SLACK if reply_tokens else 0):
            raise AudioError(
                f"item {query.item_id}: the server's prompt holds {prompt_tokens} tokens, no more than the text alone "
                f"({baseline}{f' + {reply_tokens} of the option' if reply_tokens else ''}): the clip did not reach "
                f"{self.model_id}; check that the served model takes audio"
            )

    def generate(self, queries: Sequence[Query], settings: GenerationSettings) -> list[str]:
        sampling: dict[str, Any] = (
            {"temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed}
            if settings.do_sample
            else {"temperature": 0.0}
        )

        def ask(query: Query) -> str:
            response = self.client.chat.completions.create(
                model=self.model_id, messages=self.messages(query), max_tokens=settings.max_new_tokens, **sampling
            )
            self._check_heard(query, _prompt_tokens(response))
            return (response.choices[0].message.content or "").strip()

        self._ask_baselines(queries)
        return self._all([lambda q=q: ask(q) for q in queries])

    def _scored(self, messages: list[dict[str, Any]]) -> Any:
        """The last turn (the assistant's) continued rather than closed, and the prompt's own tokens'
        log-probabilities asked for (vLLM's chat extras)."""
        return self.client.chat.completions.create(
            model=self.model_id,
            messages=messages,
            max_tokens=1,
            temperature=0.0,
            extra_body={**CONTINUE_REPLY, "prompt_logprobs": 0},
        )

    def _continued(self, query: Query, continuation: str) -> float:
        positions = prompt_logprobs_of(self._scored(self.messages(query, reply=continuation)))
        if positions is None:
            raise XkdError(f"{self.base_url} returned no prompt_logprobs for item {query.item_id}")
        chosen = [next(iter(p.values())) for p in positions if p]  # k=0: the prompt's own token alone
        span = continuation_span([c.get("decoded_token") or "" for c in chosen], continuation)
        self._check_heard(query, len(positions), span)
        return float(sum(c["logprob"] for c in chosen[-span:]))

    def continuation_logprobs(self, queries: Sequence[Query], continuations: Sequence[str]) -> list[float]:
        self.check_can_rank("cloze")
        self._ask_baselines(queries)
        return self._all([lambda q=q, c=c: self._continued(q, c) for q, c in zip(queries, continuations, strict=True)])

    def check_can_rank(self, mcq_mode: str) -> None:
        """One probe (a two-turn chat, the reply continued) before any item: does the server return prompt
        log-probabilities of a given reply?"""
        if self._can_rank is None:
            import openai

            try:
                response = self._scored(self.messages(Query("probe", "Say yes."), reply=" Yes"))
                self._can_rank = bool(prompt_logprobs_of(response))
            except openai.BadRequestError:
                self._can_rank = False
            except openai.APIError as exc:
                raise self._ended(exc) from exc
        if not self._can_rank:
            raise XkdError(
                f"{self.base_url} does not return prompt log-probabilities of a given reply (vLLM's prompt_logprobs "
                f"with continue_final_message), so openai:{self.model_id} cannot rank options (--mcq-mode "
                f"{mcq_mode}); --mcq-mode generate works with any endpoint"
            )

    def continuation_logits(self, queries: Sequence[Query], continuations: Sequence[str]):
        raise XkdError(
            "openai: models give log-probabilities of given tokens, not full logits: the KL diagnostics need a "
            "transformers model"
        )


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(getattr(exc, "message", None) or exc).splitlines()[0][:300]


def _prompt_tokens(response: Any) -> int | None:
    usage = getattr(response, "usage", None)
    return getattr(usage, "prompt_tokens", None) if usage is not None else None


def prompt_logprobs_of(response: Any) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's top-level ``prompt_logprobs`` of a chat completion (the SDK keeps unknown fields as extras):
    one entry per prompt token, the first None, each a {token id: {logprob, rank, decoded_token}}."""
    extra = getattr(response, "model_extra", None) or {}
    value = extra.get("prompt_logprobs", getattr(response, "prompt_logprobs", None))
    return value if isinstance(value, list) else None
