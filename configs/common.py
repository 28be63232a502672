"""Pieces shared by the run configs. Each config's ``get_config(arg)`` accepts ``"tiny"``: a CPU-sized run of the
same recipe (synthetic data, a tiny model, a few steps) that doubles as a smoke test."""
from __future__ import annotations

import dataclasses

from clipforge.training.config import TrainConfig


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"tiny,res=336"`` -> ``{"tiny": "", "res": "336"}``."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    return out


def shrink(cfg: TrainConfig, model: str = "tiny-vit") -> TrainConfig:
    """The CPU smoke-test version of a recipe: same sections, tiny sizes."""
    return dataclasses.replace(
        cfg,
        workdir=cfg.workdir + "-tiny",
        model=dataclasses.replace(cfg.model, name=model, pretrained=None, image_size=None),
        data=dataclasses.replace(cfg.data, kind="synthetic", train="", batch_size=8, num_samples=64, workers=0),
        schedule=dataclasses.replace(cfg.schedule, steps=6, warmup_steps=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=3),
        optim=dataclasses.replace(cfg.optim, precision="fp32"),
        log=dataclasses.replace(cfg.log, every_steps=1),
    )


def finetune_base(args: dict[str, str], workdir: str) -> TrainConfig:
    """What the fine-tuning recipes share. ``args``: ``model=ARCH`` (default ViT-B-32), ``pretrained=TAG|DIR``
    (default openai), ``data=DIR`` (a shapes-style folder: WebDataset shards + dataset.json, as written by
    ``clipforge.training.shapes.generate_shapes_dataset``) or ``train=SPEC`` + ``samples=N`` for your own shards,
    ``steps=N``. The held-out split of DIR is evaluated at the end."""
    from clipforge.training.config import CheckpointConfig, EvalConfig, ModelSection, OptimConfig, ScheduleConfig
    from clipforge.training.data import DataConfig
    from clipforge.transforms import AugmentConfig

    steps = int(args.get("steps", 1000))
    data, evals = DataConfig(kind="webdataset", train=args.get("train", ""), batch_size=int(args.get("batch", 128)),
                             num_samples=int(args["samples"]) if "samples" in args else None), ()
    if "data" in args:
        from clipforge.training.shapes import load_shapes_info

        info = load_shapes_info(args["data"])
        data = dataclasses.replace(data, train=info["train"], num_samples=info["num_train"])
        evals = (f"target=wds:{info['val']}",) if info.get("val") else ()
    return TrainConfig(
        workdir=workdir,
        model=ModelSection(name=args.get("model", "ViT-B-32"), pretrained=args.get("pretrained", "openai"),
                           image_size=int(args["image_size"]) if "image_size" in args else None),
        data=data,
        augment=AugmentConfig(scale=(0.9, 1.0)),
        optim=OptimConfig(lr=float(args.get("lr", 1e-5)), weight_decay=0.1, beta2=0.98),
        schedule=ScheduleConfig(kind="cosine", steps=steps, warmup_steps=max(1, steps // 20)),
        checkpoint=CheckpointConfig(every_steps=max(1, steps // 4), keep_last=1),
        eval=EvalConfig(datasets=evals),
    )
