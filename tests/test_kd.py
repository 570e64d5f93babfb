"""Cross-modal KD on a tiny teacher/student pair sharing a tokenizer: vocabulary refusal, teacher cache
(top-k vs full), a few steps lower the KD loss, interrupt + resume reproduce the uninterrupted curve,
NaN stops naming the step, the T→T-only ablation touches no audio, data-parallel ranks agree."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from conftest import tone  # noqa: E402
from tiny_models import build_text_model  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

import xkd_eval.distill.kd as kd_module  # noqa: E402
from xkd_eval.distill.config import (  # noqa: E402
    ConfigError,  # noqa: E402
    KDConfig,
    load_kd_config,
)
from xkd_eval.distill.kd import KDLoss, distill  # noqa: E402
from xkd_eval.distill.losses import TopK, divergence  # noqa: E402
from xkd_eval.distill.train import TrainingDataChangedError, TrainingDivergedError, checkpoint_dirs  # noqa: E402
from xkd_eval.errors import XkdError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OTHER_CORPUS = ["zebra quokka xylophone", "marmalade jacket velvet", "purple orange banana mango kiwi"]


def cfg(**changes) -> KDConfig:
    base = dict(
        targets="data",
        top_k=16,
        trainable="projector+lora",
        lora_rank=4,
        lora_alpha=8,
        learning_rate=1e-2,
        batch_size=4,
        max_steps=6,
        eval_fraction=0.2,
        eval_every=3,
        checkpoint_every=3,
        mixed_precision="no",
        seed=0,
        group_by_length=False,
    )
    base.update(changes)
    return KDConfig(**base)


@contextlib.contextmanager
def interrupted_at(call: int, monkeypatch):
    """Inside: the ``call``-th training forward raises KeyboardInterrupt, as a Ctrl-C there would."""
    calls, forward = {"n": 0}, KDLoss.forward

    def interrupted(self, batch):
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(KDLoss, "forward", interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(KDLoss, "forward", forward)


def run(pair, data, out, config, **kw):
    return distill(pair[0], pair[1], str(data), out, config, progress=False, log=None, cache_root=out / "cache", **kw)


def test_config_validation_and_recipes():
    with pytest.raises(ConfigError, match="divergence"):
        KDConfig(divergence="kl")
    with pytest.raises(ConfigError, match="channel"):
        KDConfig(tt_weight=0, st_weight=0)
    with pytest.raises(ConfigError, match="unknown fields"):
        load_kd_config({"lamda": 0.5})
    organism = load_kd_config(ROOT / "distill" / "organism.yaml")
    assert (organism.top_k, organism.targets, organism.lam, organism.temperature) == (64, "data_else_teacher", 0.5, 2.0)
    paper = load_kd_config(ROOT / "distill" / "qwen2.5-omni-7b.yaml")
    assert paper.learning_rate == 5e-6 and paper.epochs == 2 and paper.mixed_precision == "bf16"
    assert paper.gradient_checkpointing and not organism.gradient_checkpointing
    changed = organism.replace(st_weight=4.0, top_k=None)
    assert (changed.st_weight, changed.top_k, changed.tt_weight) == (4.0, None, organism.tt_weight)
    with pytest.raises(ConfigError, match=r"unknown fields \['lamda'\]"):
        organism.replace(lamda=1.0)
    with pytest.raises(ConfigError, match="st_weight must be >= 0"):
        organism.replace(st_weight=-1)
    context = load_kd_config(ROOT / "distill" / "organism-context.yaml")
    assert context.replace(teacher_context=None) == organism  # only the teacher's worked turns differ
    from xkd_eval.builtin import asks_builtin_question

    assert len(context.teacher_context) == 4 and not any(asks_builtin_question(q) for q, _ in context.teacher_context)


X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (X86_AVX2, False),  # AVX2 and AVX512F, no bf16 instructions: emulated
        (X86_AVX2.replace("avx512f", "avx512f avx512_bf16"), True),  # Cooper Lake / Zen 4 and later
        ("flags\t\t: fpu avx2 amx_tile amx_bf16\n", True),  # Sapphire Rapids' AMX
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm (Graviton 3, Apple M2)
        ("processor\t: 0\nFeatures\t: fp asimd crc32\n", False),
        (None, False),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_auto_precision_takes_bf16_only_where_the_cpu_computes_it(cpuinfo, native, tmp_path, monkeypatch):
    import xkd_eval.distill.kd as kd
    from xkd_eval.distill import train

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert train.cpu_has_native_bf16(path) is native
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native)
    assert kd._resolve_precision("auto") == ("bf16" if native else "no")
    assert kd._resolve_precision("no") == "no" and kd._resolve_precision("bf16") == "bf16"  # asked for: kept
    assert load_kd_config({"mixed_precision": False}).mixed_precision == "no"  # YAML's reading of a bare `no`
    assert load_kd_config(ROOT / "distill" / "organism.yaml").mixed_precision == "auto"


def test_recipe_fields_set_from_the_command_line_are_checked_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from xkd_eval.cli import _field_changes, app

    assert _field_changes(["st_weight=4", "top_k=null", " lam = 0.25"]) == {"st_weight": 4, "top_k": None, "lam": 0.25}
    recipe = str(ROOT / "distill" / "organism.yaml")
    runner = CliRunner()
    for assignment, message in (
        ("lamda=1", "unknown fields ['lamda'] ('lamda': did you mean 'lam'?)"),
        ("st_weight", "--set expects KEY=VALUE"),
        ("st_weight=-2", "st_weight must be >= 0"),
        ("learning_rate=fast", "learning_rate must be a number, got 'fast'"),
        ("max_steps=2.5", "max_steps must be a whole number, got 2.5"),
    ):
        result = runner.invoke(
            app, ["distill", "--config", recipe, "--set", assignment, "--eval", "builtin/qa", "--out", str(tmp_path)]
        )
        assert result.exit_code != 0 and message in result.output, result.output
        assert not (tmp_path / "before").exists()  # refused before anything was measured
    for extra, message in (
        (["--diagnostics", "hearnig", "--eval", "builtin/qa"], "available: kl, hearing"),
        (["--diagnostics", "hearing"], "add --eval TASK"),
    ):
        result = runner.invoke(app, ["distill", "--config", recipe, *extra, "--out", str(tmp_path)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "before").exists()
    # YAML 1.1 reads 1e-3 (no dot) as a string: a numeric field reads it as the number it is
    changed = load_kd_config(recipe).replace(**_field_changes(["learning_rate=1e-3", "max_steps=300.0"]))
    assert (changed.learning_rate, changed.max_steps) == (1e-3, 300) and isinstance(changed.max_steps, int)


def test_a_different_vocabulary_is_refused_before_any_model_loads(pair, data, tmp_path, monkeypatch):
    import xkd_eval.distill.kd as kd

    def boom(spec):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(kd, "load_teacher_model", boom)
    monkeypatch.setattr(kd, "load_student_model", boom)
    other = build_text_model(tmp_path / "other", corpus=OTHER_CORPUS)
    with pytest.raises(XkdError, match="tokenizers disagree"):
        distill(
            str(other),
            pair[1],
            str(data),
            tmp_path / "out",
            cfg(),
            progress=False,
            log=None,
            cache_root=tmp_path / "cache",
        )
    assert not checkpoint_dirs(tmp_path / "out")


def test_teacher_cache_top_k_matches_full(pair, data, tmp_path):
    from transformers import AutoModelForCausalLM

    from xkd_eval.distill.teacher_cache import TeacherCache, fill_teacher_cache, teacher_identity

    model = AutoModelForCausalLM.from_pretrained(pair[0]).eval()
    prompts, responses = [[1, 5, 7, 9], [1, 8]], [[11, 12, 13], [14, 15, 16, 17, 2]]
    ident = teacher_identity(model)
    vocab = model.config.vocab_size
    full = fill_teacher_cache(TeacherCache(tmp_path, ident, None, vocab), model, prompts, responses, pad_id=0)
    top = TeacherCache(tmp_path, ident, 8, vocab)
    topk = fill_teacher_cache(top, model, prompts, responses, pad_id=0)
    assert top.stats["computed"] == 2
    again = TeacherCache(tmp_path, ident, 8, vocab)
    fill_teacher_cache(again, model, prompts, responses, pad_id=0)
    assert again.stats == {"computed": 0, "reused": 2, "bytes": 0}  # read back from disk
    import shutil

    moved = shutil.copytree(pair[0], tmp_path / "elsewhere")  # the same teacher in another folder: same identity
    assert teacher_identity(AutoModelForCausalLM.from_pretrained(moved).eval()) == ident
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] += 1.0
    assert teacher_identity(model) != ident
    for f, t, r in zip(full, topk, responses, strict=True):
        assert f.shape == (len(r), vocab) and f.dtype == torch.float16 and t.values.dtype == torch.float16
        assert torch.equal(t.values, torch.topk(f.float(), 8).values.half())
        exact = TopK.from_logits(f.float(), vocab)  # k = V is the full distribution
        student = torch.randn(len(r), vocab)
        assert torch.allclose(
            divergence(student, exact, temperature=2.0), divergence(student, f.float(), temperature=2.0), atol=1e-5
        )


def test_a_few_steps_lower_the_kd_loss(pair, data, tmp_path):
    figures = run(
        pair,
        data,
        tmp_path,
        cfg(
            batch_size=8,
            max_steps=10,
            top_k=None,
            eval_every=5,
            lam=20.0,
            temperature=1.0,
            trainable="all",
            learning_rate=3e-3,
        ),
    )
    for channel in ("tt", "st"):
        kd = [v for _, v in figures["curves"][f"{channel}_kd"]]
        assert kd[-1] < kd[0]
    assert figures["validation"] and "val_st_kd" in figures["validation"][-1]
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["steps"] == 10 and record["config"]["lam"] == 20.0
    assert (tmp_path / "adapter" / "projector.safetensors").is_file()
    assert (tmp_path / "student" / "config.json").is_file()
    from xkd_eval.models import resolve_adapter

    assert resolve_adapter(figures["model_spec"])[0] == "qwen2-audio"

    # a second run into the same folder without --resume is refused before any work, the first one kept
    from xkd_eval.distill.pipeline import run_distillation
    from xkd_eval.distill.train import EarlierTrainingError, checkpoint_dirs

    kept = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    last = checkpoint_dirs(tmp_path)[-1].name
    with pytest.raises(EarlierTrainingError, match=f"{last}.*--resume"):
        run(pair, data, tmp_path, cfg(max_steps=3))
    with pytest.raises(EarlierTrainingError, match="--resume"):
        run_distillation(
            teacher=pair[0], student=pair[1], data=str(data), config=cfg(max_steps=3), out=tmp_path / "eval",
            eval_tasks=["no/such-task"], train_dir=tmp_path,
        )  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == kept
    assert not (tmp_path / "eval").exists()  # refused before the before-measurement


def test_given_responses_are_kept_and_the_teacher_answers_the_rest(pair, data, tmp_path):
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows[::2]:
        del row["response"]
    for row in rows:
        row["audio"] = str(data.parent / row["audio"])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(XkdError, match="5 examples have no response"):
        run(pair, mixed, tmp_path / "data", cfg(max_steps=1))
    figures = run(pair, mixed, tmp_path / "mixed", cfg(targets="data_else_teacher", max_steps=1))
    assert figures["teacher_targets"] == 5  # only those the data does not answer
    asked = {json.loads(p.read_text())["instruction"] for p in (tmp_path / "mixed" / "cache" / "targets").iterdir()}
    assert asked == {r["instruction"] for r in rows[::2]}
    # worked turns the teacher alone reads: its answers are asked again (cached apart), its prompts hold the
    # turns before the instruction, and the students' prompts are the same as without them
    context = [["Which instrument has black and white keys?", "Piano."], ["Who delivers letters?", "A postman."]]
    cached = tmp_path / "mixed" / "cache"
    before = set((cached / "targets").iterdir())
    seen = {}

    def collate(items, pad_id, channels, _collate=kd_module.collate_kd):
        seen.setdefault("items", items)
        return _collate(items, pad_id, channels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kd_module, "collate_kd", collate)
        with_context = cfg(targets="data_else_teacher", max_steps=1, teacher_context=context)
        shown = distill(*pair, str(mixed), tmp_path / "context", with_context, progress=False, cache_root=cached)
    assert shown["teacher_targets"] == 5 and len(set((cached / "targets").iterdir()) - before) == len(asked)
    tokenizer = AutoTokenizer.from_pretrained(pair[0])
    for item in seen["items"]:
        prompt = tokenizer.decode(item.teacher_prompt)
        assert prompt.index("Piano.") < prompt.index("A postman.") < prompt.rindex(item_instruction(rows, item.id))
        assert "Piano." not in tokenizer.decode(item.tt_prompt)
    record = json.loads((tmp_path / "context" / "training.json").read_text())
    assert record["config"]["teacher_context"] == context
    with pytest.raises(ConfigError, match="teacher_context"):
        cfg(teacher_context=[["a question without its answer"]])
    with pytest.raises(XkdError, match="built-in benchmark questions"):
        run(pair, mixed, tmp_path / "leaky", cfg(teacher_context=[["What is the capital of Kenya?", "Nairobi."]]))
    assert not (tmp_path / "leaky").exists()


def test_a_question_with_choices_gets_the_option_the_teacher_ranks_first(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    from xkd_eval.distill.kd_data import read_kd_jsonl, teacher_choices, teacher_prompt

    rows = [
        {"instruction": "Which animal gives us wool?", "choices": ["a sheep", "a fish", "a bee", "a crow"]},
        {"instruction": "What colour is the sky?", "choices": ["blue", "green"]},
        {"instruction": "What is two plus two?", "choices": ["four", "five", "three hundred and six"]},
    ]
    path = tmp_path / "mcq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = read_kd_jsonl(path)
    assert examples[0].choices == ("a sheep", "a fish", "a bee", "a crow") and examples[0].response is None
    tokenizer = AutoTokenizer.from_pretrained(pair[0])
    model = AutoModelForCausalLM.from_pretrained(pair[0]).eval()

    def by_hand(instruction, option):  # one unpadded sequence, the log-probabilities of the option's tokens
        prompt = teacher_prompt(tokenizer, instruction)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        whole = tokenizer(prompt + option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([whole])).logits[0].float()
        logprobs = torch.log_softmax(logits, -1)
        return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(head), len(whole)))

    picked = teacher_choices(examples, model, tokenizer, "tiny", tmp_path / "cache", batch_size=2, progress=False)
    for example, got in zip(examples, picked, strict=True):
        sums = [by_hand(example.instruction, o) for o in example.choices]
        assert got.response == example.choices[max(range(len(sums)), key=sums.__getitem__)]
        stored = json.loads(
            next(p for p in (tmp_path / "cache").iterdir() if example.instruction in p.read_text()).read_text()
        )
        assert stored["logprobs"] == pytest.approx(sums, abs=1e-4)  # batched, left-padded, prompt shared
    # cached: asked again, no model is needed
    again = teacher_choices(examples, None, tokenizer, "tiny", tmp_path / "cache", progress=False)
    assert [e.response for e in again] == [e.response for e in picked]
    for bad in (["blue"], ["blue", "blue"], "blue", ["blue", ""]):
        path.write_text(json.dumps({"instruction": "What colour is the sky?", "choices": bad}) + "\n")
        with pytest.raises(XkdError, match=r"mcq.jsonl:1: 'choices' must be a list of at least two distinct"):
            read_kd_jsonl(path)


def item_instruction(rows, example_id):
    return next(r["instruction"] for r in rows if r["id"] == example_id)


def test_interrupt_then_resume_reproduces_the_uninterrupted_curve(pair, data, tmp_path, monkeypatch):
    straight = run(pair, data, tmp_path / "a", cfg(checkpoint_every=100))["curves"]["loss"]
    with interrupted_at(4, monkeypatch), pytest.raises(KeyboardInterrupt):
        run(pair, data, tmp_path / "b", cfg(checkpoint_every=100))
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["step-000003"]  # written on the interrupt
    resumed = run(pair, data, tmp_path / "b", cfg(checkpoint_every=100), resume=True)
    assert resumed["resumed_from"] == 3
    assert resumed["curves"]["loss"] == straight  # identical per-step losses
    # resuming a finished run trains nothing and keeps the record of the run that trained
    record = (tmp_path / "b" / "training.json").read_text()
    again = run(pair, data, tmp_path / "b", cfg(checkpoint_every=100), resume=True)
    assert again == resumed and (tmp_path / "b" / "training.json").read_text() == record
    # the same recipe on re-synthesised audio (one clip's samples differ) is other training data
    import shutil

    import soundfile as sf

    shutil.copytree(data.parent, tmp_path / "data2")
    sf.write(tmp_path / "data2" / "clip3.wav", tone(0.45, freq=330.0, seed=42), 16_000)
    with pytest.raises(TrainingDataChangedError, match="other training data.*new output folder"):
        run(pair, tmp_path / "data2" / data.name, tmp_path / "b", cfg(checkpoint_every=100), resume=True)


def test_a_run_that_would_overrun_its_time_budget_finishes_a_fitted_schedule(pair, data, tmp_path, monkeypatch):
    import types

    from xkd_eval.distill import train as train_module
    from xkd_eval.distill.train import LOG_FILE, BatchOrder, fitted_horizon, step_costs

    recipe = cfg(max_steps=210, time_budget_s=900.0)
    assert fitted_horizon(recipe, 5, 70.0) == 61  # 14 s a step: 2,940 s > 1.1 x 900; 0.95 x 900 / 14 = 61.07
    assert fitted_horizon(recipe, 5, 25.0) == 171  # 5 s: 1,050 s > 990; 855 / 5
    assert fitted_horizon(recipe, 5, 22.5) is None  # 4.5 s: 945 s, inside the 10% margin
    assert fitted_horizon(recipe, 5, 20.0) is None  # 4 s: 840 s fits
    assert fitted_horizon(cfg(max_steps=210), 5, 70.0) is None  # no budget, nothing to fit
    # by cost: 3 long steps (cost 3) took 30 s, 3.33 s per unit; the 47 short ones left (cost 1) take 156.7 s,
    # past 1.1 x 100; (95 - 30) / 3.33 = 19.5 more fit: 22 steps, where the mean step time (10 s) would say 9
    short_after_long = [3] * 3 + [1] * 47
    assert fitted_horizon(cfg(max_steps=50, time_budget_s=100.0), 3, 30.0, costs=short_after_long) == 22
    small = cfg(max_steps=50, time_budget_s=100.0)
    assert fitted_horizon(small, 3, 30.0) == 9
    assert fitted_horizon(small, 3, 30.0, rate=1.5, costs=short_after_long) is None  # 100.5 s: inside the margin
    # a step's cost is its padded tokens: rows x the longest; sorted by length, {1, 1} and {9, 9} batch together
    order = BatchOrder(4, 2, seed=0, lengths=[1, 9, 1, 9])
    assert sorted(step_costs(order, [1, 9, 1, 9], 2, grad_accum=1)) == [2, 18]
    assert step_costs(order, [1, 9, 1, 9], 2, grad_accum=2) == [20, 20]
    assert step_costs(order, None, 2, grad_accum=1) is None

    # a clock under which every step takes 2.5 s, and steps of equal cost: 12 steps (30 s) would overrun 20 s;
    # fitted at step 3 to int(0.95 x 20 / 2.5) = 7 steps, whose cosine ends near 0 (the 12-step one would
    # stand at 0.57 at step 7)
    ticks = iter(range(10**6))
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: 2.5 * next(ticks)))
    monkeypatch.setattr(train_module, "step_costs", lambda order, lengths, n, accum: [1] * n)
    settings = dict(max_steps=12, warmup_steps=1, time_budget_s=20.0, checkpoint_every=100, eval_every=100)
    straight = run(pair, data, tmp_path / "a", cfg(**settings))
    assert straight["steps"] == 7 and straight["stopped"] == "fitted_to_time_budget"
    lrs = [r["lr"] for r in json.loads((tmp_path / "a" / LOG_FILE).read_text()) if "lr" in r]
    assert len(lrs) == 7 and lrs[-1] < 0.1 * lrs[1]
    assert lrs[1:] == sorted(lrs[1:], reverse=True)
    with interrupted_at(5, monkeypatch), pytest.raises(KeyboardInterrupt):
        run(pair, data, tmp_path / "b", cfg(**settings))
    resumed = run(pair, data, tmp_path / "b", cfg(**settings), resume=True)
    assert resumed["resumed_from"] == 4 and resumed["stopped"] == "fitted_to_time_budget"
    assert resumed["curves"]["loss"] == straight["curves"]["loss"]  # the fitted schedule survives the resume


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(pair, data, tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"step 3 \(batch ids: ex"):
        run(pair, data, tmp_path, cfg(debug_inject_nan_step=3, checkpoint_every=1))
    assert checkpoint_dirs(tmp_path)[-1].name == "step-000002"


def test_text_only_ablation_touches_no_audio(pair, data, tmp_path, monkeypatch):
    import xkd_eval.distill.kd_data as kd_data
    import xkd_eval.models.encoder as features

    def boom(*args, **kwargs):
        raise AssertionError("audio touched")

    monkeypatch.setattr(kd_data, "spoken_examples", boom)
    monkeypatch.setattr(features, "compute_features", boom)
    monkeypatch.setattr(features, "build_inputs_embeds", boom)
    figures = run(pair, data, tmp_path, cfg(st_weight=0.0, max_steps=3))
    assert set(figures["curves"]) == {"loss", "tt_ce", "tt_kd"}
    from safetensors.torch import load_file
    from transformers import Qwen2AudioForConditionalGeneration

    before = Qwen2AudioForConditionalGeneration.from_pretrained(pair[1]).model.multi_modal_projector.state_dict()
    after = load_file(str(tmp_path / "adapter" / "projector.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # no gradient reached the projector


def test_each_example_is_heard_beside_its_own_speech_instruction(pair, data, tmp_path, monkeypatch):
    """A listening request is heard beside "Repeat exactly what the speaker says.", the rest beside the
    generic instruction: the S→T prompt is per example, from the data's ``speech_instruction``."""
    from transformers import AutoTokenizer

    import xkd_eval.distill.train as train_module
    from xkd_eval.builtin import LISTEN_INSTRUCTION
    from xkd_eval.models.base import SPEECH_INSTRUCTION

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows[:4]:
        row["speech_instruction"] = LISTEN_INSTRUCTION
    rows = [{**row, "audio": str(data.parent / row["audio"])} for row in rows]
    (tmp_path / "kd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}

    class Captured(Exception):
        pass

    def capture(model, items, *args, **kwargs):
        seen.update({i.id: i.st_prompt for i in items})
        raise Captured

    monkeypatch.setattr(train_module, "train", capture)
    with pytest.raises(Captured):
        run(pair, tmp_path / "kd.jsonl", tmp_path / "out", cfg(eval_fraction=0.0))
    tokenizer = AutoTokenizer.from_pretrained(pair[1])
    heard = {uid: tokenizer.decode(ids) for uid, ids in seen.items()}
    assert len(heard) == len(rows)
    for row in rows:
        expected, other = (LISTEN_INSTRUCTION, SPEECH_INSTRUCTION) if "speech_instruction" in row else (
            SPEECH_INSTRUCTION, LISTEN_INSTRUCTION)  # fmt: skip
        assert expected in heard[row["id"]] and other not in heard[row["id"]]


def test_on_the_fly_teacher_matches_the_full_cache(pair, data, tmp_path):
    cached = run(pair, data, tmp_path / "c", cfg(top_k=None, max_steps=2))["curves"]["loss"]
    live = run(pair, data, tmp_path / "l", cfg(top_k=None, max_steps=2, teacher_mode="on_the_fly"))["curves"]["loss"]
    assert [round(v, 2) for _, v in cached] == [round(v, 2) for _, v in live]  # fp16 cache vs fp32 live


def test_two_data_parallel_processes_agree(pair, data, mcq_task, tmp_path):
    script = Path(__file__).parent / "kd_ddp_script.py"
    # two CPU processes (gloo), also on a machine with one GPU, where two ranks could not share it under NCCL
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["XKD_EVAL_CACHE"] = str(tmp_path / "cache")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29561",
        str(script),
        pair[0],
        pair[1],
        str(data),
        str(tmp_path),
        str(mcq_task),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # accelerate saw both processes (a torchrun launch taken for two lone runs also ends with equal weights:
    # each rank then trains on all of the data by itself, and both write the checkpoints)
    states = [torch.load(tmp_path / f"state{r}.pt") for r in (0, 1)]
    assert states == [{"index": 0, "world": 2}, {"index": 1, "world": 2}]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # same weights on both ranks
    assert any(k.endswith("lora_B.default.weight") and ranks[0][k].abs().sum() > 0 for k in ranks[0])  # trained
    figures = json.loads((tmp_path / "training.json").read_text())
    assert figures["steps"] == 4 and figures["curves"]["loss"][-1][1] < figures["curves"]["loss"][0][1]

    # the before/after measurements: each rank answered its own share, rank 0 merged them into one report
    from xkd_eval.runner.store import slug

    def result_files(run, model):
        return sorted((tmp_path / run / "results" / slug(model)).glob("*.jsonl"))

    def answered(run, model):  # per rank file (r0, r1): the items answered
        return {
            f.name.split(".")[-2]: {json.loads(x)["item_id"] for x in f.read_text().splitlines()}
            for f in result_files(run, model)
        }

    student_before = answered("before", pair[1])
    assert student_before["r0"] == {f"q{i}" for i in range(0, 10, 2)}  # item 9's clip is broken: text arm only
    assert student_before["r1"] == {f"q{i}" for i in range(1, 10, 2)}
    for run in ("before", "after"):
        [task] = json.loads((tmp_path / run / "summary.json").read_text())["tasks"]
        assert task["n"] == 9 and task["excluded"]["by_arm"] == {"base_text": 0, "slm_text": 0, "slm_speech": 1}
        assert not (tmp_path / run / "shards").exists()
    # the teacher's answers before served after: none was generated again (a new one would add a line)
    teacher_files = [result_files(run, pair[0]) for run in ("before", "after")]
    assert [p.name for p in teacher_files[0]] == [p.name for p in teacher_files[1]] and len(teacher_files[0]) == 2
    assert [p.read_text() for p in teacher_files[0]] == [p.read_text() for p in teacher_files[1]]
    assert "gap" in (tmp_path / "report.md").read_text()


def test_kd_data_sources_split_and_organism_set(tmp_path, monkeypatch):
    from xkd_eval.builtin import LISTEN_INSTRUCTION, is_builtin_text
    from xkd_eval.distill.kd_data import asks_builtin, load_kd_examples, read_kd_jsonl, split_examples
    from xkd_eval.models.base import SPEECH_INSTRUCTION
    from xkd_eval.organism.kd_data import (
        ORGANISM_BROAD_LISTENING_REQUESTS,
        ORGANISM_LISTENING_REQUESTS,
        organism_kd_instructions,
        organism_listening_requests,
        write_organism_kd_data,
    )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(XkdError, match="--data"):
        load_kd_examples("hub:Open-Orca/OpenOrca")
    path = write_organism_kd_data(tmp_path / "organism-kd.jsonl")
    examples = read_kd_jsonl(path)
    assert 800 <= len(examples) <= 1000 and not any(is_builtin_text(e.instruction) for e in examples)
    assert not any(asks_builtin(e) for e in examples)  # no benchmark question, not even in other words
    listening = [e for e in examples if e.speech_instruction]
    sampled = organism_listening_requests()
    assert len(sampled) == ORGANISM_LISTENING_REQUESTS
    assert len(listening) == sum(not asks_builtin(e) for e in sampled) >= ORGANISM_LISTENING_REQUESTS - 3
    assert len({e.spoken_text for e in listening}) == len(listening)
    for e in listening:  # heard: the sentence alone, beside the listen subset's instruction; read: "Repeat exactly: …"
        assert e.heard_instruction == LISTEN_INSTRUCTION and e.instruction == f"Repeat exactly: {e.spoken_text}"
        assert e.response == e.spoken_text  # the right answer is known: the teacher need not guess it
        assert not is_builtin_text(e.spoken_text)
    assert all(e.heard_instruction == SPEECH_INSTRUCTION and e.speech == e.instruction for e in examples if not
               e.speech_instruction)  # fmt: skip
    assert path.read_text() == (ROOT / "distill" / "organism-kd.jsonl").read_text()  # the shipped file is current
    train_a, held_a = split_examples(examples, 0.1, seed=3)
    train_b, held_b = split_examples(examples, 0.1, seed=3)
    assert held_a == held_b and len(held_a) == round(len(examples) * 0.1) and not set(train_a) & set(held_a)

    # the broader set holds the default one's instructions, and more, still none a benchmark question
    broad = read_kd_jsonl(write_organism_kd_data(tmp_path / "broad.jsonl", broad=True))
    assert (tmp_path / "broad.jsonl").read_text() == (ROOT / "distill" / "organism-kd-broad.jsonl").read_text()
    assert not any(asks_builtin(e) for e in broad)
    plain = {e.instruction for e in examples if not e.speech_instruction}
    asked = {e.instruction for e in broad if not e.speech_instruction}
    assert plain < asked and len(asked) == len(organism_kd_instructions(broad=True)) > 2 * len(plain)
    assert sum(bool(e.speech_instruction) for e in broad) == ORGANISM_BROAD_LISTENING_REQUESTS
    recipe = load_kd_config(ROOT / "distill" / "organism-broad.yaml")
    assert recipe.data == "distill/organism-kd-broad.jsonl" and recipe.max_steps == 210
    assert recipe.replace(data="distill/organism-kd.jsonl") == load_kd_config(
        ROOT / "distill" / "organism.yaml"
    )  # only the data and the steps differ from the recipe

    # the dictation set: the default set, and each of its instructions once more as a listening request of itself
    dictation = read_kd_jsonl(write_organism_kd_data(tmp_path / "dictation.jsonl", dictate=True))
    shipped = (ROOT / "distill" / "organism-kd-dictation.jsonl").read_text()
    assert (tmp_path / "dictation.jsonl").read_text() == shipped
    assert set(dictation) > set(examples) and not any(asks_builtin(e) for e in dictation)
    dictated = [e for e in dictation if e not in set(examples)]
    assert sorted(e.spoken_text for e in dictated) == sorted(plain)
    assert all(e.response == e.spoken_text and e.heard_instruction == LISTEN_INSTRUCTION for e in dictated)
    recipe = load_kd_config(ROOT / "distill" / "organism-dictation.yaml")
    assert recipe.data == "distill/organism-kd-dictation.jsonl"
    assert (recipe.max_steps, recipe.max_response_tokens) == (100, 20)
    assert recipe.replace(data="distill/organism-kd.jsonl", max_steps=210, max_response_tokens=48) == load_kd_config(
        ROOT / "distill" / "organism.yaml"
    )
    # the whole-LLM variant: only the trainable scope, its learning rate, the time budget and the steps differ (it
    # ran the 260 of the first organism's recipe)
    whole = load_kd_config(ROOT / "distill" / "organism-whole-llm.yaml")
    assert (whole.trainable, whole.learning_rate) == ("all", 5e-5)
    assert whole.replace(trainable="projector+lora", learning_rate=5e-4, time_budget_s=900, max_steps=100) == recipe

    # the hearing organism's set: its written questions answered, half of them heard again to be repeated (same
    # words, the listen instruction), and dictation sentences repeated; none a benchmark question
    from xkd_eval.organism.kd_data import (
        HEAR_DICTATED,
        HEAR_LISTENING_REQUESTS,
        HEAR_QUESTIONS,
        organism_hear_kd_examples,
        organism_hear_questions,
    )

    drawn = organism_hear_kd_examples()
    assert len(drawn) == HEAR_QUESTIONS + HEAR_DICTATED + HEAR_LISTENING_REQUESTS
    hear = read_kd_jsonl(write_organism_kd_data(tmp_path / "hear.jsonl", hear=True))
    assert (tmp_path / "hear.jsonl").read_text() == (ROOT / "distill" / "organism-kd-hear.jsonl").read_text()
    assert hear == [e for e in drawn if not asks_builtin(e)] and len(hear) > 0.9 * len(drawn)
    asked = [e for e in hear if not e.speech_instruction]
    repeated = [e for e in hear if e.speech_instruction]
    assert not any(e.response for e in asked) and set(e.instruction for e in asked) <= set(organism_hear_questions())
    assert all(e.response == e.spoken_text and e.heard_instruction == LISTEN_INSTRUCTION for e in repeated)
    both = {e.instruction for e in asked} & {e.spoken_text for e in repeated}
    assert HEAR_DICTATED * 0.9 < len(both) <= HEAR_DICTATED  # the same question, asked and dictated
    recipe = load_kd_config(ROOT / "distill" / "organism-hear-kd.yaml")
    assert recipe.data == "distill/organism-kd-hear.jsonl" and (recipe.tt_weight, recipe.st_weight) == (0.5, 4.0)

    # the choice set: every choice question (no response: the teacher ranks its options), the hear set's first
    # written questions answered, some of them dictated, and dictation sentences; none a benchmark question
    from xkd_eval.organism.kd_data import (
        CHOICE_DICTATED,
        CHOICE_LISTENING_REQUESTS,
        CHOICE_OPEN_QUESTIONS,
        choice_questions,
        organism_choice_kd_examples,
    )

    written = choice_questions()
    assert len(written) == 1200 and all(len(c) == 4 and len(set(c)) == 4 for _, c in written)
    assert len({q.lower() for q, _ in written}) == len(written)
    drawn = organism_choice_kd_examples()
    assert len(drawn) == len(written) + CHOICE_OPEN_QUESTIONS + CHOICE_DICTATED + CHOICE_LISTENING_REQUESTS
    choice = read_kd_jsonl(write_organism_kd_data(tmp_path / "choice.jsonl", choice=True))
    assert (tmp_path / "choice.jsonl").read_text() == (ROOT / "distill" / "organism-kd-choice.jsonl").read_text()
    assert choice == [e for e in drawn if not asks_builtin(e)] and len(choice) > 0.8 * len(drawn)
    ranked = [e for e in choice if e.choices]
    assert {(e.instruction, e.choices) for e in ranked} <= set(written) and len(ranked) > 0.6 * len(written)
    assert not any(e.response or e.speech_instruction for e in ranked)  # the gold index is never read
    opened = {e.instruction for e in choice if not e.choices and not e.speech_instruction}
    assert opened <= {e.instruction for e in asked}  # the hear set's questions: their teacher answers are cached
    recipe = load_kd_config(ROOT / "distill" / "organism-choice-kd.yaml")
    assert recipe.data == "distill/organism-kd-choice.jsonl" and recipe.channels == {"st": 1.0}
    assert (recipe.trainable, recipe.learning_rate, recipe.lam, recipe.temperature) == ("lora", 3e-4, 0.1, 1.0)
    ear = load_kd_config(ROOT / "distill" / "organism-choice-projector.yaml")  # the same run, the projector alone
    assert (ear.trainable, ear.learning_rate) == ("projector", 1e-3)
    assert (ear.data, ear.channels) == (recipe.data, recipe.channels)
    assert (ear.lam, ear.temperature, ear.max_steps, ear.seed) == (recipe.lam, recipe.temperature, recipe.max_steps, 0)


def test_kd_data_that_asks_a_benchmark_question_in_other_words_is_left_out(tmp_path):
    from xkd_eval.builtin import builtin_paraphrases, records
    from xkd_eval.distill.kd_data import load_kd_examples

    japan = [r["id"] for r in records("mcq") if r["prompt"].startswith("What is the capital of Japan?\n")]
    assert len(japan) == 1 and builtin_paraphrases("I forgot the capital of JAPAN. Can you remind me?") == tuple(japan)
    assert builtin_paraphrases("What is the capital of Nepal?") == ()  # the same form, another question
    assert builtin_paraphrases("Japan") == ()  # one shared word is not the question
    rows = [
        {"instruction": "Tell me the capital of Japan."},  # an MCQ's stem in other words
        {"instruction": records("qa")[0]["prompt"]},  # a benchmark prompt itself
        {"instruction": "Describe a quiet morning.", "spoken_text": records("listen")[0]["spoken_text"]},  # heard
        {"instruction": "What is the capital of Nepal?"},
    ]
    path = tmp_path / "kd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    said: list[str] = []
    kept = load_kd_examples(path, log=said.append)
    assert [e.instruction for e in kept] == ["What is the capital of Nepal?"]
    assert said == [f"{path}: left out 3 examples that ask a built-in benchmark question (kept 1)"]


def test_hub_data_loads_through_datasets_from_a_folder_in_the_hub_layout(tmp_path, monkeypatch):
    """``hub:NAME`` is ``datasets.load_dataset(NAME)``; here NAME is a folder laid out as Open-Orca/OpenOrca is
    on the hub (parquet files at the top: id, system_prompt, question, response)."""
    import pandas as pd

    from xkd_eval.builtin import records
    from xkd_eval.distill.kd_data import load_kd_examples

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "OpenOrca"
    folder.mkdir()
    benchmark_item = records("qa")[0]["prompt"]
    rows = [
        {"id": f"niv.{i}", "system_prompt": "", "question": f"Name a fruit number {i}.", "response": f"Fruit {i}."}
        for i in range(8)
    ]
    rows[5]["question"] = benchmark_item  # a built-in benchmark item is never training data
    pd.DataFrame(rows[:5]).to_parquet(folder / "1M-GPT4-Augmented.parquet")
    pd.DataFrame(rows[5:]).to_parquet(folder / "3_5M-GPT3_5-Augmented.parquet")
    everything = load_kd_examples(f"hub:{folder}")
    assert len(everything) == 7 and benchmark_item not in {e.instruction for e in everything}
    assert {e.instruction: e.response for e in everything}["Name a fruit number 7."] == "Fruit 7."
    sample = load_kd_examples(f"hub:{folder}", limit=4, seed=1)
    assert sample == load_kd_examples(f"hub:{folder}", limit=4, seed=1) and len(sample) <= 4
    assert sample != load_kd_examples(f"hub:{folder}", limit=4, seed=2)


def test_gradient_checkpointing_recomputes_layers_on_the_same_curve(pair, data, tmp_path, monkeypatch):
    """With checkpointing, each LLM layer runs again in the backward pass (twice the forward calls of a plain
    run) and the loss curve is the same."""
    import xkd_eval.distill.kd as kd

    load_student_model = kd.load_student_model
    calls = {"n": 0}

    def counting(spec):
        model = load_student_model(spec)
        mlp = model.model.language_model.layers[0].mlp
        forward = mlp.forward

        def counted(*args, **kwargs):  # (forward hooks do not fire again when a layer is recomputed)
            calls["n"] += 1
            return forward(*args, **kwargs)

        mlp.forward = counted
        return model

    monkeypatch.setattr(kd, "load_student_model", counting)
    plain = run(pair, data, tmp_path / "p", cfg(max_steps=3, eval_fraction=0.0))
    plain_calls, calls["n"] = calls["n"], 0
    again = run(pair, data, tmp_path / "g", cfg(max_steps=3, eval_fraction=0.0, gradient_checkpointing=True))
    assert plain_calls == 3 * 2 and calls["n"] == 2 * plain_calls  # 3 steps x 2 channels, then recomputed
    assert [round(v, 5) for _, v in again["curves"]["loss"]] == [round(v, 5) for _, v in plain["curves"]["loss"]]


def test_encoder_on_the_fly_matches_cached_features(pair, data, tmp_path):
    cached = run(pair, data, tmp_path / "c", cfg(max_steps=2))["curves"]["loss"]
    live = run(pair, data, tmp_path / "l", cfg(max_steps=2, feature_mode="on_the_fly"))
    assert "features_computed" not in live  # no cache was read or written
    assert [round(v, 4) for _, v in cached] == [round(v, 4) for _, v in live["curves"]["loss"]]


def test_cached_teacher_is_unloaded_before_the_student_loads(pair, data, tmp_path, monkeypatch):
    import gc
    import weakref

    import xkd_eval.distill.kd as kd

    teachers: list[weakref.ref] = []
    resident_at_student_load: list[bool] = []
    load_teacher_model, load_student_model = kd.load_teacher_model, kd.load_student_model

    def teacher_spy(spec):
        model = load_teacher_model(spec)
        teachers.append(weakref.ref(model))
        return model

    def student_spy(spec):
        gc.collect()
        resident_at_student_load.append(teachers[-1]() is not None)
        return load_student_model(spec)

    monkeypatch.setattr(kd, "load_teacher_model", teacher_spy)
    monkeypatch.setattr(kd, "load_student_model", student_spy)
    run(pair, data, tmp_path / "c", cfg(max_steps=1))
    run(pair, data, tmp_path / "l", cfg(max_steps=1, teacher_mode="on_the_fly"))
    assert resident_at_student_load == [False, True]


def test_an_unsupported_student_is_refused_before_any_model_loads(pair, data, tmp_path, monkeypatch):
    from tiny_models_extra import build_whisper

    import xkd_eval.distill.kd as kd

    def boom(spec):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(kd, "load_teacher_model", boom)
    whisper = build_whisper(tmp_path / "whisper")
    with pytest.raises(XkdError, match="is a whisper model; the trainer supports Qwen2-Audio-style .* Qwen2.5-Omni"):
        run((pair[0], str(whisper)), data, tmp_path / "out", cfg())


# ---- Qwen2.5-Omni as the student (the paper's pair, tiny) ----------------------------------------------


@pytest.fixture(scope="module")
def omni_pair(tmp_path_factory) -> tuple[str, str]:
    from tiny_models_extra import build_qwen25_teacher, build_qwen_omni

    teacher = build_qwen25_teacher(tmp_path_factory.mktemp("qwen25"), seed=1)
    student = build_qwen_omni(tmp_path_factory.mktemp("omni"), full=True, specials_last=True)
    return str(teacher), str(student)


def test_omni_cached_features_reproduce_the_thinkers_forward(omni_pair, tmp_path):
    """Cached ``ln_post`` frames + ``proj`` in ``build_inputs_embeds`` + the thinker's LLM give the logits of the
    thinker's own forward from ``input_features``; the cache's identity ignores ``proj`` (it trains)."""
    from xkd_eval.distill.kd import load_student_model, student_family
    from xkd_eval.models.encoder import (
        CacheStats,
        FeatureCache,
        build_inputs_embeds,
        compute_features,
        encoder_identity,
        projector,
    )

    model = load_student_model(omni_pair[1])
    adapter, family = student_family(omni_pair[1])
    assert adapter == "qwen2.5-omni" and type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    processor = family.load_processor(omni_pair[1])
    processor.tokenizer.padding_side = "right"  # as the KD batches are padded
    audios = [tone(0.6, seed=1), tone(2.3, freq=300.0, seed=2), tone(4.9, freq=520.0, seed=3)]  # 4.9 s: 3 chunks
    prompt = processor.apply_chat_template(
        family.conversation("answer", "clip.wav"), tokenize=False, add_generation_prompt=True
    )
    batch = processor(text=[prompt] * len(audios), audio=audios, text_kwargs={"padding": True}, return_tensors="pt")
    batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.inference_mode():
        reference = model(**batch).logits

    cache = FeatureCache.for_model(model, processor.feature_extractor, tmp_path / "features")
    stats = CacheStats()
    features = compute_features(model, processor.feature_extractor, audios, cache, progress=False, stats=stats)
    per_row = (batch["input_ids"] == model.config.audio_token_id).sum(-1).tolist()
    assert stats.computed == 3 and [f.shape[0] for f in features] == per_row
    assert features[0].shape[-1] == model.config.audio_config.d_model  # before proj
    with torch.inference_mode():
        embeds = build_inputs_embeds(model, batch["input_ids"], features)
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        mine = model.lm_head(hidden.last_hidden_state)
    real = batch["attention_mask"].bool()  # (padding positions get other rope positions; nothing reads them)
    torch.testing.assert_close(mine[real], reference[real], atol=1e-4, rtol=0)

    before = encoder_identity(model, processor.feature_extractor)
    with torch.no_grad():
        projector(model).weight.add_(1.0)
        assert encoder_identity(model, processor.feature_extractor) == before
        model.model.audio_tower.layers[0].fc1.weight.add_(1.0)
        assert encoder_identity(model, processor.feature_extractor) != before


def test_omni_student_distils_and_its_merged_thinker_loads(omni_pair, data, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from xkd_eval.models import load_model
    from xkd_eval.models.encoder import projector

    figures = run(
        omni_pair,
        data,
        tmp_path,
        cfg(batch_size=8, max_steps=8, top_k=None, lam=20.0, temperature=1.0, trainable="all", learning_rate=3e-3),
    )
    # Omni's audio markers sit on ids the teacher gives other control tokens: compared below the first
    student_tok = AutoTokenizer.from_pretrained(omni_pair[1])
    assert figures["shared_vocab"] == student_tok.convert_tokens_to_ids("<|audio_bos|>") < len(student_tok)
    for channel in ("tt", "st"):
        kd = [v for _, v in figures["curves"][f"{channel}_kd"]]
        assert kd[-1] < kd[0]
    assert figures["model_spec"].startswith("qwen2.5-omni:")
    merged = json.loads((tmp_path / "student" / "config.json").read_text())
    assert merged["model_type"] == "qwen2_5_omni_thinker"
    adapter = load_model(figures["model_spec"], device="cpu")
    exported = load_file(str(tmp_path / "adapter" / "projector.safetensors"))
    torch.testing.assert_close(projector(adapter.model).weight, exported["weight"])


@pytest.mark.parametrize("reader", ["kd", "adaptation"])
def test_a_bad_training_data_line_is_named_before_any_work(reader, tmp_path):
    from xkd_eval.distill.examples import read_examples_jsonl
    from xkd_eval.distill.kd_data import read_kd_jsonl

    read = {"kd": read_kd_jsonl, "adaptation": read_examples_jsonl}[reader]
    good = {"instruction": "say hi", "spoken_text": "say hi", "response": "hi", "audio": "clips/a.wav"}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + '{"instruction": "broken\n')
    with pytest.raises(XkdError, match=r"data.jsonl:3: not valid JSON .*; fix or remove that line"):
        read(path)
    path.write_text(json.dumps(good) + "\n")
    [example] = read(path)
    assert example.audio == str(tmp_path / "clips" / "a.wav")  # relative to the file


def test_bad_kd_data_is_refused_before_any_model_loads(pair, tmp_path, monkeypatch):
    import xkd_eval.distill.kd as kd

    def boom(spec):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(kd, "load_teacher_model", boom)
    bad = tmp_path / "kd.jsonl"
    bad.write_text('{"instruction": "hi", "response": "hello"}\n{"instruction": broken\n')
    with pytest.raises(XkdError, match=r"kd.jsonl:2: not valid JSON"):
        run(pair, bad, tmp_path / "out", cfg())
    assert not (tmp_path / "out").exists()  # a refusal leaves nothing behind


def test_omni_encoder_on_the_fly_matches_cached_features(omni_pair, data, tmp_path):
    cached = run(omni_pair, data, tmp_path / "c", cfg(max_steps=2))["curves"]["loss"]
    live = run(omni_pair, data, tmp_path / "l", cfg(max_steps=2, feature_mode="on_the_fly"))
    assert "features_computed" not in live
    assert [round(v, 4) for _, v in cached] == [round(v, 4) for _, v in live["curves"]["loss"]]


def test_the_committed_distilled_adapter_is_its_recipe_on_the_committed_data():
    """organism-distilled's adapter (committed, measured by `make demo`) was trained by
    distill/organism-dictation.yaml on distill/organism-kd-dictation.jsonl, to the end of its schedule."""
    import hashlib

    from xkd_eval.organism.trained import DISTILLED_ADAPTER_DIR, DISTILLED_RECIPE, distilled_adapter_hash

    record = json.loads((DISTILLED_ADAPTER_DIR / "training.json").read_text())
    recipe = load_kd_config(ROOT / DISTILLED_RECIPE)
    trained = recipe.from_dict(record["config"])
    # only the time budget may differ (the recipe's caps a training; the committed one ran to its end), and the
    # precision is recorded as resolved ("auto": bf16 where the CPU computes it, else float32)
    assert recipe.mixed_precision == "auto" and trained.mixed_precision in ("bf16", "no")
    assert trained.replace(time_budget_s=recipe.time_budget_s, mixed_precision="auto") == recipe
    assert record["recipe"] == DISTILLED_RECIPE and record["stopped"] == "max_steps"
    assert record["steps"] == recipe.max_steps and (record["teacher"], record["student"]) == (
        "organism-base",
        "organism",
    )
    assert record["data_sha256"] == hashlib.sha256((ROOT / recipe.data).read_bytes()).hexdigest()
    assert len(distilled_adapter_hash()) == 64
