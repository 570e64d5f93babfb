"""Run by tests/test_kd.py under ``torch.distributed.run --nproc-per-node 2``: a short KD run on the
tiny pair, data parallel over 2 CPU processes (gloo); each rank saves its final trainable weights."""

import sys
from pathlib import Path

import torch
from test_kd import cfg  # the test's tiny-run settings (this script runs from tests/)

from xkd_eval.distill.kd import distill

teacher, student, data, out = sys.argv[1:5]
captured = {}
import xkd_eval.distill.kd as kd  # noqa: E402

original = kd.setup_trainable


def capture(model, config):
    captured["model"] = original(model, config)
    return captured["model"]


kd.setup_trainable = capture
config = cfg(trainable="lora", max_steps=4, eval_fraction=0.0, checkpoint_every=100, save_merged=False)
distill(teacher, student, data, Path(out), config, progress=False, log=None, cache_root=Path(out) / "cache")
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
weights = {n: p.detach().clone() for n, p in captured["model"].named_parameters() if p.requires_grad}
state = kd.process_state()
torch.save(weights, Path(out) / f"rank{rank}.pt")
torch.save({"index": state.process_index, "world": state.num_processes}, Path(out) / f"state{rank}.pt")
