"""Peak memory and time of one forward+backward of the contrastive losses, clipforge tiled vs open_clip dense.

Each (loss, batch size) runs in its own subprocess so that memory peaks do not mix: the loss memory is the peak
resident memory during forward+backward (Linux VmHWM, reset just before) minus the resident memory just before, so
it counts logits, temporaries and the feature gradients, not the inputs. Children run with glibc's
MALLOC_MMAP_THRESHOLD_=1 MiB (override it in the environment) so that freed tiles do not linger as heap slack.
open_clip runs only where its predicted memory fits ``--dense-limit-gib``; the batch that fits ``--budget-gib`` is
extrapolated from the largest measured points by each loss's law (quadratic for dense, linear for tiled).
Time is reported as wall and CPU seconds: on a shared machine the CPU time is the steadier of the two.

    python benchmarks/bench_losses.py                      # 4,096 .. 16,384, a few minutes on 2 cores
    python benchmarks/bench_losses.py --sizes 32768 65536  # the large sizes (open_clip skipped there)
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

LOSSES = ("open_clip.ClipLoss", "clipforge.clip", "clipforge.tiled_clip", "open_clip.SigLipLoss", "clipforge.siglip",
          "clipforge.tiled_siglip")
# number of N x N fp32 matrices open_clip holds at its peak (measured: ClipLoss ~4, SigLipLoss ~5)
DENSE_MATRICES = {"open_clip.ClipLoss": 4, "open_clip.SigLipLoss": 5, "clipforge.clip": 4, "clipforge.siglip": 3}


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def _start_measuring() -> int:
    """Resident bytes now, with the peak reset to it (Linux); freed heap memory is first handed back to the OS
    so that memory left over from setting up the inputs cannot hide the loss's own allocations."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set size
        return _status_bytes("VmRSS")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_bytes() -> int:
    try:
        return _status_bytes("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _make_loss(name: str, tile_size: int | None):
    if name == "open_clip.ClipLoss":
        from open_clip.loss import ClipLoss
        loss = ClipLoss()
        return lambda i, t, s, b: loss(i, t, s)
    if name == "open_clip.SigLipLoss":
        from open_clip.loss import SigLipLoss
        loss = SigLipLoss()
        return lambda i, t, s, b: loss(i, t, s, b)
    if name == "clipforge.clip":  # the dense forms (loss.tiled=false)
        from clipforge.losses.contrastive import clip_loss
        return lambda i, t, s, b: clip_loss(i, t, s)
    if name == "clipforge.siglip":
        from clipforge.losses.sigmoid import siglip_loss
        return lambda i, t, s, b: siglip_loss(i, t, s, b)
    from clipforge.losses.tiled import tiled_clip_loss, tiled_siglip_loss
    if name == "clipforge.tiled_clip":
        return lambda i, t, s, b: tiled_clip_loss(i, t, s, tile_size=tile_size)
    return lambda i, t, s, b: tiled_siglip_loss(i, t, s, b, tile_size=tile_size)


def child(name: str, batch: int, dim: int, tile_size: int | None, device: str = "cpu") -> dict:
    """Run one forward+backward in this process and return its figures (on CUDA: allocator peak)."""
    import torch
    torch.manual_seed(0)
    loss_fn = _make_loss(name, tile_size)
    cuda = device.startswith("cuda")
    make = lambda: torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=-1)  # noqa: E731
    images, texts = make().requires_grad_(), make().requires_grad_()
    log_scale = torch.tensor(math.log(10.0), device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    # warm up thread pools and matmul workspaces on a small batch, so they are not counted as loss memory
    loss_fn(images[:512], texts[:512], log_scale.exp(), bias).backward()
    images.grad = texts.grad = log_scale.grad = bias.grad = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _start_measuring()
    start, start_cpu = time.perf_counter(), time.process_time()
    loss = loss_fn(images, texts, log_scale.exp(), bias)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_bytes()
    return {"loss": name, "batch": batch, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "loss_bytes": peak - before, "value": float(loss.detach())}


def _run_child(name, batch, dim, tile_size, device) -> dict:
    cmd = [sys.executable, __file__, "--child", name, str(batch), "--dim", str(dim), "--device", device]
    if tile_size:
        cmd += ["--tile-size", str(tile_size)]
    # A fixed mmap threshold makes glibc return every freed block above 1 MiB to the OS at once, so the peak
    # measures what the loss allocates rather than heap slack left by freed tiles (same setting for every loss).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=os.environ.get("MALLOC_MMAP_THRESHOLD_", str(2**20)))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"loss": name, "batch": batch, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_batch(name: str, points: list[dict], budget: float) -> int | None:
    """Largest batch within ``budget`` bytes by the loss's law, fitted on the measured points."""
    good = [p for p in points if "loss_bytes" in p]
    if not good:
        return None
    if name in DENSE_MATRICES:
        top = max(good, key=lambda p: p["batch"])
        return int(top["batch"] * math.sqrt(budget / top["loss_bytes"]))
    if len(good) < 2:
        top = good[-1]
        return int(top["batch"] * budget / top["loss_bytes"])
    lo, hi = sorted(good, key=lambda p: p["batch"])[-2:]
    per_item = (hi["loss_bytes"] - lo["loss_bytes"]) / (hi["batch"] - lo["batch"])
    fixed = hi["loss_bytes"] - per_item * hi["batch"]
    return int((budget - fixed) / per_item) if per_item > 0 else None


ANCHOR = {"clipforge.tiled_clip": "open_clip.ClipLoss", "clipforge.tiled_siglip": "open_clip.SigLipLoss",
          "clipforge.clip": "open_clip.ClipLoss", "clipforge.siglip": "open_clip.SigLipLoss"}


def _print_table(rows: list[dict]) -> None:
    """Time ratios use CPU time too: on a shared machine wall time mostly measures the neighbours."""
    print(f"{'loss':24s} {'batch':>7s} {'loss memory':>12s} {'wall (s)':>9s} {'cpu (s)':>8s} "
          f"{'memory vs open_clip':>20s} {'wall / open_clip':>17s} {'cpu / open_clip':>16s}")
    ref = {(r["loss"], r["batch"]): r for r in rows}
    for r in rows:
        if "error" in r or "skipped" in r:
            print(f"{r['loss']:24s} {r['batch']:7d} {r.get('skipped') or r.get('error')}")
            continue
        anchor = ref.get((ANCHOR.get(r["loss"]), r["batch"]))
        mem_ratio = wall_ratio = cpu_ratio = ""
        if anchor and "seconds" in anchor:
            mem_ratio = f"{anchor['loss_bytes'] / max(r['loss_bytes'], 1):.1f}x less"
            wall_ratio = f"{r['seconds'] / anchor['seconds']:.2f}x"
            cpu_ratio = f"{r['cpu_seconds'] / anchor['cpu_seconds']:.2f}x"
        print(f"{r['loss']:24s} {r['batch']:7d} {r['loss_bytes'] / 2**20:8.0f} MiB {r['seconds']:9.2f} "
              f"{r['cpu_seconds']:8.2f} {mem_ratio:>20s} {wall_ratio:>17s} {cpu_ratio:>16s}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (memory is then the allocator's peak)")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--budget-gib", type=float, default=16.0)
    parser.add_argument("--dense-limit-gib", type=float, default=8.0,
                        help="skip open_clip where its predicted loss memory exceeds this")
    parser.add_argument("--child", nargs=2, metavar=("LOSS", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.dim, args.tile_size, args.device)))
        return
    rows = []
    for batch in args.sizes:
        for name in args.losses:
            predicted = DENSE_MATRICES.get(name, 0) * batch * batch * 4
            if predicted > args.dense_limit_gib * 2**30:
                rows.append({"loss": name, "batch": batch, "skipped": f"skipped: needs ~{predicted / 2**30:.0f} GiB"})
                continue
            rows.append(_run_child(name, batch, args.dim, args.tile_size, args.device))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    _print_table(rows)
    budget = args.budget_gib * 2**30
    print(f"\nlargest batch whose loss fits {args.budget_gib:g} GiB (extrapolated from the largest measured sizes):")
    for name in args.losses:
        fits = _max_batch(name, [r for r in rows if r["loss"] == name], budget)
        print(f"  {name:24s} {fits if fits is not None else 'n/a':>12}")


if __name__ == "__main__":
    main()
