"""Distributed losses on gloo processes against one process on the same global batch.

Each rank returns the loss of its own rows, so the mean of the ranks' losses must equal the single-process loss
and each rank's feature gradient (of the sum of all ranks' losses) must equal world_size times the single-process
gradient of its rows; the scale and bias gradients, summed over ranks, must equal world_size times theirs.
One spawn per world size runs every case; 3 ranks make the ring's left and right neighbours differ.
"""
import json
import math
import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F

pytestmark = pytest.mark.dist

LOCAL_BATCH, DIM = 5, 8


def _global_batch():
    gen = torch.Generator().manual_seed(1234)
    world = 3  # generate for the largest world size and slice, so every run sees fixed data
    make = lambda d: F.normalize(torch.randn(world * LOCAL_BATCH, d, generator=gen), dim=-1)  # noqa: E731
    return make(DIM), make(DIM), make(6), make(6)


def _cases(collective):
    from clipforge.losses import (LossConfig, TeacherOutputs, clip_distill_loss, clip_loss, create_loss,
                                  siglip_loss, tiled_clip_loss, tiled_siglip_loss)

    def distill(i, t, s, b, ti, tt, coll):
        contrastive, dist = clip_distill_loss(i, t, s, TeacherOutputs(ti, tt, 30.0), collective=coll)
        return contrastive + 0.5 * dist

    def created(i, t, s, b, ti, tt, coll):
        loss = create_loss(LossConfig(kind="siglip", tiled=True, tile_size=2), rank=coll.rank if coll else 0,
                           world_size=coll.world_size if coll else 1)
        return loss(i, t, s, b)["loss"]

    return {
        "clip_gather": lambda i, t, s, b, ti, tt, coll: clip_loss(i, t, s, collective=coll),
        "siglip_gather": lambda i, t, s, b, ti, tt, coll: siglip_loss(i, t, s, b, collective=coll, exchange="gather"),
        "siglip_ring": lambda i, t, s, b, ti, tt, coll: siglip_loss(i, t, s, b, collective=coll, exchange="ring"),
        "tiled_clip_ring": lambda i, t, s, b, ti, tt, coll: tiled_clip_loss(i, t, s, tile_size=3, collective=coll),
        "tiled_siglip_ring": lambda i, t, s, b, ti, tt, coll: tiled_siglip_loss(i, t, s, b, tile_size=3,
                                                                                collective=coll),
        "distill_gather": distill,
        "create_loss_tiled_siglip": created,
    }


def _grads(fn, images, texts, teacher_images, teacher_texts, coll):
    images, texts = images.clone().requires_grad_(), texts.clone().requires_grad_()
    log_scale = torch.tensor(math.log(20.0), requires_grad=True)
    bias = torch.tensor(-5.0, requires_grad=True)
    loss = fn(images, texts, log_scale.exp(), bias, teacher_images, teacher_texts, coll)
    loss.backward()
    zero = torch.zeros(())
    return (loss.detach(), images.grad, texts.grad, log_scale.grad,
            bias.grad if bias.grad is not None else zero)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _worker(rank, world, store_path, out_path):
    from clipforge.dist import Collective
    tdist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    images, texts, t_images, t_texts = (t[:world * LOCAL_BATCH] for t in _global_batch())
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    coll = Collective.current()
    errors = {}
    for name, fn in _cases(coll).items():
        ref = _grads(fn, images, texts, t_images, t_texts, None)
        got = _grads(fn, images[rows], texts[rows], t_images[rows], t_texts[rows], coll)
        loss, scalars = got[0].clone(), torch.stack([got[3], got[4]])
        tdist.all_reduce(loss)
        tdist.all_reduce(scalars)
        errors[name] = max(_rel(loss / world, ref[0]), _rel(got[1], world * ref[1][rows]),
                           _rel(got[2], world * ref[2][rows]), _rel(scalars[0], world * ref[3]),
                           _rel(scalars[1], world * ref[4]) if ref[4].abs() > 0 else 0.0)
    gathered = [None] * world
    tdist.all_gather_object(gathered, errors)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    tdist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def dist_errors(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"dist{request.param}")
    out = tmp / "errors.json"
    mp.spawn(_worker, args=(request.param, str(tmp / "store"), str(out)), nprocs=request.param, join=True)
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", list(_cases(None)))
def test_distributed_equals_single_process(dist_errors, case):
    for rank, errors in enumerate(dist_errors):
        assert errors[case] < 1e-5, f"rank {rank}: relative error {errors[case]:.3g}"
