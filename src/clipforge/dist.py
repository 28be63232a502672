"""torch.distributed helpers: who am I (from torchrun's or SLURM's environment), gather with gradients, pass blocks around a ring.

A ``Collective`` names the ranks a loss talks to (rank, world size, process group). Losses take one (or None for a
single process) instead of reading global state, so the same function runs in tests, in DDP and in FSDP.

All ranks must call these helpers in the same order with tensors of the same shape (equal local batch sizes).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as tdist


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return default


def read_environment() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's variables, else SLURM's, else a single process."""
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    return rank, local_rank, world


def is_initialized() -> bool:
    """True when a default process group exists."""
    return tdist.is_available() and tdist.is_initialized()


def get_rank(group: Any = None) -> int:
    return tdist.get_rank(group) if is_initialized() else 0


def get_world_size(group: Any = None) -> int:
    return tdist.get_world_size(group) if is_initialized() else 1


GRADIENT_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


def _buckets(tensors: list[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of same-dtype, same-device tensors of at most ``limit`` bytes (a bigger tensor alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (size + nbytes > limit or tensor.dtype != bucket[0].dtype or tensor.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket


def average_gradients(params: Iterable[torch.nn.Parameter], bucket_bytes: int = GRADIENT_BUCKET_BYTES) -> None:
    """Average ``.grad`` over all ranks in place (for parameters no DDP/FSDP hook synchronises).

    Gradients are flattened into buckets of ``bucket_bytes`` so that a model costs a few all-reduces, not one per
    tensor. Every rank must pass the same parameters with the same gradients present.
    """
    if not is_initialized():
        return
    grads = [p.grad for p in params if p.grad is not None]
    world = get_world_size()
    for bucket in _buckets(grads, bucket_bytes):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        tdist.all_reduce(flat)
        flat.div_(world)
        for grad, synced in zip(bucket, flat.split([g.numel() for g in bucket])):
            grad.copy_(synced.view_as(grad))


@dataclasses.dataclass(frozen=True)
class Collective:
    """The ranks a loss exchanges features with. ``group=None`` means the default process group."""

    rank: int = 0
    world_size: int = 1
    group: Any = None

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"Collective: rank {self.rank} is not in [0, world_size={self.world_size}); "
                             "pass the rank and world size of the initialised process group")
        if self.world_size > 1 and not is_initialized():
            raise RuntimeError(f"Collective: world_size={self.world_size} but torch.distributed is not initialised; "
                               "call torch.distributed.init_process_group first (or use world_size=1)")

    @classmethod
    def current(cls, group: Any = None) -> "Collective":
        """The collective of the initialised process group (a single process when none is)."""
        return cls(rank=get_rank(group), world_size=get_world_size(group), group=group)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def right(self) -> int:
        return (self.rank + 1) % self.world_size

    @property
    def left(self) -> int:
        return (self.rank - 1) % self.world_size


def is_distributed(collective: Collective | None) -> bool:
    return collective is not None and collective.is_distributed


def _global_rank(collective: Collective, rank: int) -> int:
    # point-to-point calls take ranks of the default group
    if collective.group is None:
        return rank
    return tdist.get_global_rank(collective.group, rank)


def all_gather_no_grad(tensor: torch.Tensor, collective: Collective) -> torch.Tensor:
    """Concatenation along dim 0 of ``tensor`` from every rank, in rank order (no autograd)."""
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(collective.world_size)]
    tdist.all_gather(parts, tensor, group=collective.group)
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, collective):
        ctx.collective = collective
        ctx.local_size = tensor.shape[0]
        return all_gather_no_grad(tensor, collective)

    @staticmethod
    def backward(ctx, grad):
        collective, n = ctx.collective, ctx.local_size
        grad = grad.contiguous()
        # Every rank's loss used every rank's rows, so this rank's gradient is the sum over ranks.
        if tdist.get_backend(collective.group) == "nccl":
            out = torch.empty((n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            tdist.reduce_scatter_tensor(out, grad, group=collective.group)
            return out, None
        # gloo has no reduce-scatter: all-reduce, then keep this rank's slice
        tdist.all_reduce(grad, group=collective.group)
        return grad[collective.rank * n:(collective.rank + 1) * n].clone(), None


def all_gather_with_grad(tensor: torch.Tensor, collective: Collective) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along dim 0; gradients flow back to every rank's own rows.

    The gradient a rank receives for its rows is the sum of what every rank's loss sends it, so that DDP's
    average over ranks of the parameter gradients equals the gradient of the mean of the ranks' losses.
    """
    if not collective.is_distributed:
        return tensor
    return _AllGatherWithGrad.apply(tensor, collective)


class PendingPass:
    """A ring pass in flight: ``wait()`` returns the received tensors once both transfers are done."""

    def __init__(self, received: list[torch.Tensor], requests: list[Any]):
        self._received, self._requests = received, requests

    def wait(self) -> list[torch.Tensor]:
        for request in self._requests:
            request.wait()
        return self._received


def start_ring_pass(tensors: Sequence[torch.Tensor], collective: Collective, *,
                    backward: bool = False) -> PendingPass:
    """Start sending each tensor to the right neighbour and receiving the left one's (reversed ``backward``).

    The sent tensors must not be modified until ``wait()`` returns; computing with them meanwhile is what
    lets the transfer overlap the work.
    """
    dst, src = (collective.left, collective.right) if backward else (collective.right, collective.left)
    dst, src = _global_rank(collective, dst), _global_rank(collective, src)
    received = [torch.empty_like(t) for t in tensors]
    requests = []
    for sent, recv in zip(tensors, received):
        requests.append(tdist.isend(sent.contiguous(), dst, group=collective.group))
        requests.append(tdist.irecv(recv, src, group=collective.group))
    return PendingPass(received, requests)


def ring_pass(tensors: Sequence[torch.Tensor], collective: Collective, *, backward: bool = False) -> list[torch.Tensor]:
    """Send each tensor to the right neighbour and return what arrives from the left one (no autograd).

    With ``backward=True`` the direction is reversed (send left, receive from right).
    """
    return start_ring_pass(tensors, collective, backward=backward).wait()


class _RingShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, collective):
        ctx.collective = collective
        return ring_pass([tensor], collective)[0]

    @staticmethod
    def backward(ctx, grad):
        # the gradient of a received block belongs to the sender, one step back round the ring
        return ring_pass([grad], ctx.collective, backward=True)[0], None


def ring_shift_with_grad(tensor: torch.Tensor, collective: Collective) -> torch.Tensor:
    """The left neighbour's ``tensor``; its gradient is sent back to that neighbour in backward."""
    if not collective.is_distributed:
        return tensor
    return _RingShift.apply(tensor, collective)
