"""lm-evaluation-harness integration: XkdLM against hand computations, and whole lm-eval runs of local
YAML tasks (``custom_dataset``, no hub) on tiny random models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_models import build_qwen2_audio, build_text_model

from xkd_eval.errors import UnknownNameError, XkdError
from xkd_eval.tasks import all_task_names, get_task

MC_DOCS = [
    {"question": "Which is a mammal?", "choices": ["shark", "whale", "trout", "squid"], "label": 1},
    {"question": "Paris is the capital of", "choices": ["France", "Spain"], "label": 0},
    {"question": "Is a whale a fish?", "choices": ["yes", "no"], "label": 1},
    {"question": "The answer is", "choices": ["A", "B", "C", "D"], "label": 3},
    {"question": "Sharks are", "choices": ["fish", "mammals", "birds"], "label": 0},
]
GEN_QUESTIONS = ["Which is a mammal?", "The capital of France?", "Is it plausible?", "Say yes or no."]

DOCS_MODULE = """
import json
from pathlib import Path

import datasets

HERE = Path(__file__).parent


def mc(**kwargs):
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(json.loads((HERE / "mc.json").read_text()))})


def gen(**kwargs):
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(json.loads((HERE / "gen.json").read_text()))})
"""

MC_YAML = """
task: xkd_mc
custom_dataset: !function docs.mc
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

GEN_YAML = """
task: xkd_gen
custom_dataset: !function docs.gen
test_split: test
output_type: generate_until
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def instance(request_type: str, *args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=request_type, doc={}, arguments=tuple(args), idx=0)


@pytest.fixture(scope="module")
def text_adapter(tmp_path_factory):
    from xkd_eval.models import load_model

    return load_model(f"hf-text:{build_text_model(tmp_path_factory.mktemp('tiny_llama'))}", device="cpu")


@pytest.fixture(scope="module")
def speech_adapter(tmp_path_factory):
    from xkd_eval.models import load_model

    return load_model(f"qwen2-audio:{build_qwen2_audio(tmp_path_factory.mktemp('tiny_qwen2_audio'))}", device="cpu")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Two lm-eval tasks as YAML with a custom_dataset function: nothing is read from the hub. The
    generation task's answers are filled in by the test that runs it."""
    root = tmp_path_factory.mktemp("lmeval_tasks")
    (root / "docs.py").write_text(DOCS_MODULE)
    (root / "mc.json").write_text(json.dumps(MC_DOCS))
    (root / "xkd_mc.yaml").write_text(MC_YAML)
    (root / "xkd_gen.yaml").write_text(GEN_YAML)
    return root


def hand_loglikelihood(adapter, context: str, continuation: str) -> tuple[float, bool]:
    """Straight from the model's logits: tokenise context+continuation together, split at the
    context's length, sum log_softmax over the continuation's tokens. Trailing spaces of the context
    belong to the continuation (lm-eval's rule)."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped) :] + continuation
    tok = adapter.tokenizer
    whole = tok.encode(context + continuation)
    n = len(tok.encode(context))
    with torch.no_grad():
        logits = adapter.model(torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    cont = whole[n:]
    total = sum(float(logprobs[n - 1 + j, t]) for j, t in enumerate(cont))
    greedy = all(int(logprobs[n - 1 + j].argmax()) == t for j, t in enumerate(cont))
    return total, greedy


REQUESTS = [
    ("Question: Which is a mammal?\nAnswer:", " whale"),
    ("Question: Which is a mammal?\nAnswer:", " shark"),
    ("The answer is", " A. The answer is B."),
    ("Paris is the capital of ", "France"),  # trailing space moves to the continuation
    ("yes", " no"),
    ("", "Listen to the audio"),  # empty context: conditioned on the prefix token
]


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    from xkd_eval.lmeval import XkdLM

    assert get_model("xkd") is XkdLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm-eval's own models are still found


def test_loglikelihood_matches_hand_computation(text_adapter):
    from xkd_eval.lmeval import XkdLM

    lm = XkdLM(text_adapter)
    context, continuation = REQUESTS[0]
    [(logprob, greedy)] = lm.loglikelihood([instance("loglikelihood", context, continuation)])
    expected, expected_greedy = hand_loglikelihood(text_adapter, context, continuation)
    assert logprob == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy
    assert logprob < 0


def test_batched_loglikelihood_equals_per_request(text_adapter):
    from xkd_eval.lmeval import XkdLM

    requests = [instance("loglikelihood", c, x) for c, x in REQUESTS]
    batched = XkdLM(text_adapter, batch_size=4).loglikelihood(requests)
    single = XkdLM(text_adapter, batch_size=1).loglikelihood(requests)
    for (a, ga), (b, gb), (context, continuation) in zip(batched, single, REQUESTS, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
        if context:
            assert a == pytest.approx(hand_loglikelihood(text_adapter, context, continuation)[0], abs=1e-4)


def test_loglikelihood_rolling_single_window_and_windows(text_adapter):
    from xkd_eval.lmeval import XkdLM

    text = "Which is a mammal? A whale is a mammal. Sharks are fish."
    [whole] = XkdLM(text_adapter).loglikelihood_rolling([instance("loglikelihood_rolling", text)])
    # one window: every token conditioned on the prefix token (EOS here: the tokenizer has no BOS)
    tok = text_adapter.tokenizer
    ids = [tok.eos_token_id, *tok.encode(text, add_special_tokens=False)]
    with torch.no_grad():
        logprobs = torch.log_softmax(text_adapter.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = sum(float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1))
    assert whole == pytest.approx(expected, abs=1e-4)
    [windowed] = XkdLM(text_adapter, max_length=5).loglikelihood_rolling([instance("loglikelihood_rolling", text)])
    assert math.isfinite(windowed) and windowed != pytest.approx(whole, abs=1e-6)


def test_generate_until_stops_and_truncates(text_adapter):
    from xkd_eval.lmeval import XkdLM

    lm = XkdLM(text_adapter)
    prompts = ["Q: Which is a mammal?\nA:", "The answer is", "Listen"]
    free = lm.generate_until([instance("generate_until", p, {"until": [], "max_gen_toks": 5}) for p in prompts])
    assert all(len(text_adapter.tokenizer.encode(t, add_special_tokens=False)) <= 6 for t in free)
    # the same prompts one at a time give the same greedy text (left padding is masked)
    for prompt, text in zip(prompts, free, strict=True):
        assert lm.generate_until([instance("generate_until", prompt, {"until": [], "max_gen_toks": 5})]) == [text]
    longest = max(free, key=len)
    assert len(longest) >= 2, "a random model should say something"
    stop = longest[len(longest) // 2]
    prompt = prompts[free.index(longest)]
    [cut] = lm.generate_until([instance("generate_until", prompt, {"until": [stop], "max_gen_toks": 5})])
    assert cut == longest.split(stop)[0]


def test_speech_llm_text_arm(speech_adapter):
    from xkd_eval.lmeval import XkdLM

    lm = XkdLM(speech_adapter)
    context, continuation = REQUESTS[0]
    [(logprob, _)] = lm.loglikelihood([instance("loglikelihood", context, continuation)])
    assert logprob == pytest.approx(hand_loglikelihood(speech_adapter, context, continuation)[0], abs=1e-4)
    [text] = lm.generate_until([instance("generate_until", "The answer is", {"until": ["\n"], "max_gen_toks": 4})])
    assert isinstance(text, str) and "\n" not in text
    assert "<|im_start|>user" in lm.apply_chat_template([{"role": "user", "content": "hi"}])


def test_run_multiple_choice_task(text_adapter, task_dir):
    from xkd_eval.lmeval import XkdLM, run_lm_eval_task

    rows = run_lm_eval_task(text_adapter, "lm-eval/xkd_mc", include_path=task_dir, include_defaults=False)
    assert [r["item_id"] for r in rows] == [str(i) for i in range(len(MC_DOCS))]
    assert rows.metric == "acc" and rows.task == "xkd_mc"
    assert rows.value == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    lm = XkdLM(text_adapter)
    for row, doc in zip(rows, MC_DOCS, strict=True):
        assert row["score"] in (0.0, 1.0) and row["correct"] == (row["score"] == 1.0) and row["metric"] == "acc"
        assert row["prompt"] == f"Question: {doc['question']}\nAnswer:"
        # the response is the option lm-eval's own log-likelihoods favour, recomputed here
        scores = lm.loglikelihood([instance("loglikelihood", row["prompt"], " " + c) for c in doc["choices"]])
        best = max(range(len(scores)), key=lambda i: scores[i][0])
        assert row["response"] == doc["choices"][best] and row["extracted"] == str(best)
        assert row["correct"] == (best == doc["label"])

    limited = run_lm_eval_task(text_adapter, "xkd_mc", include_path=task_dir, include_defaults=False, limit=2)
    assert len(limited) == 2
    chat = run_lm_eval_task(
        text_adapter, "xkd_mc", include_path=task_dir, include_defaults=False, limit=1, apply_chat_template=True
    )
    assert chat[0]["prompt"].startswith("<|im_start|>user\nQuestion: Which is a mammal?")


def test_run_generate_task(text_adapter, task_dir):
    from xkd_eval.lmeval import XkdLM, run_lm_eval_task

    # answers: the model's own greedy output for the first two docs (so exact_match is 1 there),
    # something it cannot say for the others
    prompts = [f"Q: {q}\nA:" for q in GEN_QUESTIONS]
    options = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
    greedy = XkdLM(text_adapter).generate_until([instance("generate_until", p, options) for p in prompts])
    answers = [*greedy[:2], "\u2603 not this", "\u2603 nor this"]
    (task_dir / "gen.json").write_text(
        json.dumps([{"question": q, "answer": a} for q, a in zip(GEN_QUESTIONS, answers, strict=True)])
    )

    rows = run_lm_eval_task(text_adapter, "xkd_gen", include_path=task_dir, include_defaults=False)
    assert len(rows) == len(GEN_QUESTIONS) and rows.metric == "exact_match"
    assert [r["score"] for r in rows] == [1.0, 1.0, 0.0, 0.0]
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert [r["response"] for r in rows] == greedy and [r["extracted"] for r in rows] == greedy
    assert [r["prompt"] for r in rows] == prompts
    assert rows.value == pytest.approx(0.5) and rows.aggregate["exact_match,none"] == pytest.approx(0.5)


def test_task_family():
    spec = get_task("lm-eval/arc_easy")
    assert (spec.name, spec.scorer, spec.speech) == ("lm-eval/arc_easy", "lm-eval", False)
    assert "lm-eval/<task>" in all_task_names()
    with pytest.raises(XkdError, match="run_lm_eval_task"):
        spec.load()
    with pytest.raises(UnknownNameError):
        get_task("lm-eval")


def test_unknown_task_and_unusable_model(text_adapter, task_dir):
    from xkd_eval.lmeval import XkdLM, run_lm_eval_task

    with pytest.raises(UnknownNameError, match="xkd_mc"):
        run_lm_eval_task(text_adapter, "xkd_mcq", include_path=task_dir, include_defaults=False)

    class NoModel:
        spec = "cascade:asr+llm"

    with pytest.raises(XkdError, match="cannot run lm-eval tasks"):
        XkdLM(NoModel())


def test_lm_eval_builds_from_model_args(text_adapter):
    from lm_eval.api.registry import get_model

    lm = get_model("xkd").create_from_arg_string(
        f"pretrained=hf-text:{text_adapter.model_id}", {"batch_size": "2", "device": "cpu"}
    )
    assert lm.batch_size == 2 and lm.adapter.spec == text_adapter.spec
