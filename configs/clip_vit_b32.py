"""CLIP ViT-B/32 from scratch on WebDataset shards (the LAION-style recipe).

Launch (8 GPUs):  torchrun --nproc-per-node 8 -m clipforge.train --config configs/clip_vit_b32.py \
                      --set data.train='/data/laion/{00000..41407}.tar' data.num_samples=400000000
Smoke test (CPU): clipforge train --config configs/clip_vit_b32.py:tiny
"""
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
        workdir="runs/clip_vit_b32",
        model=ModelSection(name="ViT-B-32", grad_checkpointing=True),
        data=DataConfig(kind="webdataset", train="", batch_size=256, workers=8, shuffle_buffer=5000),
        loss=LossConfig(kind="clip"),
        optim=OptimConfig(lr=5e-4, weight_decay=0.2, beta2=0.98, eps=1e-6, precision="amp_bf16", grad_clip=None),
        schedule=ScheduleConfig(kind="cosine", steps=100_000, warmup_steps=2_000),
        checkpoint=CheckpointConfig(every_steps=2_000, keep_last=3),
    )
    return shrink(cfg) if "tiny" in args else cfg
