"""Fine-tuning without forgetting, end to end on generated data (CPU, a few minutes):

1. ``clipforge quickstart``: a tiny CLIP trained on the plain shapes data (the "zero-shot" model);
2. a shifted variant of the data (same classes: outlined shapes on dark backgrounds);
3. a fine-tuning recipe (``--recipe full|lit|flyp|lora``, configs/finetune_*.py) on the shifted data;
4. ``clipforge wise-ft``: interpolations between the two, evaluated on the shifted held-out set (target) and on
   the plain one (control), as a table and a plot.

    python examples/finetune/finetune_shapes.py --workdir runs/finetune-demo --recipe full
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clipforge(*args: str) -> None:
    print("$ clipforge " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "clipforge", *args], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/finetune-demo")
    parser.add_argument("--recipe", choices=["full", "lit", "flyp", "lora"], default="full")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=300)
    args = parser.parse_args()
    work = (ROOT / args.workdir).resolve()

    clipforge("quickstart", "--workdir", str(work / "zeroshot"), "--steps", str(args.pretrain_steps))
    sys.path.insert(0, str(ROOT / "src"))
    from clipforge.training.shapes import generate_shapes_dataset

    shifted = work / "shifted"
    generate_shapes_dataset(str(shifted), n_train=4000, n_val=500, image_size=64, seed=1, variant="shifted")
    run = work / f"finetuned-{args.recipe}"
    lr = {"full": "1e-3", "lit": "2e-3", "flyp": "1e-3", "lora": "3e-3"}[args.recipe]
    clipforge("train", "--config", f"configs/finetune_{args.recipe}.py:data={shifted},model=tiny-vit,"
              f"pretrained={work / 'zeroshot' / 'run' / 'model'},steps={args.finetune_steps},batch=64,lr={lr},"
              "image_size=64", "--workdir", str(run))
    clipforge("wise-ft", "--zeroshot", str(work / "zeroshot" / "run"), "--finetuned", str(run),
              "--alpha", "0,0.25,0.5,0.75,1", "--eval", f"shifted=wds:{shifted}/val-000000.tar",
              "--control", f"plain=wds:{work / 'zeroshot' / 'data'}/val-000000.tar",
              "--out", str(work / f"wise_ft-{args.recipe}"),
              "--save", "0.5")


if __name__ == "__main__":
    main()
