"""LoRA fine-tuning (peft: pip install 'clipforge[lora]'): rank-r updates on the attention projections of both
towers; the base weights stay frozen (under 1% of ViT-B-32's parameters train). The run writes the merged model
(WORKDIR/model, a plain checkpoint) and the adapters alone (WORKDIR/adapters, for clipforge.models.adapters.
load_adapters).

Run:        clipforge train --config configs/finetune_lora.py:data=DIR,pretrained=openai,model=ViT-B-32,rank=16
Smoke test: clipforge train --config configs/finetune_lora.py:tiny
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finetune_base, parse_arg, shrink  # noqa: E402

from clipforge.models.adapters import LoraConfig, LoraTowerConfig  # noqa: E402


def get_config(arg=None):
    args = parse_arg(arg)
    cfg = finetune_base({"lr": "5e-4", **args}, "runs/finetune_lora")
    rank = int(args.get("rank", 16))
    tower = LoraTowerConfig(rank=rank, alpha=2.0 * rank, targets=(r"attn\.qkv", r"attn\.proj"))
    cfg = dataclasses.replace(cfg, lora=LoraConfig(image=tower, text=tower))
    return shrink(cfg) if "tiny" in args else cfg
