"""LoRA against full fine-tuning on the same model and batch: trainable parameters, optimizer state, peak memory
(RSS of a fresh process per mode) and step time.

    python benchmarks/bench_lora.py                          # ViT-B-32, batch 16, rank 8 on q/k/v + out proj
    python benchmarks/bench_lora.py --model ViT-B-16 --batch 8 --rank 16 --steps 4

Each mode runs in its own process (peak RSS is per process): build the model, add the adapters (LoRA mode), take
``--steps`` training steps with clipforge's trainer step (forward, CLIP loss, backward, AdamW), report the best step.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def worker(args) -> dict:
    import torch

    from clipforge.losses.config import LossConfig, create_loss
    from clipforge.models import adapters
    from clipforge.models.factory import create_model
    from clipforge.training.config import OptimConfig
    from clipforge.training.optim import create_optimizer
    from clipforge.training.step import train_step

    torch.manual_seed(0)
    model = create_model(args.model)
    if args.mode == "lora":
        tower = adapters.LoraTowerConfig(rank=args.rank, alpha=2 * args.rank, targets=(r"attn\.qkv", r"attn\.proj"))
        adapters.apply_lora(model, adapters.LoraConfig(image=tower, text=tower))
    trainable, total = adapters.trainable_parameters(model)
    optimizer = create_optimizer(model, OptimConfig(lr=1e-4))
    loss_fn = create_loss(LossConfig(tiled=False))
    size = model.config.vision.image_size
    images = torch.randn(args.batch, 3, size, size)
    tokens = torch.randint(1, 49000, (args.batch, model.context_length))
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step(model, images, tokens, loss_fn, optimizer)
        times.append(time.perf_counter() - start)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    return {"mode": args.mode, "trainable": trainable, "total": total, "optimizer_mib": state / 2 ** 20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "step_s": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # the per-mode process
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    print(f"# {args.model}, batch {args.batch}, LoRA rank {args.rank} on attn.qkv + attn.proj of both towers; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rows = {}
    for mode in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--rank",
                              str(args.rank), "--steps", str(args.steps), "--mode", mode],
                             check=True, capture_output=True, text=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    print("| mode | trainable params | share | optimizer state MiB | peak RSS MiB | step s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f}% | "
              f"{r['optimizer_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['step_s']:.2f} |")
    full, lora = rows["full"], rows["lora"]
    print(f"LoRA / full: trainable {lora['trainable'] / full['trainable']:.4f}x, peak RSS "
          f"{lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}x, step time {lora['step_s'] / full['step_s']:.2f}x")


if __name__ == "__main__":
    main()
