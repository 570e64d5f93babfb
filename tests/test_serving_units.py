"""The serving backends' parts that need no engine: names, devices per rank, backends on record, the stock
checkpoint layout, and the item-by-item comparison of two runs."""

from __future__ import annotations

import pandas as pd
import pytest

from xkd_eval.errors import XkdError
from xkd_eval.models import backend_of, load_model, recommended_settings
from xkd_eval.models.vllm_engine import visible_devices
from xkd_eval.report.agreement import response_agreement


def test_backends_are_known_without_loading():
    assert backend_of("vllm:organism") == "vllm"
    assert backend_of("openai:gpt-4o-audio-preview") == "openai"
    assert backend_of("organism") == "transformers"
    assert backend_of("hf-text:HuggingFaceTB/SmolLM2-135M-Instruct") == "transformers"


def test_a_named_model_served_in_process_keeps_its_recommendation():
    assert recommended_settings("vllm:organism") == {"mcq_mode": "cloze"} == recommended_settings("organism")
    assert recommended_settings("openai:organism") == {}  # whatever that server serves under the name


def test_each_data_parallel_rank_gets_its_own_gpus():
    assert visible_devices(0, 1, "0,1,2,3") == "0"
    assert visible_devices(1, 2, "0,1,2,3") == "2,3"
    assert visible_devices(1, 1, "4,5") == "5"
    with pytest.raises(XkdError, match="rank 2 needs GPUs 4..5"):
        visible_devices(2, 2, "0,1,2,3")


def test_vllm_missing_is_one_line_with_what_to_install():
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(XkdError, match=r"pip install 'xkd-eval\[vllm\]'.*make serving-env"):
            load_model("vllm:organism")
        from typer.testing import CliRunner

        from xkd_eval.cli import app

        result = CliRunner().invoke(app, ["gap", "--model", "vllm:organism", "--task", "builtin/mcq", "--out", "x"])
        assert result.exit_code == 2 and "vllm: models need vLLM" in result.output  # before any task loads
    else:  # pragma: no cover - .venv-serving
        pytest.skip("vLLM is installed here")


def test_nested_language_model_keys_are_written_in_the_stock_layout(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from xkd_eval.organism.export import _check_stock_keys

    weights = {
        "language_model.model.model.layers.0.mlp.up_proj.weight": torch.ones(2, 2),
        "language_model.model.lm_head.weight": torch.zeros(3, 2),
        "audio_tower.conv1.weight": torch.full((1,), 2.0),
    }
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _check_stock_keys(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = sorted(handle.keys())
        assert torch.equal(handle.get_tensor("language_model.lm_head.weight"), torch.zeros(3, 2))
    assert keys == [
        "audio_tower.conv1.weight",
        "language_model.lm_head.weight",
        "language_model.model.layers.0.mlp.up_proj.weight",
    ]
    save_file({"vision_tower.x": torch.ones(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(XkdError, match="outside the stock layout"):
        _check_stock_keys(tmp_path)


def rows(responses: dict[str, str | None], arm: str = "slm_speech") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task": "t", "arm": arm, "item_id": item, "response": response, "error": None if response else "failed"}
            for item, response in responses.items()
        ]
    )


def test_two_runs_agree_item_by_item():
    first = pd.concat([rows({"1": "B", "2": "C", "3": "A", "4": None}), rows({"1": "yes"}, arm="slm_text")])
    second = pd.concat([rows({"1": " B", "2": "D", "3": "A", "4": "A", "5": "B"}), rows({"1": "no"}, arm="slm_text")])
    speech, text = response_agreement(first, second)
    # items 4 (failed in the first run) and 5 (not in it) are not compared; surrounding space is not a difference
    assert (speech.arm, speech.n, speech.equal, speech.differing) == ("slm_speech", 3, 2, (("2", "C", "D"),))
    assert (text.n, text.equal, text.share) == (1, 0, 0.0)


def test_an_engines_top_k_becomes_the_teacher_caches_top_k():
    import torch

    from xkd_eval.distill.teacher_cache import topk_of_positions

    positions = [
        # the actual token (id 9, rank 5) comes beside the top 2; id 50 is outside the shared vocabulary
        {3: (-0.1, 1), 7: (-2.5, 2), 9: (-6.0, 5)},
        {50: (-0.2, 1), 4: (-1.9, 2), 1: (-3.0, 3)},
    ]
    top = topk_of_positions(positions, k=2, shared_size=49)
    assert top.indices.tolist() == [[3, 7], [4, 0]]
    assert top.values[0].tolist() == pytest.approx([-0.1, -2.5])
    assert top.values[1, 0].item() == pytest.approx(-1.9) and top.values[1, 1].item() == float("-inf")
    with pytest.raises(XkdError, match="none of the engine's top-2"):
        topk_of_positions([{60: (-0.1, 1)}], k=2, shared_size=49)
    assert torch.isfinite(top.values).sum() == 3


def test_a_vllm_teacher_needs_a_cached_top_k():
    from xkd_eval.distill.config import KDConfig

    assert KDConfig(teacher_backend="vllm", top_k=64).teacher_backend == "vllm"
    with pytest.raises(XkdError, match="needs teacher_mode: cached and a top_k"):
        KDConfig(teacher_backend="vllm", top_k=None)
    with pytest.raises(XkdError, match="teacher_backend must be one of transformers, vllm"):
        KDConfig(teacher_backend="sglang")


def test_serving_backends_render_the_prompts_of_the_transformers_adapters(tiny_slm, tiny_text):
    import numpy as np

    from xkd_eval.models import Query
    from xkd_eval.models.serving import PromptRenderer, served_model

    clip = np.zeros(8_000, dtype=np.float32)
    for folder, family in ((tiny_slm, "qwen2-audio"), (tiny_text, "hf-text")):
        served = served_model(str(folder))
        assert served.family == family and served.source == str(folder)
        renderer = PromptRenderer(served.family, served.source, None)
        hf = load_model(str(folder))
        queries = [Query("w", "Which is a mammal?")] + ([Query("s", "Listen.", clip)] if family != "hf-text" else [])
        for query in queries:
            assert renderer.render(query) == hf.render_prompt(query)


def test_engine_options_reach_only_the_backends_that_take_them():
    from xkd_eval.models import options_for, unused_engine_options

    given = {"device": "cpu", "api_base": "http://127.0.0.1:8000/v1", "tensor_parallel_size": None,
             "max_concurrency": 4}  # fmt: skip
    assert options_for("openai:my-slm", given) == {"device": "cpu", "api_base": given["api_base"], "max_concurrency": 4}
    assert options_for("organism-base", given) == {"device": "cpu"}
    assert options_for("vllm:organism", given | {"tensor_parallel_size": 2}) == {
        "device": "cpu",
        "tensor_parallel_size": 2,
    }
    assert unused_engine_options(["openai:my-slm", "organism-base"], given) == []
    assert unused_engine_options(["organism", "organism-base"], given) == ["api_base", "max_concurrency"]


def test_the_cli_refuses_engine_options_no_model_takes(tmp_path):
    from typer.testing import CliRunner

    from xkd_eval.cli import app

    result = CliRunner().invoke(
        app,
        ["gap", "--model", "organism", "--task", "builtin/mcq", "--api-base", "http://x/v1", "--out", str(tmp_path)],
    )
    assert result.exit_code == 2 and "only vllm: and openai: models take --api-base" in result.output
    result = CliRunner().invoke(
        app, ["gap", "--model", "openai:m", "--base", "organism-base", "--task", "builtin/mcq", "--base-api-base",
              "http://x/v1", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 2 and "--base-api-base is the endpoint of an openai: --base" in result.output


def test_teacher_cache_entries_of_another_precision_are_their_own(tmp_path):
    import torch

    from xkd_eval.distill.teacher_cache import TeacherCache

    half = TeacherCache(tmp_path, "teacher", 2, 10)
    full = TeacherCache(tmp_path, "teacher", 2, 10, dtype="float32")
    half.put(half.key([1, 2], [3]), torch.tensor([[5.0123457, 0.1, 1.0]]))
    assert full.load(full.key([1, 2], [3])) is None  # not the fp16 entry
    stored = full.put(full.key([1, 2], [3]), torch.tensor([[5.0123457, 0.1, 1.0]]))
    reloaded = full.load(full.key([1, 2], [3]))
    assert stored.values.dtype == torch.float32
    assert reloaded.values[0, 0].item() == pytest.approx(5.0123457, abs=1e-6)  # fp16 would give 5.0117
