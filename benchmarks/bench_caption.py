"""Captioning quality of a tiny CoCa trained on CPU: the shapes data (coloured shapes with captions that name the
shape, colour, position and size), a few hundred steps, then captions for held-out images.

    python benchmarks/bench_caption.py                  # 450 steps at batch 32 (about 4 min), 200 held-out images
    python benchmarks/bench_caption.py --steps 100 --eval-images 50

Prints, for greedy decoding and beam search: how often the caption names the image's shape and its colour (against
chance: 1/4 and 1/6 for a caption that always names one), how often it names both, how often each shape is named,
and CIDEr / BLEU-4 against the seven template captions of each image (``clipforge.captioning.metrics``; needs the
``caption`` extra). The model is
``tiny-coca`` (2+2+2 layers, width 32-64) at 64 px; training goes through ``clipforge.training.step.train_step``
with ``loss.kind=coca``, the step ``clipforge train`` runs.
"""
from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402


def make_split(count: int, image_size: int, seed: int):
    """``count`` shapes samples drawn in memory (the generator ``clipforge quickstart`` writes shards with)."""
    from clipforge.training.shapes import draw_sample, sample_attributes

    rng = random.Random(seed)
    samples = [sample_attributes(rng) for _ in range(count)]
    return samples, [draw_sample(s, image_size, rng) for s in samples]


def references(sample) -> list[str]:
    from clipforge.training.shapes import TEMPLATES

    fields = dict(shape=sample.shape, color=sample.color, position=sample.position, size=sample.size)
    return [template.format(**fields) for template in TEMPLATES]


def train(model, samples, pixels, tokenizer, args) -> float:
    """``args.steps`` CoCa steps on random batches; returns the seconds spent."""
    from clipforge.losses import LossConfig, create_loss
    from clipforge.training.step import train_step

    tokens = tokenizer([s.caption for s in samples])
    loss_fn = create_loss(LossConfig(kind="coca", tiled=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps,
                                                   pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(len(samples), (args.batch_size,), generator=gen)
        out = train_step(model, pixels[index], tokens[index], loss_fn, optimizer, grad_clip=1.0)
        schedule.step()
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step:4d}  loss {out.loss:.3f}  (contrastive {out.parts['contrastive']:.3f}, caption "
                  f"{out.parts['caption']:.3f})  {time.perf_counter() - start:.0f}s", flush=True)
    return time.perf_counter() - start


def judge(samples, captions) -> dict[str, float]:
    from clipforge.captioning.metrics import caption_scores
    from clipforge.training.shapes import COLORS, SHAPES

    def names(caption, word, vocabulary):  # the caption names this word and no other of its kind
        words = set(caption.lower().split())
        return word in words and not (words & (set(vocabulary) - {word}))

    shape = [names(c, s.shape, SHAPES) for s, c in zip(samples, captions)]
    color = [names(c, s.color, COLORS) for s, c in zip(samples, captions)]
    named = {word: sum(word in c.lower().split() for c in captions) / len(captions) for word in SHAPES}
    figures = {"shape": sum(shape) / len(shape), "colour": sum(color) / len(color),
               "both": sum(a and b for a, b in zip(shape, color)) / len(shape), "named": named}
    scores = caption_scores([references(s) for s in samples], captions)
    return {**figures, "cider": scores["cider"], "bleu4": scores["bleu4"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=150)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from clipforge.captioning import generate
    from clipforge.models.factory import create_model, tokenizer_for_config
    from clipforge.training.shapes import COLORS, SHAPES
    from clipforge.transforms import create_eval_transform

    model = create_model("tiny-coca", image_size=args.image_size)
    tokenizer = tokenizer_for_config(model.config)
    transform = create_eval_transform(model.preprocess_config)
    samples, images = make_split(args.train_images, args.image_size, args.seed)
    pixels = torch.stack([transform(image) for image in images])
    seconds = train(model, samples, pixels, tokenizer, args)
    print(f"trained {args.steps} steps at batch {args.batch_size} in {seconds:.0f}s "
          f"({seconds / args.steps:.2f} s/step, {args.threads} threads)")

    held_out, held_images = make_split(args.eval_images, args.image_size, args.seed + 1)
    held_pixels = torch.stack([transform(image) for image in held_images])
    print(f"\nheld-out images: {len(held_out)}; chance: shape {1 / len(SHAPES):.3f}, colour {1 / len(COLORS):.3f}, "
          f"both {1 / (len(SHAPES) * len(COLORS)):.3f}")
    print(f"{'decoding':<10} {'shape':>6} {'colour':>7} {'both':>6} {'CIDEr':>6} {'BLEU-4':>7}  example")
    for method in ("greedy", "beam"):
        captions = generate(model, held_pixels, method=method, num_beams=4, max_length=16, min_length=3)
        f = judge(held_out, captions)
        print(f"{method:<10} {f['shape']:6.3f} {f['colour']:7.3f} {f['both']:6.3f} {f['cider']:6.3f} "
              f"{f['bleu4']:7.3f}  '{captions[0]}' (truth: '{held_out[0].color} {held_out[0].shape}')")
        print(f"{'':<10} shapes named: " + ", ".join(f"{w} {v:.2f}" for w, v in f["named"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
