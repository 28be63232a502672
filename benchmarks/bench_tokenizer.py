"""Captions per second: clipforge's CLIP tokenizer against open_clip's, on the same captions in the same run.

    python benchmarks/bench_tokenizer.py [--captions 20000] [--repeats 3]

The captions imitate web alt-text: words drawn with a Zipf law from a list of ~30,000 words, half of them English
words of CLIP's vocabulary and half made-up words outside it (compounds, typos, product codes); mostly plain ASCII, about 10% with accents, emoji or CJK/Arabic/Hindi text, about 2% with HTML
entities or mojibake (the captions ftfy repairs). "cold" starts each tokenizer fresh (empty word caches); "warm"
runs the same captions again on the same instance, as happens when a zero-shot classifier or a training epoch
sees the same words again. Outputs are checked to be identical before any time is reported.
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


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = _english_words()
    rng.shuffle(words)
    words = words[:len(words) // 2] + _rare_words(rng, words, len(words) // 2)
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


def _rate(factory, captions, repeats: int, fresh: bool) -> tuple[float, torch.Tensor]:
    """Best captions/s over ``repeats`` calls; a new tokenizer per call (untimed) when ``fresh``."""
    best, out, tokenizer = float("inf"), None, factory()
    if not fresh:
        tokenizer(captions)
    for _ in range(repeats):
        if fresh:
            tokenizer = factory()
        start = time.perf_counter()
        out = tokenizer(captions)
        best = min(best, time.perf_counter() - start)
    return len(captions) / best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from open_clip.tokenizer import SimpleTokenizer

    captions = make_captions(args.captions)
    rows = []
    for name, factory in [("open_clip", SimpleTokenizer), ("clipforge", ClipTokenizer)]:
        cold_rate, cold_out = _rate(factory, captions, args.repeats, fresh=True)
        warm_rate, _ = _rate(factory, captions, args.repeats, fresh=False)
        rows.append((name, cold_rate, warm_rate, cold_out))
    if not torch.equal(rows[0][3], rows[1][3]):
        raise SystemExit("outputs differ between open_clip and clipforge: not reporting speed")
    print(f"{args.captions} captions, torch threads {torch.get_num_threads()}, identical ids: yes")
    print(f"{'tokenizer':<10} {'cold captions/s':>16} {'warm captions/s':>16}")
    for name, cold, warm, _ in rows:
        print(f"{name:<10} {cold:>16,.0f} {warm:>16,.0f}")
    print(f"{'ratio':<10} {rows[1][1] / rows[0][1]:>15.1f}x {rows[1][2] / rows[0][2]:>15.1f}x")


if __name__ == "__main__":
    main()
