"""Open-ended answers scored 1-5 by a judge LLM behind any OpenAI-compatible endpoint.

The judge is opt-in: every score records the judge model, the endpoint, a hash of the exact prompt
template and the sampling settings, so a number can always be traced to how it was produced.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from xkd_eval.errors import XkdError
from xkd_eval.records import Item, Score

# Rubric of VoiceBench's open-ended judge (1-5 for helpfulness, relevance, accuracy, detail), which
# its Overall uses, phrased for a single user turn and a single reply.
OPEN_PROMPT = """I need your help to evaluate the performance of several models in a speech interaction \
scenario. The models receive the user's speech input and respond with speech output. For evaluation, \
the user's speech has been transcribed into text, and the model's reply is given as text too. Your task \
is to rate the model's reply on how well it serves the user, considering that the exchange is spoken.

Rate it from 1 to 5:
1 point: The reply is largely irrelevant, incorrect, or fails to address the user's query; it may be off-topic or wrong.
2 points: The reply is somewhat relevant but lacks accuracy or completeness; it only partly answers the query or contains errors.
3 points: The reply is relevant and mostly accurate, but it may lack conciseness or include details that do not help a spoken conversation.
4 points: The reply is relevant, accurate and concise, giving a clear answer without needless elaboration.
5 points: The reply is exceptionally relevant, accurate and to the point; it addresses the query directly and efficiently and suits a spoken exchange.

Below are the transcription of the user's instruction and the model's reply:
### [Instruction]: {prompt}
### [Response]: {response}

After evaluating, output the score only, without anything else.
You don't need to provide any explanations."""

QA_PROMPT = """### Question
{prompt}

### Reference answer
{reference}

### Candidate answer
{response}

Is the candidate answer correct given the question and the reference answer? Answer with Yes or No only."""


def prompt_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge lives and how it samples. The API key is read from ``api_key_env``."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    temperature: float = 0.5
    n: int = 3  # samples per item; the score is their mean
    max_tokens: int = 8
    timeout_s: float = 60.0
    max_retries: int = 3  # timeouts, 429 and 5xx retried with backoff before the item's judgement fails
    api_key_env: str = "OPENAI_API_KEY"

    def record(self, template: str) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("api_key_env")
        fields.pop("timeout_s")
        fields.pop("max_retries")
        return {"judge_" + k: v for k, v in fields.items()} | {"judge_prompt_sha256": prompt_hash(template)}


def ask_judge(config: JudgeConfig, content: str) -> list[str]:
    """One chat completion with ``n`` choices, through the ``openai`` SDK (its retries of timeouts, 429 and 5xx
    with backoff); raises XkdError naming the endpoint on a failure that persists. The key is never recorded."""
    import openai

    client = openai.OpenAI(
        base_url=config.base_url,
        api_key=os.environ.get(config.api_key_env) or "EMPTY",  # a local server takes any key
        timeout=config.timeout_s,
        max_retries=config.max_retries,
    )
    try:
        reply = client.chat.completions.create(
            model=config.model,
            messages=[{"role": "user", "content": content}],
            temperature=config.temperature,
            n=config.n,
            max_tokens=config.max_tokens,
        )
        return [choice.message.content or "" for choice in reply.choices]
    except (openai.APIError, AttributeError, TypeError) as exc:
        raise XkdError(f"judge at {config.base_url} (model {config.model}) failed: {exc}") from exc


_FIRST_DIGIT = re.compile(r"[1-5]")


def score_open(item: Item, response: str, *, judge: JudgeConfig | None = None) -> Score:
    judge = judge or JudgeConfig()
    meta = judge.record(OPEN_PROMPT)
    try:
        replies = ask_judge(judge, OPEN_PROMPT.format(prompt=item.prompt, response=response or ""))
    except XkdError as exc:
        return Score(value=None, details=meta | {"judge_error": str(exc)})
    ratings = [int(m.group()) for r in replies if (m := _FIRST_DIGIT.search(r))]
    if not ratings:
        return Score(value=None, details=meta | {"judge_replies": replies, "judge_error": "no 1-5 rating in replies"})
    return Score(value=statistics.fmean(ratings), details=meta | {"judge_ratings": ratings})


def judge_qa(item: Item, response: str, judge: JudgeConfig) -> tuple[bool | None, dict[str, Any]]:
    """Yes/no majority of the judge's samples (VoiceBench's GPT half of the SD-QA score)."""
    meta = judge.record(QA_PROMPT)
    content = QA_PROMPT.format(prompt=item.prompt, reference=" / ".join(item.references), response=response or "")
    try:
        replies = ask_judge(judge, content)
    except XkdError as exc:
        return None, meta | {"judge_error": str(exc)}
    votes = [r.strip().lower().startswith("yes") for r in replies]
    return sum(votes) * 2 > len(votes), meta | {"judge_votes": votes}


def summarize_open(scores: Sequence[Score]) -> dict[str, Any]:
    values = [s.value for s in scores if s.value is not None]
    n = len(scores)
    failures = n - len(values)
    return {
        "score": statistics.fmean(values) if values else float("nan"),
        "n": n,
        "extraction_failures": failures,
        "extraction_failure_rate": 100.0 * failures / n if n else float("nan"),
        "scale": "1-5",
    }
