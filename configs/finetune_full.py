"""Full fine-tuning of a pretrained CLIP with layer-wise learning-rate decay (each block closer to the input trains
at 0.75x the rate of the one after it; the heads at the full rate), a small learning rate and a short warmup.

Run:        clipforge train --config configs/finetune_full.py:data=DIR,pretrained=openai,model=ViT-B-32
Example:    python examples/finetune/finetune_shapes.py (generated data, a quickstart model)
Smoke test: clipforge train --config configs/finetune_full.py:tiny
Afterwards, WiSE-FT recovers zero-shot robustness: clipforge wise-ft --zeroshot ViT-B-32::openai --finetuned RUN ...
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finetune_base, parse_arg, shrink  # noqa: E402


def get_config(arg=None):
    args = parse_arg(arg)
    cfg = finetune_base(args, "runs/finetune_full")
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, layer_decay=float(args.get("decay", 0.75))))
    return shrink(cfg) if "tiny" in args else cfg
