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
