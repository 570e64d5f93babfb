"""The KD trainer on a GPU (skipped without CUDA): the tiny pair trains on the device with the recipe's
``mixed_precision: auto`` resolved to bf16 autocast, float32 master weights and exports, a curve close to
the CPU's, a resume that reproduces the uninterrupted curve, and a bf16 teacher whose full-vocabulary cache
matches the live teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from test_kd import cfg, interrupted_at, run  # noqa: E402  (the CPU tests' settings; pair and data: conftest)

ROOT = Path(__file__).resolve().parents[1]


def losses(figures: dict) -> list[float]:
    return [v for _, v in figures["curves"]["loss"]]


def test_bf16_on_the_gpu_trains_float32_masters_and_exports_them(pair, data, tmp_path):
    loaded = {}
    import xkd_eval.distill.kd as kd

    original = kd.setup_trainable

    def capture(model, config):
        loaded["model"] = original(model, config)
        return loaded["model"]

    kd.setup_trainable = capture
    try:
        settings = dict(
            batch_size=8, max_steps=10, top_k=None, eval_every=5, lam=20.0, temperature=1.0, trainable="all"
        )
        figures = run(pair, data, tmp_path, cfg(mixed_precision="auto", learning_rate=3e-3, **settings))
    finally:
        kd.setup_trainable = original
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["config"]["mixed_precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "no")
    trained = [p for p in loaded["model"].parameters() if p.requires_grad]
    assert trained and all(p.device.type == "cuda" and p.dtype == torch.float32 for p in trained)
    for channel in ("tt", "st"):
        kd_curve = [v for _, v in figures["curves"][f"{channel}_kd"]]
        assert all(map(torch.isfinite, map(torch.tensor, kd_curve))) and kd_curve[-1] < kd_curve[0]
    from safetensors.torch import load_file

    projector = load_file(tmp_path / "adapter" / "projector.safetensors")
    assert projector and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in projector.values())


def test_gpu_float32_curve_follows_the_cpu_curve(pair, data, tmp_path):
    """The same run on the CPU (a process that sees no GPU) and on the GPU in float32: a batch collated, masked
    or moved wrongly on one device would part the curves by far more than TF32 rounding does."""
    settings = dict(top_k=None, max_steps=4, mixed_precision="no")
    gpu = losses(run(pair, data, tmp_path / "gpu", cfg(**settings)))
    script = (
        "import json, sys; sys.path.insert(0, 'tests');"
        "from pathlib import Path; from test_kd import cfg, run;"
        f"f = run({list(pair)!r}, Path({str(data)!r}), Path({str(tmp_path / 'cpu')!r}), cfg(**{settings!r}));"
        "print(json.dumps([v for _, v in f['curves']['loss']]))"
    )
    path = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    cpu = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(cpu) == len(gpu) == 4
    assert gpu == pytest.approx(cpu, rel=2e-2)


def test_gpu_bf16_resume_reproduces_the_uninterrupted_curve(pair, data, tmp_path, monkeypatch):
    settings = dict(checkpoint_every=100, mixed_precision="bf16")
    straight = losses(run(pair, data, tmp_path / "a", cfg(**settings)))
    with interrupted_at(4, monkeypatch), pytest.raises(KeyboardInterrupt):
        run(pair, data, tmp_path / "b", cfg(**settings))
    resumed = run(pair, data, tmp_path / "b", cfg(**settings), resume=True)
    assert resumed["resumed_from"] == 3
    assert losses(resumed) == pytest.approx(straight, rel=1e-4)


def test_gpu_bf16_teacher_cache_matches_the_live_teacher(pair, data, tmp_path):
    cached = losses(run(pair, data, tmp_path / "c", cfg(top_k=None, max_steps=2, mixed_precision="bf16")))
    live = losses(
        run(pair, data, tmp_path / "l", cfg(top_k=None, max_steps=2, mixed_precision="bf16", teacher_mode="on_the_fly"))
    )
    assert live == pytest.approx(cached, rel=1e-2)  # the cache stores the bf16 teacher's logits as fp16
