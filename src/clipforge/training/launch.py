"""Process setup: who am I (rank, world size, device), process-group init and model wrapping (DDP / FSDP2).

clipforge never starts processes itself: ``torchrun`` (or SLURM's ``srun``) does, and this module reads what they
set in the environment. Everything runtime goes into a frozen ``RunContext``; the run config is never mutated.
"""
from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as torch_dist

from clipforge import dist
from clipforge.training.config import DistConfig


@dataclasses.dataclass(frozen=True)
class RunContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    workdir: Path

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_run(cfg: DistConfig, workdir: str | Path) -> RunContext:
    rank, local_rank, world = dist.read_environment()
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = cfg.backend or ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("dist.backend=nccl needs CUDA devices; use dist.backend=gloo on CPU")
        if "MASTER_ADDR" not in os.environ:
            raise ValueError(f"WORLD_SIZE={world} but MASTER_ADDR is not set: launch with torchrun "
                             "(torchrun --nproc-per-node N -m clipforge.train ...) or set MASTER_ADDR/MASTER_PORT")
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timedelta(minutes=30))
    return RunContext(rank=rank, local_rank=local_rank, world_size=world, device=device, workdir=Path(workdir))


@dataclasses.dataclass(frozen=True)
class DistributedModel:
    """A model wrapped for the run's strategy. ``module`` is what the step calls; ``replicated_params`` are the
    parameters no wrapper hook synchronises (FSDP2 cannot shard 0-d tensors: the temperature and bias), whose
    gradients the training step averages itself; ``sharded`` is True under FSDP2 (collective evaluation and
    sharded checkpoints)."""

    module: torch.nn.Module
    replicated_params: tuple[torch.nn.Parameter, ...] = ()
    sharded: bool = False


def distribute_model(model: torch.nn.Module, ctx: RunContext, cfg: DistConfig) -> DistributedModel:
    """DDP keeps a full replica per rank; FSDP2 (``fully_shard``) shards parameters, gradients and optimizer state."""
    if not ctx.distributed:
        return DistributedModel(model)
    if cfg.strategy == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedModel(torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids))
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # Shard each transformer/residual block (the members of every ModuleList), then the root: blocks are the
    # natural unit of communication and of activation memory.
    scalars = tuple(p for p in model.parameters() if p.ndim == 0)  # same order on every rank (bucketed all-reduce)
    for module in model.modules():
        if getattr(module, "length_groups", 0) > 1:
            # a text tower's length groups differ between ranks, and each call of a sharded block is a collective
            # all-gather: one group per batch (cut to its longest need) keeps every rank's calls in step
            module.length_groups = 1
    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block)
                _register_methods(block, ("forward_token",), register_fsdp_forward_method)
    fully_shard(model, ignored_params=set(scalars))
    # entry points other than forward() must gather the parameters too (the last block's single-token path,
    # and encode_image / encode_text called by evaluation hooks)
    _register_methods(model, ("encode_image", "encode_text"), register_fsdp_forward_method)
    return DistributedModel(model, replicated_params=scalars, sharded=True)


def _register_methods(module, names, register) -> None:
    for name in names:
        if callable(getattr(module, name, None)):
            register(module, name)


def barrier() -> None:
    if dist.is_initialized():
        torch_dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        torch_dist.destroy_process_group()
