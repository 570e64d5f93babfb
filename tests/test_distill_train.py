"""Speech adaptation on a tiny Qwen2-Audio: the feature cache reproduces the model's own forward, a few
steps lower the loss, resume reproduces an uninterrupted run, NaN stops the run and keeps the last good
checkpoint, the trainable scope freezes the rest, and the exported adapter merges back."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from conftest import tone  # noqa: E402
from tiny_models import build_qwen2_audio  # noqa: E402

from xkd_eval.distill.config import ConfigError  # noqa: E402
from xkd_eval.distill.examples import (  # noqa: E402
    SpokenExample,
    examples_digest,
    read_examples_jsonl,
    write_examples_jsonl,
)
from xkd_eval.distill.train import (  # noqa: E402
    TrainingDivergedError,
    checkpoint_dirs,
    setup_trainable,
    tokenize_example,
    train,
)
from xkd_eval.errors import XkdError  # noqa: E402
from xkd_eval.models.adapter_weights import apply_adapter, export_adapter  # noqa: E402
from xkd_eval.models.encoder import (  # noqa: E402
    CacheStats,
    FeatureCache,
    build_inputs_embeds,
    compute_features,
    num_audio_tokens,
)
from xkd_eval.organism.adapt import AdaptConfig, load_config  # noqa: E402
from xkd_eval.organism.adapt_data import generate_examples, heldout_mcq_records, write_heldout_mcq_task  # noqa: E402

# the tiny tokenizer knows few words: responses made of them keep the sequences short
WORDS = ["yes", "no", "answer", "question", "audio", "speech", "text", "option"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_qwen2_audio(tmp_path_factory.mktemp("tiny-qwen2-audio"))


def load_tiny(folder: Path):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [tone(0.3 + 0.15 * i, freq=200.0 + 60 * i, seed=i) for i in range(12)]


@pytest.fixture(scope="module")
def prepared(tiny_dir, clips, tmp_path_factory):
    """12 tokenised examples (each response a word the audio's pitch decides) with cached features."""
    model, processor = load_tiny(tiny_dir)
    cache = FeatureCache.for_model(model, processor.feature_extractor, tmp_path_factory.mktemp("features"))
    features = compute_features(model, processor.feature_extractor, clips, cache, batch_size=5, progress=False)
    examples = [SpokenExample(f"ex-{i}", "Listen to the audio.", "-", WORDS[i % len(WORDS)]) for i in range(len(clips))]
    return [tokenize_example(processor, e, f) for e, f in zip(examples, features, strict=True)]


def config(**changes) -> AdaptConfig:
    values = dict(
        max_steps=6, batch_size=4, learning_rate=5e-3, warmup_steps=1, lora_rank=4, lora_alpha=8, lora_dropout=0.1,
        checkpoint_every=2, keep_checkpoints=2, seed=3,
    )  # fmt: skip
    values.update(changes)
    return AdaptConfig(**values)


def run(tiny_dir, prepared, out: Path, cfg: AdaptConfig, *, resume: bool = False):
    model, processor = load_tiny(tiny_dir)
    model = setup_trainable(model, cfg)
    result = train(model, prepared, cfg, out, pad_id=processor.tokenizer.pad_token_id, resume=resume, progress=False)
    return model, result


# ---------------------------------------------------------------------------------------------- features


def test_cached_features_reproduce_the_models_forward(tiny_dir, clips, tmp_path):
    model, processor = load_tiny(tiny_dir)
    audios = clips[:3] + [tone(2.7, seed=9)]
    messages = [[{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "answer"}]}]]
    prompt = processor.apply_chat_template(messages[0], tokenize=False, add_generation_prompt=True)
    batch = processor(
        text=[prompt] * len(audios), audio=audios, sampling_rate=16_000, return_tensors="pt", padding=True
    )
    with torch.inference_mode():
        reference = model(**batch).logits

    lengths = batch["feature_attention_mask"].sum(-1).tolist()
    per_row = (batch["input_ids"] == model.config.audio_token_id).sum(-1).tolist()
    assert per_row == [num_audio_tokens(n) for n in lengths]

    for window in ("full", "trim"):
        cache = FeatureCache.for_model(model, processor.feature_extractor, tmp_path / window)
        stats = CacheStats()
        features = compute_features(
            model, processor.feature_extractor, audios, cache, batch_size=3, window=window, progress=False, stats=stats
        )
        assert stats.computed == len(audios) and [f.shape[0] for f in features] == per_row
        again = CacheStats()
        cached = compute_features(model, processor.feature_extractor, audios, cache, progress=False, stats=again)
        assert again.reused == len(audios) and again.computed == 0
        assert all(torch.equal(a, b) for a, b in zip(features, cached, strict=True))
        assert len(list(cache.dir.rglob("*.safetensors"))) == len(audios)
        assert not list(cache.dir.rglob("*.tmp"))
        with torch.inference_mode():
            embeds = build_inputs_embeds(model, batch["input_ids"], cached)
            mine = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=0)


def test_trimmed_features_do_not_depend_on_the_batch(tiny_dir, clips):
    """A clip encoded with a longer one beside it gets the very same features as alone: a cache filled in
    any order trains the same student."""
    from xkd_eval.models.encoder import audio_tower, encode_mels, mel_features

    model, processor = load_tiny(tiny_dir)
    short, long = clips[0], tone(3.1, seed=5)
    alone = encode_mels(audio_tower(model), *mel_features(processor.feature_extractor, [short]))
    beside = encode_mels(audio_tower(model), *mel_features(processor.feature_extractor, [long, short]))
    assert torch.equal(alone[0], beside[1]) and not alone[0].is_inference()


def test_feature_cache_is_keyed_by_encoder(tiny_dir, clips, tmp_path):
    model, processor = load_tiny(tiny_dir)
    first = FeatureCache.for_model(model, processor.feature_extractor, tmp_path)
    with torch.no_grad():
        model.model.audio_tower.layer_norm.bias.add_(0.5)
    second = FeatureCache.for_model(model, processor.feature_extractor, tmp_path)
    assert first.identity != second.identity and first.dir != second.dir
    compute_features(model, processor.feature_extractor, clips[:2], first, progress=False)
    assert clips[0] in first and clips[0] not in second


# ---------------------------------------------------------------------------------------------- training


def test_a_few_steps_lower_the_loss(tiny_dir, prepared, tmp_path):
    _, result = run(tiny_dir, prepared, tmp_path, config(max_steps=12, checkpoint_every=100, learning_rate=3e-2))
    losses = result.losses
    assert len(losses) == 12 and all(np.isfinite(losses))
    # a random tiny model's logits are small (0.02-scale tied embeddings): the drop is real but modest
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.15
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert [r["step"] for r in log] == list(range(1, 13)) and {"loss", "lr", "seconds"} <= set(log[0])
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000012"]  # the final one


def test_resume_reproduces_the_uninterrupted_run(tiny_dir, prepared, tmp_path):
    cfg = config(max_steps=7, checkpoint_every=3)
    _, whole = run(tiny_dir, prepared, tmp_path / "whole", cfg)

    # interrupted after step 4 (a NaN there), resumed from the step-3 checkpoint
    with pytest.raises(TrainingDivergedError):
        run(tiny_dir, prepared, tmp_path / "split", cfg.replace(debug_inject_nan_step=5))
    assert [p.name for p in checkpoint_dirs(tmp_path / "split")] == ["step-000003"]
    _, resumed = run(tiny_dir, prepared, tmp_path / "split", cfg, resume=True)
    assert resumed.resumed_from == 3
    assert resumed.losses == whole.losses  # exact, same seed, CPU
    assert [r["lr"] for r in resumed.log] == [r["lr"] for r in whole.log]
    saved = json.loads((tmp_path / "split" / "training_log.json").read_text())
    assert [r["loss"] for r in saved] == whole.losses


def test_resume_refuses_a_changed_recipe(tiny_dir, prepared, tmp_path):
    run(tiny_dir, prepared, tmp_path, config(max_steps=2))
    from xkd_eval.distill.train import CheckpointMismatchError, TrainingConfigChangedError

    with pytest.raises(TrainingConfigChangedError, match="config changed.*new output folder") as caught:
        run(tiny_dir, prepared, tmp_path, config(max_steps=4, learning_rate=1e-3), resume=True)
    assert isinstance(caught.value, CheckpointMismatchError)  # the demo's cue to train again


def test_nan_names_step_and_batch_and_keeps_the_last_good_checkpoint(tiny_dir, prepared, tmp_path):
    with pytest.raises(TrainingDivergedError) as caught:
        run(tiny_dir, prepared, tmp_path, config(max_steps=8, checkpoint_every=2, debug_inject_nan_step=5))
    message = str(caught.value)
    assert "step 5" in message and "ex-" in message and "step-000004" in message
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000002", "step-000004"]
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log[-1]["step"] == 5 and "error" in log[-1] and log[-1]["batch_ids"]
    assert not (tmp_path / "projector.safetensors").exists()


def test_a_corrupted_weight_stops_training(tiny_dir, prepared, tmp_path):
    model, processor = load_tiny(tiny_dir)
    cfg = config(trainable="projector")
    model = setup_trainable(model, cfg)
    with torch.no_grad():
        model.model.language_model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match="step 1 "):
        train(model, prepared, cfg, tmp_path, pad_id=processor.tokenizer.pad_token_id, progress=False)
    assert checkpoint_dirs(tmp_path) == []


@pytest.mark.parametrize("scope", ["projector", "lora", "projector+lora"])
def test_trainable_scope_freezes_the_rest(tiny_dir, prepared, tmp_path, scope):
    before, _ = load_tiny(tiny_dir)
    reference = {k: v.clone() for k, v in before.state_dict().items()}
    model, _ = run(tiny_dir, prepared, tmp_path, config(trainable=scope, max_steps=3, checkpoint_every=100))
    trained = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = trained.state_dict()
    lora = {k: v for k, v in state.items() if "lora_" in k}
    assert bool(lora) == ("lora" in scope)
    if lora:
        assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero and moved
    for name, value in reference.items():
        key = name
        if key not in state:  # a LoRA-wrapped linear keeps its weight as base_layer.weight
            key = name.replace(".weight", ".base_layer.weight")
        changed = not torch.equal(state[key].cpu(), value.cpu())
        if "multi_modal_projector" in name:
            assert changed == ("projector" in scope), name
        else:
            assert not changed, f"{name} changed under scope {scope}"


def test_exported_adapter_merges_into_the_base(tiny_dir, prepared, tmp_path):
    from xkd_eval.organism.trained import merge_adapter

    cfg = config(trainable="projector+lora", max_steps=3, checkpoint_every=100)
    model, _ = run(tiny_dir, prepared, tmp_path / "run", cfg)
    files = export_adapter(model, cfg, tmp_path / "adapter", base_name=f"qwen2-audio:{tiny_dir}")
    assert {p.name for p in files} == {"projector.safetensors", "adapter_model.safetensors", "adapter_config.json"}
    # no folder of this machine in the files whose sha256 names the trained model
    written = (tmp_path / "adapter" / "adapter_config.json").read_text()
    assert json.loads(written)["base_model_name_or_path"] == f"qwen2-audio:{tiny_dir.name}"
    assert str(tiny_dir.parent) not in written and str(tmp_path) not in written
    example = prepared[0]
    ids = torch.tensor([example.input_ids])
    model.eval()
    with torch.inference_mode():
        expected = model(inputs_embeds=build_inputs_embeds(model, ids, [example.features])).logits
    merged = merge_adapter(tiny_dir, tmp_path / "adapter", tmp_path / "merged")
    assert (merged / "xkd-complete.json").is_file()
    from xkd_eval.models.qwen2_audio import Qwen2AudioAdapter

    adapter = Qwen2AudioAdapter(str(merged), device="cpu")
    with torch.inference_mode():
        got = adapter.model(inputs_embeds=build_inputs_embeds(adapter.model, ids, [example.features])).logits
    torch.testing.assert_close(got.cpu(), expected.cpu(), atol=1e-4, rtol=1e-4)
    base, _ = load_tiny(tiny_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = apply_adapter(base, tmp_path / "adapter")
    # peft's read of a deprecated transformers property is not our users' to act on
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert type(plain).__name__ == "Qwen2AudioForConditionalGeneration"
    assert not any("lora_" in name for name in plain.state_dict())


def test_a_second_stage_starts_from_the_first_stages_adapter(tiny_dir, prepared, tmp_path):
    """init_adapter: the second stage's trainable weights are the first stage's exported ones, to the last bit
    of their saved dtype; a LoRA of another rank is refused by name, not half loaded."""
    from xkd_eval.models.adapter_weights import load_trainable_adapter
    from xkd_eval.models.encoder import projector

    first = config(trainable="projector+lora", max_steps=3, checkpoint_every=100, save_dtype="float32")
    model, _ = run(tiny_dir, prepared, tmp_path / "stage1", first)
    export_adapter(model, first, tmp_path / "adapter", base_name="tiny")
    trained = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    second = first.replace(seed=first.seed + 1)  # other LoRA A draws: a load that did nothing would show
    fresh, _ = load_tiny(tiny_dir)
    fresh = setup_trainable(fresh, second)
    before = {k: v.detach().clone() for k, v in fresh.named_parameters() if v.requires_grad}
    load_trainable_adapter(fresh, tmp_path / "adapter")
    loaded = {k: v.detach() for k, v in fresh.named_parameters() if v.requires_grad}
    assert loaded.keys() == trained.keys()
    assert any(not torch.equal(before[k], trained[k]) for k in trained)
    for name, value in trained.items():
        torch.testing.assert_close(loaded[name], value, atol=0, rtol=0, msg=name)
    assert torch.equal(projector(fresh).linear.weight, projector(model).linear.weight)

    other, _ = load_tiny(tiny_dir)
    other = setup_trainable(other, first.replace(lora_rank=2))
    with pytest.raises(XkdError, match="rank 4.*rank 2"):
        load_trainable_adapter(other, tmp_path / "adapter")
    with pytest.raises(XkdError, match="no projector.safetensors"):
        load_trainable_adapter(other, tmp_path)
    with pytest.raises(ConfigError, match="projector_init must be 'assembled'"):
        first.replace(init_adapter=str(tmp_path / "adapter"), projector_init="least_squares")


# ---------------------------------------------------------------------------------------------- data, config


def test_generated_examples_are_seeded_and_held_out():
    from xkd_eval.builtin import asks_builtin_question

    first = generate_examples(300, seed=1)
    assert first == generate_examples(300, seed=1) and first != generate_examples(300, seed=2)
    assert len(first) == 300 and len({e.id for e in first}) == 300
    assert len({e.task for e in first}) >= 8
    assert not any(asks_builtin_question(f"{e.spoken_text} {e.instruction}") for e in first)
    assert all(e.instruction and e.spoken_text and e.response for e in first)
    heldout = heldout_mcq_records(40, exclude=first)
    trained = {e.spoken_text for e in first}
    assert len(heldout) == 40 and not any(r["spoken_text"] in trained for r in heldout)
    assert all(r["choices"]["ABCD".index(r["reference"])] in r["spoken_text"] for r in heldout)


def test_dictation_sentences_are_open_vocabulary_and_held_out():
    """The family that teaches the organism's ear words beyond the templated families' few dozen: its
    sentences are distinct, plain ASCII a TTS voice reads as written, and none is a benchmark item."""
    import random
    import re

    from xkd_eval.builtin import asks_builtin_question
    from xkd_eval.organism.adapt_data import FAMILIES, dictation_sentences

    sentences = dictation_sentences()
    assert len(sentences) >= 1000 and len(set(sentences)) == len(sentences)
    assert all(s.isascii() and not re.search(r"[0-9\"()]", s) and s[-1] in ".?!" for s in sentences)
    assert all(5 <= len(s.split()) <= 16 for s in sentences)
    assert not any(asks_builtin_question(s) for s in sentences)  # nor asks one in other words
    words = {w for s in sentences for w in re.findall(r"[a-z']+", s.lower())}
    assert len(words) > 2000
    instruction, spoken, response = FAMILIES["dictation"](random.Random(0))
    assert spoken == response and spoken in sentences and instruction.strip()


def test_written_questions_and_word_strings_are_spoken_text_a_transcript_can_match():
    """The ASR stage's own families: the project's written questions (a sentence the held-out check flags is
    never drawn) and random strings of dictation words, each transcribed word for word."""
    import random
    import re

    from xkd_eval.builtin import asks_builtin_question
    from xkd_eval.organism.adapt_data import FAMILIES, dictation_sentences, written_questions

    sentences = written_questions()
    assert len(sentences) >= 2500 and len({s.lower() for s in sentences}) == len(sentences)
    assert all(s.isascii() and not re.search(r"[0-9\"()]", s) and 4 <= len(s.split()) <= 16 for s in sentences)
    assert sum(s.endswith("?") for s in sentences) > len(sentences) / 2
    flagged = {s for s in sentences if asks_builtin_question(s)}
    drawn = generate_examples(400, seed=3, mix={"questions": 1.0})
    assert {e.spoken_text for e in drawn} <= set(sentences) - flagged
    assert all(e.spoken_text == e.response for e in drawn)
    dictation_words = {w for s in dictation_sentences() for w in re.findall(r"[a-z']+", s.lower())}
    rng = random.Random(0)
    for _ in range(50):
        instruction, spoken, response = FAMILIES["words"](rng)
        said = re.findall(r"[a-z']+", spoken.lower())
        assert spoken == response and 4 <= len(said) <= 9 and set(said) <= dictation_words
        assert len(set(said)) == len(said)


def test_heldout_mcq_task_is_spoken_and_loads_as_a_jsonl_task(tmp_path):
    """The in-domain speech test: synthesised (real espeak-ng), written next to its audio, read back by the
    task registry with every item's audio and letter reference intact."""
    from xkd_eval.audio import load_audio
    from xkd_eval.tasks import get_task

    path = write_heldout_mcq_task(tmp_path / "heldout", n=4, voices=["espeak-ng:en-us"], progress=False)
    loaded = get_task(f"jsonl:{path}").load()
    assert not loaded.problems and [i.id for i in loaded.items] == [f"heldout-mcq-00{k}" for k in range(1, 5)]
    for item, record in zip(loaded.items, heldout_mcq_records(4), strict=True):
        assert item.prompt == record["prompt"] and item.reference == record["reference"]
        assert item.metadata["spoken_text"] == record["spoken_text"] and item.metadata["voice"] == "espeak-ng:en-us"
        assert f"{item.reference}, {item.choices['ABCD'.index(item.reference)]}" in record["spoken_text"]
        samples = load_audio(item)
        assert samples.ndim == 1 and samples.size > 16_000 * 0.5  # a spoken question, 16 kHz mono
    assert all(not Path(r["audio"]).is_absolute() for r in map(json.loads, path.read_text().splitlines()))


# the data of the organism's first adapter (distill/organism-adapt.yaml's 1200 examples, kept in git history)
FIRST_RECIPE_DATA_SHA256 = "8bff136aff30a36eccff7b284f5ee028cf9d35f39a7d7945d03143dac265ce1a"
# the data the committed organism adapter was trained on (distill/organism-hear.yaml's 20,000 examples): a change
# of the generator, of questions.txt or of dictation.txt would stop the recipe from rebuilding
# xkd_eval/organism/weights/organism-adapter
RECIPE_DATA_SHA256 = "5f14b6c03b8b3fc3c8bcbba28636a99dd6c518f0b5c46b4adf5f4e467db4730c"


def test_the_recipes_still_generate_their_adapters_data():
    for name, digest in (("organism-adapt.yaml", FIRST_RECIPE_DATA_SHA256), ("organism-hear.yaml", RECIPE_DATA_SHA256)):
        recipe = load_config(Path(__file__).parents[1] / "distill" / name)
        examples = generate_examples(recipe.n_examples, seed=recipe.data_seed, mix=recipe.data_mix)
        assert examples_digest(examples) == digest, name


# the first stage's adapter (distill/organism-hear.yaml, 323 steps; the committed organism adapter of commit c931726),
# which the second stage started from
FIRST_STAGE_ADAPTER_SHA256 = "02144093cf0be54d9116985e27f50999b928b5b901b281c959c904ff89c912de"


def test_the_committed_organism_adapter_records_its_recipe_and_data():
    """The committed organism is the second hearing stage (distill/organism-hear-2.yaml) started from the first
    stage's adapter, on the first stage's data: only the time budget (raised to let the run finish its fitted
    schedule) and the start folder's name differ from the recipe."""
    from xkd_eval.organism.trained import ADAPTER_DIR

    record = json.loads((ADAPTER_DIR / "training.json").read_text())
    root = Path(__file__).parents[1] / "distill"
    first, second = load_config(root / "organism-hear.yaml"), load_config(root / "organism-hear-2.yaml")
    trained = AdaptConfig.from_dict(record["config"])
    assert trained.init_adapter == "organism-hear-stage1"
    assert record["init_adapter_sha256"] == FIRST_STAGE_ADAPTER_SHA256
    assert trained.replace(init_adapter=None, time_budget_s=second.time_budget_s) == second
    # the same data as the first stage: its examples, their audio and encoder features come from the caches
    assert (second.n_examples, second.data_seed, second.data_mix) == (first.n_examples, first.data_seed, first.data_mix)
    assert record["data_sha256"] == RECIPE_DATA_SHA256 and record["examples"] == second.n_examples
    assert record["stopped"] in ("max_steps", "fitted_to_time_budget") and record["steps"] > 300


def test_user_examples_jsonl_round_trip(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    lines = [
        {"id": "u1", "instruction": "Transcribe.", "spoken_text": "hello there", "response": "hello there"},
        {"instruction": "Answer.", "spoken_text": "one and one", "response": "two", "audio": "a.wav"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    examples = read_examples_jsonl(path)
    assert examples[0].id == "u1" and examples[0].audio is None
    assert examples[1].audio == str(tmp_path / "a.wav") and examples[1].id.startswith("user-")
    write_examples_jsonl(examples, tmp_path / "out.jsonl")
    assert read_examples_jsonl(tmp_path / "out.jsonl") == examples
    path.write_text(json.dumps({"instruction": "x", "response": "y"}) + "\n")
    with pytest.raises(Exception, match="missing spoken_text"):
        read_examples_jsonl(path)


def test_config_from_yaml_and_validation(tmp_path):
    recipe = Path(__file__).parents[1] / "distill" / "organism-adapt.yaml"
    assert load_config(recipe).trainable == "projector+lora"
    path = tmp_path / "c.yaml"
    path.write_text("lora_rank: 8\nlearning_rate: 1.0e-4\n")
    assert load_config(path).lora_rank == 8
    path.write_text("learning_rate: 1e-4\nlora_alpha: 16\n")  # YAML 1.1 reads 1e-4 as a string
    assert (load_config(path).learning_rate, load_config(path).lora_alpha) == (1e-4, 16.0)
    path.write_text("warmup_steps: ten\n")
    with pytest.raises(ConfigError, match="warmup_steps must be a whole number, got 'ten'"):
        load_config(path)
    path.write_text("lora_rnak: 8\n")
    with pytest.raises(ConfigError, match="lora_rnak"):
        load_config(path)
    with pytest.raises(ConfigError, match="trainable"):
        AdaptConfig(trainable="encoder")
    with pytest.raises(ConfigError, match="lora_targets"):
        AdaptConfig(lora_targets=["out_proj"])
    with pytest.raises(ConfigError, match="projector_init_clips must be >= 1"):
        AdaptConfig(projector_init_clips=0)


def test_portable_model_name(tmp_path):
    from xkd_eval.models.adapter_weights import portable_model_name

    assert portable_model_name("organism") == "organism"
    assert portable_model_name("Qwen/Qwen2-Audio-7B-Instruct") == "Qwen/Qwen2-Audio-7B-Instruct"
    assert portable_model_name("qwen2-audio:Qwen/Qwen2-Audio-7B-Instruct") == "qwen2-audio:Qwen/Qwen2-Audio-7B-Instruct"
    assert portable_model_name(f"qwen2.5-omni:{tmp_path}/student") == "qwen2.5-omni:student"
    assert portable_model_name(str(tmp_path / "models" / "slm")) == "slm"
