"""LiT (locked-image tuning): the pretrained image tower is frozen, the text tower learns to match it. Cheap (no
image gradients) and keeps the image features intact; ``unlocked=N`` leaves the image tower's last N groups free.

Run:        clipforge train --config configs/finetune_lit.py:data=DIR,pretrained=openai,model=ViT-B-32
Smoke test: clipforge train --config configs/finetune_lit.py:tiny
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finetune_base, parse_arg, shrink  # noqa: E402


def get_config(arg=None):
    args = parse_arg(arg)
    cfg = finetune_base({"lr": "1e-4", **args}, "runs/finetune_lit")
    model = dataclasses.replace(cfg.model, lock_image=True, lock_image_unlocked_groups=int(args.get("unlocked", 0)))
    cfg = dataclasses.replace(cfg, model=model)
    return shrink(cfg) if "tiny" in args else cfg
