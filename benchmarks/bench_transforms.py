"""Eval-preprocessing throughput, clipforge vs open_clip, on the same 256 JPEG images of varied sizes.

Run: ``PYTHONPATH=src python benchmarks/bench_transforms.py [--images 256] [--repeats 3]``.
Prints images/s for decode+preprocess and for preprocess alone (images already decoded), and checks
that both libraries produce identical tensors on every image.
"""
import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from clipforge.transforms import PreprocessConfig, create_eval_transform


def _jpeg_images(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        width, height = int(rng.integers(160, 800)), int(rng.integers(160, 800))
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        # smooth blocks plus noise compress like photos, unlike pure noise
        img = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 12, (height, width, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    return blobs


def _seconds(transform, items, decode: bool) -> float:
    start = time.perf_counter()
    for item in items:
        transform(Image.open(io.BytesIO(item)) if decode else item)
    return time.perf_counter() - start


def _throughputs(transforms, items, decode: bool, repeats: int) -> list[float]:
    """Images/s of each transform, best of ``repeats``; runs alternate so machine noise hits all alike."""
    best = [float("inf")] * len(transforms)
    for _ in range(repeats):
        for i, transform in enumerate(transforms):
            best[i] = min(best[i], _seconds(transform, items, decode))
    return [len(items) / b for b in best]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from open_clip.transform import image_transform  # the reference, only for comparison

    blobs = _jpeg_images(args.images)
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    print(f"{args.images} JPEG images, sizes 160..800 px, 1 thread, best of {args.repeats}")
    print(f"{'setting':<34}{'open_clip img/s':>17}{'clipforge img/s':>17}{'ratio':>8}{'max|diff|':>11}")
    for resize_mode in ("shortest", "longest", "squash"):
        cfg = PreprocessConfig(image_size=224, resize_mode=resize_mode)
        ours, ref = create_eval_transform(cfg), image_transform(224, False, resize_mode=resize_mode)
        diff = max((ours(img) - ref(img)).abs().max().item() for img in decoded)
        for decode in (True, False):
            ref_rate, our_rate = _throughputs([ref, ours], blobs if decode else decoded, decode, args.repeats)
            name = f"{resize_mode} 224, {'decode+preprocess' if decode else 'preprocess only'}"
            print(f"{name:<34}{ref_rate:>17.1f}{our_rate:>17.1f}{our_rate / ref_rate:>8.2f}{diff:>11.1e}")


if __name__ == "__main__":
    main()
