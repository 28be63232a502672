"""Training throughput on CPU: one full step (forward, loss, backward, AdamW) of clipforge against open_clip's
training step on the same architecture, weights and batch, in one run.

    python benchmarks/bench_train.py                 # ViT-B-32 and ViT-S-32 at batch 32, RN50 at 128 px batch 16
    python benchmarks/bench_train.py --repeats 5 --models ViT-B-32 ViT-S-32/8 RN50@224/32
    python benchmarks/bench_train.py --tokens random  # every sequence as long as the context (no padding)

open_clip's side reproduces the inner loop of open_clip_train's train_one_epoch: model(images, texts) ->
ClipLoss -> backward -> AdamW step -> clamp of logit_scale. clipforge's side is `clipforge.training.step.train_step`
(the function the trainer calls), with the model and batches in the memory format the trainer gives them (NHWC for
convolutional towers). Steps of both are interleaved and the best of N is kept (shared machine). The
process takes the trainer's host-memory setting (``clipforge.allocator.keep_freed_memory``: freed buffers stay
mapped, no page faults each step) unless ``--default-malloc``; it is process-wide, so open_clip's side gets it too.

MFU: the step's floating-point operations, counted by torch's FlopCounterMode on open_clip's step (plain torch
ops: matmuls, convolutions, attention; forward and backward), divided by the step time and by this machine's
measured fp32 matmul peak (the best of a few 2048 x 2048 x 2048 matmuls in the same process and thread count,
measured before and after the steps). clipforge computes the same products in fused kernels that the counter
cannot see, so both sides are credited with the same count, less (for clipforge) the text positions it skips.

Texts: by default web-like captions (``bench_tokenizer.make_captions``, tokenized: ~16 of 77 tokens on average),
as a training batch holds them. clipforge's text tower never computes the positions after a caption's end-of-text
token (``layers/length_buckets.py``: the batch runs in a few groups of similar length, with the same results);
open_clip computes all 77. The "text" column is the share of the padded batch's positions clipforge computes, and
its MFU counts only those (open_clip's text FLOPs scaled by that share; attention grows with the square of the
length, so the work left is slightly overstated). ``--tokens random`` gives every sequence the full context
(random ids, end-of-text last), where nothing is skipped: the condition of the MFU target.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402


def build_pair(name: str, image_size: int | None):
    import open_clip

    from clipforge.models.clip import CLIP
    from clipforge.models.convert import convert_state_dict
    from clipforge.models.convert_config import config_from_open_clip

    kwargs = {"force_image_size": image_size} if image_size else {}
    reference = open_clip.create_model(name, **kwargs)
    model_cfg = open_clip.get_model_config(name)
    if image_size:
        model_cfg = {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "image_size": image_size}}
    config = config_from_open_clip(model_cfg)
    model = CLIP(config)
    model.load_state_dict(convert_state_dict(reference.state_dict(), config))
    return reference.train(), model.train(), config


def adamw(model):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit" not in n)]
    return torch.optim.AdamW([{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.2}],
                             lr=1e-4, betas=(0.9, 0.98), eps=1e-6)


def open_clip_step(model, optimizer, loss_fn, images, tokens):
    optimizer.zero_grad(set_to_none=True)
    image_features, text_features, logit_scale = model(images, tokens)[:3]
    loss = loss_fn(image_features, text_features, logit_scale)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return float(loss.detach())


def matmul_peak(repeats: int = 5, n: int = 2048) -> float:
    """Best fp32 matmul rate of this process, in FLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def step_flops(reference, images, tokens) -> int:
    """FLOPs of one forward + backward of open_clip's model and loss (the optimizer's are negligible)."""
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        image_features, text_features, logit_scale = reference(images, tokens)[:3]
        open_clip.ClipLoss()(image_features, text_features, logit_scale).backward()
    reference.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def text_flops(reference, tokens) -> int:
    """FLOPs of one forward + backward of open_clip's text tower alone on ``tokens``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        reference.encode_text(tokens).sum().backward()
    reference.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def text_share(model, tokens) -> float:
    """Share of the batch's text positions clipforge's text tower computes (its length groups)."""
    from clipforge.layers.pool import text_pool_index

    text = model.text
    groups = text._length_groups(text_pool_index(tokens, text.config.pool, text.config.eos_id), tokens.shape[1])
    return 1.0 if groups is None else sum(len(rows) * length for rows, length in groups) / tokens.numel()


def run_pair(name, image_size, batch, repeats, token_kind="captions"):
    import open_clip
    from bench_tokenizer import caption_tokens

    from clipforge.losses.config import LossConfig, create_loss
    from clipforge.training.step import train_step

    reference, model, config = build_pair(name, image_size)
    size = config.vision.image_size
    images = torch.randn(batch, 3, size, size)
    tokens = caption_tokens(token_kind, batch, config.text.context_length, config.text.vocab_size)
    from clipforge.training.config import OptimConfig
    from clipforge.training.optim import create_optimizer

    # clipforge's model and batches as the trainer prepares them: NHWC for a convolutional image tower
    # (model.channels_last unset); open_clip_train has no such switch
    from clipforge.training.config import TrainConfig
    from clipforge.training.loop import uses_channels_last

    ours_images = images
    if uses_channels_last(TrainConfig(), model):
        model = model.to(memory_format=torch.channels_last)
        ours_images = images.contiguous(memory_format=torch.channels_last)
    # each side with its trainer's optimizer: open_clip_train's plain AdamW, clipforge's create_optimizer (the fused
    # AdamW kernel where it applies)
    ref_opt = adamw(reference)
    opt = create_optimizer(model, OptimConfig(lr=1e-4, weight_decay=0.2, beta1=0.9, beta2=0.98, eps=1e-6))
    ref_loss, loss_fn = open_clip.ClipLoss(), create_loss(LossConfig(kind="clip"))
    flops = step_flops(reference, images, tokens)
    share = text_share(model, tokens)
    our_flops = flops - (1 - share) * text_flops(reference, tokens)  # the text positions clipforge skips
    times = {"open_clip": [], "clipforge": []}
    losses = {}
    for _ in range(repeats + 1):  # the first round warms up both
        start = time.perf_counter()
        losses["open_clip"] = open_clip_step(reference, ref_opt, ref_loss, images, tokens)
        times["open_clip"].append(time.perf_counter() - start)
        start = time.perf_counter()
        losses["clipforge"] = train_step(model, ours_images, tokens, loss_fn, opt).loss
        times["clipforge"].append(time.perf_counter() - start)
    best = {k: min(v[1:]) for k, v in times.items()}
    flop_rates = {"open_clip": flops / best["open_clip"], "clipforge": our_flops / best["clipforge"]}
    return {k: batch / v for k, v in best.items()}, losses, flop_rates, flops, share


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the trainer's keep_freed_memory is on by default)")
    parser.add_argument("--tokens", choices=["captions", "random"], default="captions",
                        help="web-like captions (padded to the context) or random ids filling the context")
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-S-32", "RN50@128"],
                        help="NAME, NAME@PIXELS, with /BATCH to set the batch (default 32, ResNets 16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import os

    from clipforge.allocator import keep_freed_memory
    from clipforge.cpu import cpu_model

    cpu = cpu_model()
    # what clipforge's trainer does on CPU runs; process-wide, so open_clip's steps in this process profit as well
    kept = not args.default_malloc and keep_freed_memory()
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}; load average "
          f"{os.getloadavg()[0]:.2f}; measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; malloc keeps freed "
          f"memory (both sides): {'yes' if kept else 'no'}; texts: {args.tokens}")
    print(f"{'model':<16} {'batch':>5} {'GFLOP/step':>10} {'open_clip/s':>12} {'clipforge/s':>12} {'ratio':>6} "
          f"{'MFU oc':>7} {'MFU cf':>7} {'text':>5}  first losses (oc / cf)")
    for spec in args.models:
        spec_model, _, batch_text = spec.partition("/")
        name, _, pixels = spec_model.partition("@")
        image_size = int(pixels) if pixels else None
        batch = int(batch_text) if batch_text else 16 if name.startswith("RN") else 32
        rates, losses, flop_rates, flops, share = run_pair(name, image_size, batch, args.repeats, args.tokens)
        peak = max(peak, matmul_peak(repeats=2))  # the best seen in the run: MFU is never flattered by a slow start
        print(f"{spec:<16} {batch:>5} {flops / 1e9:>10.1f} {rates['open_clip']:>12.1f} {rates['clipforge']:>12.1f} "
              f"{rates['clipforge'] / rates['open_clip']:>5.2f}x {flop_rates['open_clip'] / peak:>6.0%} "
              f"{flop_rates['clipforge'] / peak:>6.0%} {share:>5.0%}  {losses['open_clip']:.4f} / "
              f"{losses['clipforge']:.4f}")
    print(f"peak used for MFU: {peak / 1e9:.1f} GFLOP/s; load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
