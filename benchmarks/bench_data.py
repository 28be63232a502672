"""WebDataset training pipeline throughput: clipforge against open_clip_train, same shards, same run.

Each side runs its own pipeline end to end: decode, augment (224 px RandomResizedCrop, the default training
transform; clipforge's equals open_clip's on decoded images), tokenize (each its own CLIP tokenizer) and collate.
Two kinds of shards are written: "large", photo-like JPEGs of 512-1024 px per side (random sizes and aspect
ratios, smooth gradients, shapes and sensor-like noise, quality 90), the sizes web datasets hold; and "small",
the quickstart's 256 px shapes JPEGs. On large sources clipforge draws the crop from the JPEG header and decodes
at 1/2, 1/4 or 1/8 scale when the crop is at least twice the target (``augment.reduced_decode``).

open_clip_train 3.3.0 targets webdataset 0.2.x. Two shims make its own ``get_wds_dataset`` run here, both
printed with the results: a stand-in for ``pandas`` (imported by data.py for CSV only, not installed), and
dropping the end-of-shard marker ``{}`` that webdataset 1.x's ``tar_file_expander`` yields and open_clip's
``group_by_keys_nothrow`` cannot handle (it raises ``KeyError: 'fname'`` without the shim).

Run: python benchmarks/bench_data.py [--sources large|small|both] [--samples 512] [--batch-size 64] [--uint8]

``--uint8`` adds clipforge with ``data.uint8_images=true``: uint8 batches, normalised in the loop's process
(inside the timing), as the training loop does on the device.
"""
from __future__ import annotations

import argparse
import gc
import importlib.machinery
import os
import resource
import sys
import tempfile
import time
import types


def _import_open_clip_train():
    import open_clip  # noqa: F401  (imported first so torch's module scan never sees the stand-in)

    if "pandas" not in sys.modules:
        try:
            import pandas  # noqa: F401
        except ImportError:
            stub = types.ModuleType("pandas")
            stub.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
            sys.modules["pandas"] = stub
    import open_clip_train.data as oc_data

    original = oc_data.tar_file_expander

    def without_eof_markers(*args, **kwargs):
        return (sample for sample in original(*args, **kwargs) if sample)

    oc_data.tar_file_expander = without_eof_markers
    return oc_data


def _cpu_seconds() -> float:
    self_usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_usage.ru_utime + self_usage.ru_stime + children.ru_utime + children.ru_stime


def _time_epoch(make_loader, finish=None) -> tuple[int, float, float, float]:
    """(samples, wall s, CPU s of this process and its finished workers, wall s to the first batch).
    ``finish(images)`` runs on each batch inside the timing (the uint8 side's normalisation)."""
    cpu0, start = _cpu_seconds(), time.perf_counter()
    loader = make_loader()
    first, count = None, 0
    for images, tokens in loader:
        if finish is not None:
            images = finish(images)
        count += images.shape[0]
        if first is None:
            first = time.perf_counter() - start
    wall = time.perf_counter() - start
    del loader
    gc.collect()  # joins persistent workers so their CPU time is counted
    return count, wall, _cpu_seconds() - cpu0, first


def _open_clip_loader(oc_data, spec, samples, batch_size, workers, transform, tokenizer):
    args = argparse.Namespace(train_data=spec, val_data=None, dataset_resampled=False, train_num_samples=samples,
                              train_data_upsampling_factors=None, seed=0, batch_size=batch_size, workers=workers,
                              world_size=1)
    return oc_data.get_wds_dataset(args, transform, is_train=True, epoch=0, tokenizer=tokenizer).dataloader


def _clipforge_loader(spec, samples, batch_size, workers, transform, tokenizer, start_batch=0):
    from clipforge.training.data import DataConfig, create_train_loader

    cfg = DataConfig(kind="webdataset", train=spec, batch_size=batch_size, workers=workers, shuffle_buffer=1000,
                     num_samples=samples)
    return create_train_loader(cfg, image_transform=transform, tokenize=tokenizer, start_batch=start_batch)


def write_photo_shards(folder: str, samples: int, shards: int = 8, seed: int = 0) -> str:
    """Photo-like JPEGs of 512-1024 px per side with captions, as WebDataset shards; returns the brace spec."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    per_shard = -(-samples // shards)
    for shard in range(shards):
        with tarfile.open(os.path.join(folder, f"photos-{shard:04d}.tar"), "w") as tar:
            for i in range(shard * per_shard, min(samples, (shard + 1) * per_shard)):
                width, height = (int(v) for v in rng.integers(512, 1025, size=2))
                x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
                y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
                phase = rng.random((1, 1, 3)).astype(np.float32) * 6
                pixels = 128 + 70 * np.sin(4 * x + phase) * np.cos(3 * y + phase)
                pixels = pixels + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
                img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                draw = ImageDraw.Draw(img)
                for _ in range(3):
                    x0, y0 = int(rng.integers(0, width - 64)), int(rng.integers(0, height - 64))
                    x1, y1 = x0 + int(rng.integers(32, width // 2)), y0 + int(rng.integers(32, height // 2))
                    draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
                buffer = io.BytesIO()
                img.save(buffer, "JPEG", quality=90)
                caption = f"a photo of {int(rng.integers(1, 9))} colourful shapes on a smooth background".encode()
                for suffix, payload in ((".jpg", buffer.getvalue()), (".txt", caption)):
                    member = tarfile.TarInfo(f"{i:08d}{suffix}")
                    member.size = len(payload)
                    tar.addfile(member, io.BytesIO(payload))
    return os.path.join(folder, f"photos-{{0000..{shards - 1:04d}}}.tar")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", choices=["large", "small", "both"], default="both")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--uint8", action="store_true",
                        help="also time data.uint8_images=true: uint8 batches, normalised in this process (counted)")
    opts = parser.parse_args(argv)

    import open_clip
    import torch

    from clipforge.cpu import cpu_model
    from clipforge.models.factory import get_tokenizer
    from clipforge.training.shapes import generate_shapes_dataset
    from clipforge.transforms import PreprocessConfig, create_train_transform

    torch.set_num_threads(1)
    oc_data = _import_open_clip_train()
    sides = {"open_clip_train": (open_clip.image_transform(224, is_train=True), open_clip.get_tokenizer("ViT-B-32")),
             "clipforge": (create_train_transform(PreprocessConfig(image_size=224)), get_tokenizer("ViT-B-32"))}
    if opts.uint8:
        sides["clipforge uint8"] = (create_train_transform(PreprocessConfig(image_size=224), uint8=True),
                                    get_tokenizer("ViT-B-32"))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as folder:
        kinds = ["large", "small"] if opts.sources == "both" else [opts.sources]
        for kind in kinds:
            start = time.perf_counter()
            if kind == "large":
                spec = write_photo_shards(os.path.join(folder, _mkdir(folder, kind)), opts.samples)
                what = "photo-like JPEGs of 512-1024 px"
            else:
                spec = generate_shapes_dataset(os.path.join(folder, _mkdir(folder, kind)), opts.samples, 0,
                                               image_size=256, shard_size=max(1, opts.samples // 8))["train"]
                what = "shapes JPEGs of 256 px"
            print(f"\n{kind}: {opts.samples} {what} in 8 shards (written in {time.perf_counter() - start:.1f}s)")
            rows = _measure(oc_data, spec, opts, sides)
            _print_table(rows)
        _report_resume(spec, opts, *sides["clipforge"])
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _mkdir(folder: str, name: str) -> str:
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    return name


def _measure(oc_data, spec, opts, sides) -> dict:
    rows = {}
    for _ in range(opts.repeats):  # alternate the two sides so background load hits both alike
        for workers in (0, 2):
            makers = {
                "open_clip_train": lambda: _open_clip_loader(oc_data, spec, opts.samples, opts.batch_size, workers,
                                                             *sides["open_clip_train"]),
                **{name: (lambda side=side: _clipforge_loader(spec, opts.samples, opts.batch_size, workers, *side))
                   for name, side in sides.items() if name.startswith("clipforge")},
            }
            for name, make in makers.items():
                result = _time_epoch(make, finish=sides[name][0].batch_normalizer if name.endswith("uint8") else None)
                best = rows.get((name, workers))
                rows[(name, workers)] = result if best is None or result[1] < best[1] else best
    return rows


def _print_table(rows: dict) -> None:
    print(f"\n{'pipeline':<16} {'workers':>7} {'samples':>8} {'wall s':>7} {'samples/s':>10} {'CPU s':>6} "
          f"{'CPU ms/sample':>14} {'first batch s':>14}  ratio (wall, CPU) vs open_clip")
    order = sorted(rows, key=lambda key: (key[1], key[0] != "open_clip_train", key[0]))  # reference first
    for name, workers in order:
        count, wall, cpu, first = rows[(name, workers)]
        ref = rows[("open_clip_train", workers)]
        ratio = f"  x{(count / wall) / (ref[0] / ref[1]):.2f}, x{(ref[2] / ref[0]) / (cpu / count):.2f}" \
            if name.startswith("clipforge") else ""
        print(f"{name:<16} {workers:>7} {count:>8} {wall:>7.2f} {count / wall:>10.1f} {cpu:>6.2f} "
              f"{1000 * cpu / count:>14.2f} {first:>14.2f}{ratio}")
    print("ratios > 1 mean clipforge is faster (throughput) / cheaper (CPU per sample); best wall time of the repeats")


def _report_resume(spec, opts, transform, tokenizer) -> None:
    """How long a resumed loader takes to deliver its first batch (skipping replays raw bytes only)."""
    num_batches = _clipforge_loader(spec, opts.samples, opts.batch_size, 0, transform, tokenizer).num_batches
    start_batch = num_batches - 2
    count, wall, cpu, first = _time_epoch(
        lambda: _clipforge_loader(spec, opts.samples, opts.batch_size, 0, transform, tokenizer,
                                  start_batch=start_batch))
    print(f"\nclipforge resume at batch {start_batch}/{num_batches} (workers=0): first batch after {first:.2f}s, "
          f"{count} samples in {wall:.2f}s ({cpu:.2f} CPU s)")


if __name__ == "__main__":
    main()
