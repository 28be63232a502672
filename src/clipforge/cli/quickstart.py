"""``clipforge quickstart``: the whole life of a CLIP model in a few CPU minutes, offline.

1. generate an image-caption dataset of coloured shapes (WebDataset shards, train + held-out val split);
2. train a tiny CLIP on it from scratch;
3. evaluate on the held-out split: zero-shot classification and image-text retrieval, printed as a table.
"""
from __future__ import annotations

import time
from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--workdir", default="runs/quickstart", help="where the data, checkpoints and metrics go")
    parser.add_argument("--steps", type=int, default=600,
                        help="optimizer steps (default 600: under a minute on an idle 2-core CPU)")
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--val-size", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="tiny-vit", help="architecture (a tiny preset by default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: automatic, 1 when the CPUs are already busy)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra training config overrides")


def quickstart_config(args, info: dict):
    from clipforge.config import apply_overrides
    from clipforge.training.config import (CheckpointConfig, EvalConfig, LogConfig, ModelSection, OptimConfig,
                                           ScheduleConfig, TrainConfig)
    from clipforge.training.data import DataConfig
    from clipforge.transforms import AugmentConfig

    cfg = TrainConfig(
        workdir=str(Path(args.workdir) / "run"),
        seed=args.seed,
        threads=args.threads,
        model=ModelSection(name=args.model, image_size=info["image_size"]),
        data=DataConfig(kind="webdataset", train=info["train"], batch_size=args.batch_size,
                        num_samples=info["num_train"], workers=0, seed=args.seed, shuffle_buffer=1000),
        augment=AugmentConfig(scale=(0.9, 1.0)),
        optim=OptimConfig(lr=2e-3, weight_decay=0.1, beta2=0.98),
        schedule=ScheduleConfig(kind="cosine", steps=args.steps, warmup_steps=max(1, args.steps // 20)),
        checkpoint=CheckpointConfig(every_steps=max(1, args.steps // 3), keep_last=1, resume="auto"),
        eval=EvalConfig(every_steps=0, datasets=(f"{VAL}=wds:{info['val']}",)),
        log=LogConfig(every_steps=max(1, args.steps // 10)),
    )
    return apply_overrides(cfg, args.set)


def run(args) -> int:
    from clipforge.training.loop import train
    from clipforge.training.shapes import generate_shapes_dataset

    for name in ("steps", "train_size", "val_size", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size > args.train_size:
        raise ValueError(f"--batch-size {args.batch_size} is larger than --train-size {args.train_size}")
    start = time.perf_counter()
    data_dir = Path(args.workdir) / "data"
    info = generate_shapes_dataset(str(data_dir), n_train=args.train_size, n_val=args.val_size, image_size=64,
                                   seed=args.seed, show_progress=True)
    print(f"[1/3] dataset: {info['num_train']} train / {info['num_val']} val images of "
          f"{len(info['classnames'])} classes in {data_dir} ({time.perf_counter() - start:.1f}s)", flush=True)
    cfg = quickstart_config(args, info)
    print(f"[2/3] training {cfg.model.name} for {cfg.schedule.steps} steps (batch {cfg.data.batch_size}) on CPU",
          flush=True)
    result = train(cfg)
    print(f"[3/3] held-out evaluation ({time.perf_counter() - start:.0f}s in total)\n")
    print(format_results(result.metrics, len(info["classnames"]), info["num_val"]))
    print(f"\ncheckpoint: {result.checkpoint}\nmodel folder: {result.model_dir}\n"
          f"metrics log: {Path(cfg.workdir) / 'metrics.jsonl'}\n"
          f"benchmark it: clipforge benchmark --model local-dir:{result.model_dir} --datasets "
          f"'{VAL}=wds:{info['val']}'")
    return 0


VAL = "val"  # the held-out split's name in the metrics


def format_results(metrics: dict[str, float], num_classes: int, num_val: int) -> str:
    def get(name):
        return metrics.get(f"{VAL}/{name}")

    chance1, chance5 = 1 / max(1, num_val), min(1.0, 5 / max(1, num_val))
    rows = [("zero-shot top-1 accuracy", get("acc1"), 1 / num_classes),
            ("zero-shot top-5 accuracy", get("acc5"), min(1.0, 5 / num_classes)),
            ("zero-shot mean per-class recall", get("mean_per_class_recall"), 1 / num_classes),
            ("image->text recall@1", get("text_retrieval_recall@1"), chance1),
            ("text->image recall@1", get("image_retrieval_recall@1"), chance1),
            ("image->text recall@5", get("text_retrieval_recall@5"), chance5),
            ("text->image recall@5", get("image_retrieval_recall@5"), chance5)]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'metric':<{width}} | model  | chance |", f"|{'-' * (width + 2)}|--------|--------|"]
    for name, value, chance in rows:
        shown = "  n/a " if value is None else f"{value:6.3f}"
        lines.append(f"| {name:<{width}} | {shown} | {chance if chance is not None else float('nan'):6.3f} |")
    return "\n".join(lines)

