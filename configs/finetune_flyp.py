"""FLYP ("finetune like you pretrain", Goyal et al. 2023): fine-tune a classifier's data with the contrastive loss
itself, the captions made from class names ("a photo of a {class}."), so the fine-tuned model stays a CLIP model
and zero-shot classification is its classifier.

The shards hold a class index per sample (``.cls``; ``data.wds_caption_key=cls``), the class names one per line
(``classnames.txt``) and optional templates with ``{}`` (``templates.txt``), as the shapes data and clip_benchmark's
WebDataset sets have them.

Run:        clipforge train --config configs/finetune_flyp.py:data=DIR,pretrained=openai,model=ViT-B-32
Smoke test: clipforge train --config configs/finetune_flyp.py:data=DIR,tiny
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finetune_base, parse_arg, shrink  # noqa: E402


def get_config(arg=None):
    args = parse_arg(arg)
    cfg = finetune_base(args, "runs/finetune_flyp")
    folder = Path(args.get("data", "."))
    templates = folder / "templates.txt"
    data = dataclasses.replace(cfg.data, wds_caption_key="cls", class_captions=str(folder / "classnames.txt"),
                               class_templates=str(templates) if templates.is_file() else None)
    cfg = dataclasses.replace(cfg, data=data)
    if "tiny" in args:  # the smoke test keeps the class-caption data (synthetic data has no classes)
        small = shrink(cfg)
        return dataclasses.replace(small, data=dataclasses.replace(data, batch_size=8, num_samples=64))
    return cfg
