"""Two gloo processes on CPU (DDP and FSDP2) take the same training step as one process on the global batch."""
import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from clipforge.layers.length_buckets import MAX_GROUPS
from clipforge.losses.config import LossConfig, create_loss
from clipforge.models.adapters import LoraConfig, LoraTowerConfig, apply_lora
from clipforge.models.factory import create_model
from clipforge.training.config import DistConfig, OptimConfig
from clipforge.training.launch import RunContext, distribute_model
from clipforge.training.optim import create_optimizer
from clipforge.training.step import train_step

pytestmark = pytest.mark.dist
GLOBAL_BATCH = 8


def _batch(size=32):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(GLOBAL_BATCH, 3, size, size, generator=gen),
            torch.randint(1, 1000, (GLOBAL_BATCH, 16), generator=gen))


def _step(model, images, tokens, world, rank, accum, clip=None, replicated=()):
    loss_fn = create_loss(LossConfig(tiled=False), rank=rank, world_size=world)
    optimizer = create_optimizer(model, OptimConfig(lr=1e-3))
    out = train_step(model, images, tokens, loss_fn, optimizer, accum_steps=accum, grad_clip=clip,
                     replicated_params=replicated)
    return out.loss


def _full_grads(model):
    """Gradients of the step (train_step leaves them in .grad); FSDP2 shards are gathered whole."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        out[name.replace("module.", "")] = g.detach().clone()
    return out


LORA = LoraConfig(image=LoraTowerConfig(rank=4, targets=(r"attn\.qkv", r"mlp\.fc2")),
                  text=LoraTowerConfig(rank=2, targets=(r"attn\.proj",)))


def _model(lora):
    """tiny-vit, with LoRA adapters whose updates are not zero (so every adapter gets a gradient) when asked."""
    torch.manual_seed(0)
    model = create_model("tiny-vit")
    if lora:
        apply_lora(model, LORA)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1)
    return model


def _worker(rank, world, strategy, accum, clip, port, result_path, lora=False, nhwc=False, arch=None):
    # a TCP store on loopback: the file store's teardown raced with the other rank's exit now and then
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    if arch is not None:  # a plain model of that architecture, NHWC when asked
        torch.manual_seed(0)
        model = create_model(arch)
        model = model.to(memory_format=torch.channels_last) if nhwc else model
    else:
        model = _model(lora)
    ctx = RunContext(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"), workdir=None)
    wrapped = distribute_model(model, ctx, DistConfig(strategy=strategy))
    model = wrapped.module
    images, tokens = _batch(64) if arch == "tiny-resnet" else _batch()
    if nhwc:
        images = images.contiguous(memory_format=torch.channels_last)
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    loss = _step(model, images[local], tokens[local], world, rank, accum, clip, wrapped.replicated_params)
    params = _full_grads(model)
    text = getattr(model, "module", model).text
    if rank == 0:
        torch.save({"grads": params, "loss": loss, "text_groups": text.length_groups}, result_path)
    tdist.barrier()
    tdist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("strategy, accum, clip, lora", [
    ("ddp", 1, None, False), ("fsdp2", 1, 0.5, False), ("ddp", 2, None, False), ("fsdp2", 2, None, False),
    ("ddp", 1, None, True), ("fsdp2", 1, 0.5, True)])
def test_two_ranks_equal_one_process(tmp_path, strategy, accum, clip, lora):
    single = _model(lora)
    images, tokens = _batch()
    _step(single, images, tokens, 1, 0, 1, clip)
    expected = _full_grads(single)
    result = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, strategy, accum, clip, _free_port(), str(result), lora), nprocs=2, join=True)
    saved = torch.load(result)
    got = saved["grads"]
    # DDP ranks run their text in length groups (their own, from their own captions); under FSDP2 at most one
    # group (every call of a sharded block is a collective; its hooks on the blocks keep the batch padded anyway)
    assert saved["text_groups"] == (1 if strategy == "fsdp2" else MAX_GROUPS)
    assert sorted(got) == sorted(expected)
    assert not lora or (len(got) == 1 + sum(".lora_" in n for n in got) and any("lora_A" in n for n in got))
    # gradients, not updated weights: Adam's first step turns round-off in a zero gradient (the key bias)
    # into a full-size update, which would hide agreement behind noise
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-5 * float(value.abs().max()) + 1e-12,
                                   msg=name)


@pytest.mark.parametrize("accum", [1, 2])
def test_ddp_trains_an_nhwc_resnet_as_an_nchw_one(tmp_path, accum):
    """DDP over NHWC weights and batches (the trainer's default for a ResNet) gives the gradients of the same two
    ranks in NCHW (two ranks on both sides: BatchNorm's statistics are per rank), with gradient accumulation too
    (its micro-batches are slices of an NHWC batch, and its gradient sum lands in NHWC weights' gradients)."""
    grads = {}
    for nhwc in (False, True):
        result = tmp_path / f"rank0-{nhwc}.pt"
        mp.spawn(_worker, args=(2, "ddp", accum, None, _free_port(), str(result), False, nhwc, "tiny-resnet"),
                 nprocs=2, join=True)
        grads[nhwc] = torch.load(result)["grads"]
    assert sorted(grads[True]) == sorted(grads[False])
    for name, value in grads[False].items():
        torch.testing.assert_close(grads[True][name], value, rtol=1e-4,
                                   atol=1e-4 * float(value.abs().max()) + 1e-12, msg=name)
