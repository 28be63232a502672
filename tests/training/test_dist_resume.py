"""Two gloo ranks through the whole training loop (the torchrun path): a run killed after its step-2 checkpoint
and resumed gives the same losses as an uninterrupted run, with DDP and with FSDP2 (sharded checkpoints)."""
import json
import socket

import pytest
import torch.multiprocessing as mp

from clipforge.config import apply_overrides
from clipforge.training.config import TrainConfig

pytestmark = pytest.mark.dist


LORA = {"lora.image.rank": 4, "lora.text.rank": 2, "lora.image.targets": ["attn\\.qkv", "mlp\\.fc1"]}


def _config(workdir, strategy, lora=False):
    return apply_overrides(TrainConfig(), {**(LORA if lora else {}),
        "workdir": str(workdir), "model.name": "tiny-vit", "data.kind": "synthetic", "data.num_samples": 32,
        "data.batch_size": 4, "schedule.steps": 4, "schedule.warmup_steps": 1, "checkpoint.every_steps": 2,
        "log.every_steps": 1, "log.progress": False, "dist.strategy": strategy,
        "model.overrides": {"vision.patch_dropout": 0.25}})  # random per rank: resume must restore each rank's RNG


def _worker(rank, world, port, workdir, strategy, crash, lora=False):
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from clipforge.training.loop import train

    # a job slice that ends right after the step-2 checkpoint, like a preempted or time-limited job
    train(_config(workdir, strategy, lora), stop_at_step=2 if crash else None)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("strategy, lora", [("ddp", False), ("fsdp2", False), ("fsdp2", True)])
def test_two_rank_resume_equals_uninterrupted(tmp_path, strategy, lora):
    for workdir, crash in ((tmp_path / "full", False), (tmp_path / "resumed", True), (tmp_path / "resumed", False)):
        mp.spawn(_worker, args=(2, _free_port(), str(workdir), strategy, crash, lora), nprocs=2, join=True)
    full, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert sorted(full) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6), step
    kind = "dir" if strategy == "fsdp2" else "file"
    latest = sorted((tmp_path / "resumed" / "checkpoints").iterdir())[-1]
    assert (latest.is_dir() if kind == "dir" else latest.is_file())
    if lora:  # the sharded LoRA checkpoint exports a merged plain model and the adapters alone
        from clipforge.models.factory import create_model

        model = create_model(f"local-dir:{tmp_path / 'resumed' / 'model'}")
        assert not any(".lora_" in k or ".base_layer." in k for k in model.state_dict())
        assert (tmp_path / "resumed" / "adapters" / "adapters.safetensors").is_file()
