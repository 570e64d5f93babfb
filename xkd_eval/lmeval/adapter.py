"""``XkdLM``: one of our model adapters behind lm-evaluation-harness's ``LM`` interface.

Registered with lm-eval as ``xkd``. Built either from an adapter instance (what our runner does, so
the base LLM and a speech LLM's text arm are scored by the very objects the rest of xkd-eval uses),
or from ``pretrained=SPEC`` (any spec ``load_model`` takes) for lm-eval's own entry points.

Prompts. lm-eval renders every request itself; this class only tokenises the text it is given and
runs the adapter's ``model`` on token ids (never the adapter's ``generate``/``continuation_logits``,
which wrap the query in the chat template). So by default the model sees raw text, lm-eval's norm
for base-model scoring and the way published numbers are made. With lm-eval's
``apply_chat_template=True`` lm-eval renders each prompt through :meth:`XkdLM.apply_chat_template`,
which uses the adapter's own template (the processor's for speech LLMs), then passes the rendered
string here; a leading BOS already in the text is not added twice.

Tokenisation and scoring follow lm-eval's ``HFLM``: the context and continuation are tokenised
together and split at the context's length (so a word-boundary merge is attributed to the
continuation), BOS follows the tokenizer's default unless ``add_bos_token`` is given, an empty
context is replaced by the BOS (else EOS) token, inputs longer than ``max_length`` are truncated on
the left, and batches are right-padded for scoring and left-padded for generation.

Speech LLMs (qwen2-audio, voxtral, ...) work through the same code: their ``model`` takes
``input_ids`` alone, which is exactly their language-model path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lm_eval.models  # noqa: F401  (lm-eval only registers its own models when its registry is empty)
import torch
import transformers
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from xkd_eval.errors import XkdError

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from xkd_eval.models.base import ModelAdapter

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256
DEFAULT_MAX_LENGTH = 2048


def _parse_batch_size(batch_size: int | str | None) -> int:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(batch_size, str) and not batch_size.strip().isdigit():
        log.warning("batch_size=%r is not supported by xkd; using %d", batch_size, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    size = int(batch_size)
    if size < 1:
        raise XkdError(f"batch_size must be >= 1, not {batch_size!r}")
    return size


class _StopStrings(transformers.StoppingCriteria):
    """Per-row stop: a row is done once any stop string appears in the text it has generated."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_width = prompt_width
        # decode a little more than the longest stop needs: tokenisations differ ("\n\n" vs "\n","\n")
        longest = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in self.stops), default=0)
        self.lookback = longest + 2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stops:
            return done
        tails = input_ids[:, self.prompt_width :][:, -self.lookback :]
        for row, text in enumerate(self.tokenizer.batch_decode(tails)):
            done[row] = any(stop in text for stop in self.stops)
        return done


@register_model("xkd")
class XkdLM(TemplateLM):
    """An xkd-eval ``ModelAdapter`` (any with ``model`` and ``tokenizer``, i.e. the transformers ones)
    as an lm-eval ``LM``.

    ``XkdLM(adapter)`` wraps a loaded adapter; ``XkdLM(pretrained="hf-text:ID")`` (lm-eval:
    ``--model xkd --model_args pretrained=qwen2-audio:/path``) loads one through ``load_model``, with
    ``revision``, ``device``, ``dtype`` and any other options passed on to the adapter.
    """

    backend = "causal"

    def __init__(
        self,
        adapter: ModelAdapter | None = None,
        *,
        pretrained: str | None = None,
        revision: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        add_bos_token: bool | None = None,
        device: str | None = None,
        dtype: str | None = None,
        **adapter_options: Any,
    ) -> None:
        super().__init__()
        if (adapter is None) == (pretrained is None):
            raise XkdError("XkdLM takes either a model adapter or pretrained=SPEC (a model spec), not both or neither")
        if adapter is None:
            from xkd_eval.models import load_model

            if dtype == "auto":
                dtype = None
            options = {k: v for k, v in {"device": device, "dtype": dtype}.items() if v is not None}
            adapter = load_model(str(pretrained), revision=revision, **options, **adapter_options)
        elif adapter_options or device or dtype or revision:
            raise XkdError("XkdLM(adapter): device, dtype, revision and loading options belong to the adapter")
        if getattr(adapter, "model", None) is None or not hasattr(adapter, "tokenizer"):
            raise XkdError(
                f"model {adapter.spec} has no transformers model and tokenizer to score text with, so it cannot "
                f"run lm-eval tasks; use a transformers-based adapter (hf-text or a speech LLM)"
            )
        self.adapter = adapter
        self.batch_size = _parse_batch_size(batch_size)
        self._max_length = int(max_length) if max_length else None
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token

    # ------------------------------------------------------------------ model and tokenizer

    @property
    def model(self) -> Any:
        return self.adapter.model

    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        return self.adapter.tokenizer

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            return torch.device(getattr(self.adapter, "device", "cpu"))

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context (and the first rolling window) is conditioned on: BOS, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        from lm_eval.models.utils import resolve_max_length

        return resolve_max_length(getattr(self.model, "config", None), self.tokenizer, default=DEFAULT_MAX_LENGTH)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def get_model_info(self) -> dict[str, Any]:
        """Recorded by ``simple_evaluate`` in ``results["config"]``."""
        return {"xkd_model": self.adapter.spec, "xkd_identity": self.adapter.identity()}

    # ------------------------------------------------------------------ tokenisation

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            bos = self.tokenizer.bos_token
            if bos and string.startswith(bos):  # already rendered with its BOS (a chat template's output)
                add_special_tokens = False
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **options)

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ chat template

    def _template_owner(self) -> Any:
        processor = getattr(self.adapter, "processor", None)
        if getattr(processor, "chat_template", None):
            return processor
        return self.tokenizer

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.adapter.model_id)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template:
            return None
        template = getattr(self._template_owner(), "chat_template", None)
        if isinstance(template, dict):
            key = chat_template if isinstance(chat_template, str) else "default"
            return template.get(key)
        return template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The adapter's chat template over lm-eval's messages; a system turn the template rejects is
        dropped, as lm-eval's HFLM does."""
        import jinja2

        owner = self._template_owner()
        options = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        options["continue_final_message"] = not add_generation_prompt
        try:
            return owner.apply_chat_template(chat_history, **options)
        except jinja2.exceptions.TemplateError:
            log.warning("the chat template rejected the messages; retrying without the system turn")
            return owner.apply_chat_template([m for m in chat_history if m["role"] != "system"], **options)

    # ------------------------------------------------------------------ scoring

    def _forward_logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """Log-softmax (float32) of the model's logits for right-padded token rows: [B, W, V]."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention[i, : len(row)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)).logits
        return torch.log_softmax(logits.float(), dim=-1)

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[Any, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """(sum of log-probabilities of the continuation tokens, whether greedy decoding yields them),
        for each (cache key, context ids, continuation ids); longest first, in batches."""
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][1]) + len(requests[i][2])))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="xkd loglikelihood")
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows, spans = [], []
            for i in chunk:
                _, context, continuation = requests[i]
                if not continuation:
                    spans.append((0, 0))
                    rows.append((context or [self.prefix_token_id])[-self.max_length :])
                    continue
                if len(continuation) > self.max_length:
                    raise XkdError(f"a continuation of {len(continuation)} tokens exceeds max_length {self.max_length}")
                # the model sees context + continuation minus its last token (it predicts that one);
                # anything beyond max_length is cut on the left
                whole = (context + continuation)[-(self.max_length + 1) :]
                row = whole[:-1]
                spans.append((len(row) - len(continuation), len(continuation)))
                rows.append(row)
            logprobs = self._forward_logprobs(rows)
            for i, row_logprobs, (first, count) in zip(chunk, logprobs, spans, strict=True):
                cache_key, _, continuation = requests[i]
                if count == 0:
                    results[i] = (0.0, True)
                    continue
                scored = row_logprobs[first : first + count]
                target = torch.tensor(continuation, dtype=torch.long, device=scored.device)
                total = float(scored.gather(-1, target.unsqueeze(-1)).sum())
                greedy = bool((scored.argmax(dim=-1) == target).all())
                results[i] = (total, greedy)
                if cache_key is not None:
                    self.cache_hook.add_partial("loglikelihood", cache_key, results[i])
            bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts (perplexity tasks), windowed as lm-eval's HFLM does: the text
        (after the BOS/EOS prefix token) is cut into disjoint windows of ``max_length`` tokens, each
        token predicted exactly once; a text within ``max_length`` is a single window."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows: list[tuple[None, list[int], list[int]]] = []
        owners: list[int] = []
        for index, (text,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(text, add_special_tokens=False)
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[owner] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Generate for each (context, gen_kwargs), stopping at any of ``until`` (and EOS) or after
        ``max_gen_toks``; the text is cut before the first stop sequence. Requests with the same
        generation options are batched, left-padded."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, req in enumerate(requests):
            key = json.dumps(req.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="xkd generate_until")
        for indices in groups.values():
            options = normalize_gen_kwargs(dict(requests[indices[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(options.pop("until", None), eos=eos_text)
            max_gen_toks = int(options.pop("max_gen_toks"))
            if "max_length" in options:  # HF's prompt+generation length: lm-eval says use max_gen_toks
                options.pop("max_length")
                log.warning("ignoring max_length in generation kwargs; use max_gen_toks")
            max_context = self.max_length - max_gen_toks
            if max_context < 1:
                raise XkdError(
                    f"max_gen_toks={max_gen_toks} leaves no room for the prompt (max_length {self.max_length})"
                )
            encoded = {i: self.tok_encode(requests[i].args[0])[-max_context:] for i in indices}
            indices = sorted(indices, key=lambda i: -len(encoded[i]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                texts = self._generate([encoded[i] for i in chunk], until, max_gen_toks, dict(options))
                for i, text in zip(chunk, texts, strict=True):
                    results[i] = postprocess_generated_text(text, until, None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def _generate(self, prompts: list[list[int]], until: list[str], max_gen_toks: int, options: dict) -> list[str]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[i, width - len(prompt) :] = 1
        do_sample = bool(options.pop("do_sample", False))
        temperature = options.pop("temperature", 0.0)
        if do_sample:
            options["temperature"] = temperature
        else:  # greedy: clear sampling defaults a generation_config may carry
            options |= {"temperature": None, "top_p": None, "top_k": None}
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=max_gen_toks,
                do_sample=do_sample,
                pad_token_id=self.pad_token_id,
                stopping_criteria=transformers.StoppingCriteriaList([_StopStrings(self.tokenizer, until, width)]),
                **options,
            )
        sequences = output.sequences if hasattr(output, "sequences") else output
        return [self.tok_decode(row[width:].tolist()) for row in sequences]


__all__ = ["XkdLM"]
