"""Run by tests/test_kd.py under ``torch.distributed.run --nproc-per-node 2``: ``xkd-eval distill``'s pipeline
on the tiny pair, data parallel over 2 CPU processes (gloo), measured before and after on a small task with
each rank answering its share; each rank saves its final trainable weights."""

import sys
from pathlib import Path

import torch
from test_kd import cfg  # the test's tiny-run settings (this script runs from tests/)

from xkd_eval.distill.pipeline import run_distillation
from xkd_eval.models.base import GenerationSettings
from xkd_eval.runner.core import RunConfig

teacher, student, data, out, task = sys.argv[1:6]
captured = {}
import xkd_eval.distill.kd as kd  # noqa: E402

original = kd.setup_trainable


def capture(model, config):
    captured["model"] = original(model, config)
    return captured["model"]


finished = kd._record_of_finished_run


def snapshot(*args, **kwargs):
    """The trained weights, taken on every rank before the main one merges LoRA into the exported student."""
    captured["weights"] = {n: p.detach().clone() for n, p in captured["model"].named_parameters() if p.requires_grad}
    return finished(*args, **kwargs)


kd.setup_trainable = capture
kd._record_of_finished_run = snapshot
config = cfg(trainable="lora", max_steps=4, eval_fraction=0.0, checkpoint_every=100)
measuring = RunConfig.sharded_from_env(out_dir=Path(out), settings=GenerationSettings(max_new_tokens=3), batch_size=4)
run_distillation(
    teacher=teacher,
    student=student,
    data=data,
    config=config,
    out=Path(out),
    eval_tasks=[f"jsonl:{task}"],
    eval_config=measuring,
)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
state = kd.process_state()
torch.save(captured["weights"], Path(out) / f"rank{rank}.pt")
torch.save({"index": state.process_index, "world": state.num_processes}, Path(out) / f"state{rank}.pt")
