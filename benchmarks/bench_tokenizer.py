"""Captions per second: clipforge's CLIP tokenizer against open_clip's, on the same captions in the same run.

    python benchmarks/bench_tokenizer.py [--captions 20000] [--repeats 5] [--harsh]

The captions imitate web alt-text. Words follow a Zipf law over ~30,000 words: the more frequent half are English
words from CLIP's vocabulary, and the rarer half are made-up words outside it (compounds, typos, product codes).
``--harsh`` mixes the made-up words in among the frequent ones too. Most captions are plain ASCII; about 10% have
accents, emoji or CJK/Arabic/Hindi text, and about 2% have HTML entities or mojibake (the captions ftfy repairs).
"cold" starts each tokenizer fresh: its caches hold only what is derived from the vocabulary (whole-word tokens).
"warm" runs the same captions again on the same instance, as happens when a zero-shot classifier or a training
epoch sees the same words again. Both tokenizers must give identical ids before any time is reported.
"""
from __future__ import annotations

import argparse
import gzip
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from clipforge.tokenizer import ClipTokenizer  # noqa: E402
from clipforge.tokenizer.bpe import default_vocab_path  # noqa: E402

UNICODE_BITS = ["café", "naïve", "Zürich", "São Paulo", "crème brûlée", "😀", "👍🏽", "❤️", "東京の夜景", "一只猫",
                "서울", "مرحبا", "नमस्ते", "Привет", "jalapeño", "façade", "🇫🇷", "©", "°C", "½"]
REPAIR_BITS = ["&amp;", "&quot;hi&quot;", "cafÃ©", "itâ€™s", "\u201cquoted\u201d", "&#39;s", "ＦＵＬＬ"]
PUNCT = [",", ".", "!", "-", ":", "(2019)", "#", "|", "'s", "..."]


def _english_words() -> list[str]:
    with gzip.open(default_vocab_path(), "rt", encoding="utf-8") as f:
        pairs = f.read().split("\n")[1:48895]
    words = ["".join(p.split()) for p in pairs]
    return [w[:-4] for w in words if w.endswith("</w>") and w[:-4].isalpha() and w[:-4].isascii() and len(w) > 6]


def _rare_words(rng: random.Random, words: list[str], n: int) -> list[str]:
    """Words outside the vocabulary, as web captions have them: compounds, typos, product codes."""
    out = []
    for _ in range(n):
        a, b = rng.choice(words), rng.choice(words)
        kind = rng.random()
        if kind < 0.4:
            out.append(a + b)
        elif kind < 0.8:
            i = rng.randrange(len(a))
            out.append(a[:i] + rng.choice("aeiouxzq") + a[i + 1:] + rng.choice(["", "s", "ing", "ed"]))
        else:
            out.append(f"{a[:3].upper()}-{rng.randint(10, 9999)}")
    return out


def make_captions(n: int, seed: int = 0, harsh: bool = False) -> list[str]:
    """``n`` captions. Word frequency follows the merge order of CLIP's vocabulary (which follows frequency in its
    training text), with the made-up words in the tail; ``harsh`` shuffles the whole list instead, so that half of
    all word occurrences, not only half of the word types, fall outside the vocabulary."""
    rng = random.Random(seed)
    words = _english_words()
    vocab_half = words[:len(words) // 2]
    words = vocab_half + _rare_words(rng, vocab_half, len(vocab_half))
    if harsh:
        rng.shuffle(words)
    weights = [1.0 / (rank + 10) for rank in range(len(words))]  # Zipf-like: common words dominate
    captions = []
    for _ in range(n):
        parts = rng.choices(words, weights=weights, k=max(1, int(rng.lognormvariate(2.3, 0.5))))
        if rng.random() < 0.3:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(PUNCT))
        if rng.random() < 0.1:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(UNICODE_BITS))
        if rng.random() < 0.02:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(REPAIR_BITS))
        text = " ".join(parts)
        captions.append(text.capitalize() if rng.random() < 0.6 else text)
    return captions


def _rates(factory, captions, repeats: int, fresh: bool) -> tuple[float, float, torch.Tensor]:
    """Best captions/s over ``repeats`` calls, by wall clock and by process CPU time (steadier on a shared
    machine); a new tokenizer per call (built untimed) when ``fresh``."""
    best_wall, best_cpu, out, tokenizer = float("inf"), float("inf"), None, factory()
    if not fresh:
        tokenizer(captions)
    for _ in range(repeats):
        if fresh:
            tokenizer = factory()
        wall, cpu = time.perf_counter(), time.process_time()
        out = tokenizer(captions)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return len(captions) / best_wall, len(captions) / best_cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--harsh", action="store_true", help="out-of-vocabulary words among the frequent ones too")
    args = parser.parse_args()
    from open_clip.tokenizer import SimpleTokenizer

    captions = make_captions(args.captions, harsh=args.harsh)
    rows, outputs, build_ms = {}, {}, {}
    for name, factory in [("open_clip", SimpleTokenizer), ("clipforge", ClipTokenizer)]:
        start = time.perf_counter()
        factory()  # the first construction in the process: clipforge builds its seed tables here, once
        build_ms[name] = 1000 * (time.perf_counter() - start)
        cold_wall, cold_cpu, outputs[name] = _rates(factory, captions, args.repeats, fresh=True)
        warm_wall, warm_cpu, _ = _rates(factory, captions, args.repeats, fresh=False)
        rows[name] = (cold_wall, warm_wall, cold_cpu, warm_cpu)
    if not torch.equal(outputs["open_clip"], outputs["clipforge"]):
        raise SystemExit("outputs differ between open_clip and clipforge: not reporting speed")
    print(f"{args.captions} {'harsh ' if args.harsh else ''}captions of {sum(map(len, captions)) / len(captions):.0f} "
          f"characters on average, best of {args.repeats}; ids identical: yes")
    header = ["cold wall", "warm wall", "cold cpu", "warm cpu"]
    print(f"{'captions/s':<10} " + " ".join(f"{h:>10}" for h in header))
    for name, values in rows.items():
        print(f"{name:<10} " + " ".join(f"{v:>10,.0f}" for v in values))
    ratios = [ours / ref for ours, ref in zip(rows["clipforge"], rows["open_clip"])]
    print(f"{'ratio':<10} " + " ".join(f"{r:>9.1f}x" for r in ratios))
    print("first construction in the process (not in the rates above): "
          + ", ".join(f"{name} {ms:.0f} ms" for name, ms in build_ms.items()))


if __name__ == "__main__":
    main()
