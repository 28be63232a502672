"""SigLIP ViT-B/16 (sigmoid loss, learned temperature and bias) on WebDataset shards.

Launch: torchrun --nproc-per-node 8 -m clipforge.train --config configs/siglip_vit_b16.py --set data.train=...
Smoke test (CPU): clipforge train --config configs/siglip_vit_b16.py:tiny
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import parse_arg, shrink  # noqa: E402

from clipforge.losses.config import LossConfig  # noqa: E402
from clipforge.training.config import (CheckpointConfig, ModelSection, OptimConfig, ScheduleConfig,  # noqa: E402
                                       TrainConfig)
from clipforge.training.data import DataConfig  # noqa: E402


def get_config(arg=None):
    args = parse_arg(arg)
    cfg = TrainConfig(
        workdir="runs/siglip_vit_b16",
        model=ModelSection(name="ViT-B-16-SigLIP", grad_checkpointing=True),
        data=DataConfig(kind="webdataset", train="", batch_size=256, workers=8, shuffle_buffer=5000),
        loss=LossConfig(kind="siglip"),
        optim=OptimConfig(lr=1e-3, weight_decay=1e-4, beta2=0.95, precision="amp_bf16"),
        schedule=ScheduleConfig(kind="cosine", steps=100_000, warmup_steps=5_000),
        checkpoint=CheckpointConfig(every_steps=2_000, keep_last=3),
    )
    if "tiny" not in args:
        return cfg
    tiny = shrink(cfg, model="tiny-siglip")
    # SigLIP's own tokenizer comes from the hub; the offline smoke test uses the CLIP tokenizer instead
    offline_text = {"tokenizer": "clip", "tokenizer_clean": None, "text.vocab_size": 49408}
    return dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, overrides=offline_text))
