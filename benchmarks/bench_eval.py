"""Throughput of a full zero-shot evaluation: clipforge against clip_benchmark, same model, data and run.

Both sides evaluate the same open_clip model (random init; pass --arch for a real architecture) on the same
ImageFolder of generated images, with the same templates, batch size and loader workers; the metrics must match.
Timed: building the classifier, reading and encoding every image, and the metrics (and, for retrieval, encoding
the captions). Prints a table of images/s and the ratio clipforge / clip_benchmark (target: >= 1).

    python benchmarks/bench_eval.py [--arch ViT-B-32] [--images 400] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from clipforge.evaluation import datasets as ds  # noqa: E402
from clipforge.evaluation import suites  # noqa: E402
from clipforge.evaluation.benchmark import BenchmarkConfig, evaluate, make_encoders  # noqa: E402


def _evaluate(model, tokenizer, loaded, transform, args) -> dict:
    """clipforge's metrics of one loaded dataset (encode once, every task it supports), prefix stripped."""
    encoders = make_encoders(model, tokenizer, transform, "bench")
    config = BenchmarkConfig(batch_size=args.batch_size, num_workers=args.workers)
    prefix = loaded.name + "/"
    return {k[len(prefix):]: v for k, v in evaluate(encoders, [loaded], config).items()}


def build_model(arch: str, image_size: int):
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    if arch == "small":
        model = CLIP(embed_dim=256, vision_cfg=CLIPVisionCfg(layers=4, width=256, head_width=64, patch_size=16,
                                                             image_size=image_size),
                     text_cfg=CLIPTextCfg(context_length=77, width=256, heads=4, layers=4))
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
    else:
        model = open_clip.create_model(arch, pretrained=None)
        tokenizer = open_clip.get_tokenizer(arch)
    return model.eval(), tokenizer


def preprocess(image_size: int):
    from torchvision import transforms as T
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])


def write_data(root: str, num_images: int, num_classes: int = 10, size: int = 256) -> None:
    rng = np.random.default_rng(0)
    lines = ["image,caption"]
    for i in range(num_images):
        label = i % num_classes
        folder = os.path.join(root, "classes", "test", f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)
        os.makedirs(os.path.join(root, "captions"), exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(root, "captions", f"{i}.jpg"), quality=90)
        lines += [f"{i}.jpg,picture {i} of class {label}, caption {c}" for c in range(5)]
    with open(os.path.join(root, "captions", "flickr8k_test_karpathy.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_classification(model, tokenizer, root, image_size, args):
    from clip_benchmark.metrics import zeroshot_classification as zc
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    _patch_clip_benchmark(zc)
    names = [f"class {i}" for i in range(10)]
    templates = suites.get_templates("imagenet1k")

    def reference():
        data = ImageFolder(os.path.join(root, "classes", "test"), transform=preprocess(image_size))
        data.classes = names
        loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
        return zc.evaluate(model, loader, tokenizer, names, templates, "cpu", amp=False)

    def ours():
        loaded = ds.load_dataset(f"folder:{os.path.join(root, 'classes')}", "", transform=preprocess(image_size))
        loaded.classnames, loaded.templates = names, templates
        return _evaluate(model, tokenizer, loaded, preprocess(image_size), args)

    return reference, ours, ("acc1", "acc5", "mean_per_class_recall")


def run_retrieval(model, tokenizer, root, image_size, args):
    from clip_benchmark.datasets.flickr import Flickr
    from clip_benchmark.metrics import zeroshot_retrieval as zr
    from torch.utils.data import DataLoader
    folder = os.path.join(root, "captions")

    def collate(batch):
        images, captions = zip(*batch)
        return torch.stack(images), captions

    def reference():
        data = Flickr(folder, os.path.join(folder, "flickr8k_test_karpathy.txt"), transform=preprocess(image_size))
        loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)
        return zr.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])

    def ours():
        loaded = ds.load_dataset("flickr8k", folder, transform=preprocess(image_size))
        return _evaluate(model, tokenizer, loaded, preprocess(image_size), args)

    return reference, ours, ("image_retrieval_recall@5", "text_retrieval_recall@5")


def _patch_clip_benchmark(zc) -> None:
    """clip_benchmark 1.6.2 calls float() on a 1-element array, which NumPy 2.x rejects; shadow float there."""
    import builtins

    def scalar(x=0.0):
        try:
            return builtins.float(x)
        except TypeError:
            return builtins.float(np.asarray(x).reshape(-1)[0])

    zc.float = scalar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small", help="'small' (4-layer ViT, 128px) or an open_clip name")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the best is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image_size = 128 if args.arch == "small" else 224
    model, tokenizer = build_model(args.arch, image_size)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_data(root, args.images)
        for task, setup in (("zero-shot classification", run_classification), ("retrieval", run_retrieval)):
            reference, ours, keys = setup(model, tokenizer, root, image_size, args)
            times = {"clip_benchmark": [], "clipforge": []}
            for _ in range(args.repeats):  # alternate so that load changes on shared cores hit both sides
                ref_metrics, t = _timed(reference)
                times["clip_benchmark"].append(t)
                our_metrics, t = _timed(ours)
                times["clipforge"].append(t)
            diff = max(abs(ref_metrics[k] - our_metrics[k]) for k in keys)
            ref_rate, our_rate = args.images / min(times["clip_benchmark"]), args.images / min(times["clipforge"])
            rows.append((task, ref_rate, our_rate, our_rate / ref_rate, diff))
    print(f"\nmodel={args.arch} images={args.images} batch={args.batch_size} workers={args.workers} "
          f"threads={args.threads}\n")
    print("| task | clip_benchmark img/s | clipforge img/s | ratio | max metric diff |")
    print("|---|---|---|---|---|")
    for task, ref_rate, our_rate, ratio, diff in rows:
        print(f"| {task} | {ref_rate:.1f} | {our_rate:.1f} | {ratio:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
