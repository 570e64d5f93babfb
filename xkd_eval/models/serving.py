"""What the serving backends (``vllm:``, ``openai:``) share: the folder behind a spec, the prompts our
transformers adapters render, and how a continuation's tokens are found among a prompt's log-probabilities.

The point of a serving backend is speed, not another model: every prompt it sends is the one the
transformers adapter of the same family renders (same chat template, same instruction), so that answers
can be compared item by item with the HF backend's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.models.base import Query


@dataclass(frozen=True)
class ServedModel:
    """A spec's model as an engine loads it: a hub id or folder, the revision results are keyed by, the
    transformers adapter family whose prompts it answers, and its config."""

    source: str  # hub id or local folder the engine loads
    revision: str | None
    family: str  # the transformers adapter whose chat turns and template the prompts follow
    config: Mapping[str, Any]


def served_model(model_id: str, revision: str | None = None) -> ServedModel:
    """A named model (exported once as a stock checkpoint), a local folder or a hub id."""
    from xkd_eval.models import MODEL_TYPES, model_config, served_model_folder

    named = served_model_folder(model_id)
    if named is not None:
        folder, revision = named
        source = str(folder)
    else:
        source = str(Path(model_id).expanduser()) if Path(model_id).expanduser().is_dir() else model_id
    config = model_config(source, revision)
    return ServedModel(source, revision, MODEL_TYPES.get(config["model_type"], "hf-text"), config)


def audio_token_id(config: Mapping[str, Any]) -> int | None:
    """The id that stands for audio in the model's prompts (None for a text LLM)."""
    for section in (config, config.get("thinker_config") or {}):
        for name in ("audio_token_id", "audio_token_index"):
            if section.get(name) is not None:
                return int(section[name])
    return None


class PromptRenderer:
    """The prompts a transformers adapter family renders, without its weights: the family's chat turns
    through the model's own processor or tokenizer template."""

    def __init__(self, family: str, source: str, revision: str | None) -> None:
        from xkd_eval.models import adapter_class

        self.family = adapter_class(family)
        if hasattr(self.family, "load_processor"):
            self.owner = self.family.load_processor(source, revision=revision)
        else:
            from transformers import AutoTokenizer

            self.owner = AutoTokenizer.from_pretrained(source, revision=revision)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.owner, "tokenizer", self.owner)

    def messages(self, query: Query) -> list[dict[str, Any]]:
        return self.family.chat_messages(query)

    def render(self, query: Query) -> str:
        return self.owner.apply_chat_template(self.messages(query), tokenize=False, add_generation_prompt=True)


def continuation_span(decoded_tokens: Sequence[str], continuation: str) -> int:
    """How many of a prompt's last tokens spell ``continuation``, from the tokens the server decoded: an
    API model's tokenizer is not ours to run. A token that straddles the boundary (merged with the text
    before it) counts with the continuation, as the transformers backend counts it."""
    target = len(continuation)
    if target == 0:
        raise XkdError("an empty continuation has no log-likelihood")
    spelled = ""
    for count, token in enumerate(reversed(decoded_tokens), start=1):
        spelled = token + spelled
        if len(spelled) >= target:
            if not spelled.endswith(continuation):
                raise XkdError(
                    f"the prompt's last tokens spell {spelled[-target - 8 :]!r}, not the option {continuation!r}: "
                    "the server's chat template changed the reply (trimmed it?); use --mcq-mode generate"
                )
            return count
    raise XkdError(f"the prompt is shorter than the option {continuation!r}")
