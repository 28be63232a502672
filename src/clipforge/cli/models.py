"""``clipforge models``: the model zoo as a table (architectures and their pretrained weight tags).

Names are listed as open_clip lists them: ``<arch>-quickgelu`` names appear beside their base architecture with the
tags that need QuickGELU, so the pair count equals open_clip's ``list_pretrained()``.
"""
from __future__ import annotations

import sys


def add_arguments(parser):
    parser.add_argument("filter", nargs="?", default="", help="only architectures whose name contains this text")
    parser.add_argument("--tags", action="store_true", help="one line per (architecture, tag) pair")
    parser.add_argument("--arch", help="the full weight table of one architecture (source, image size, changes)")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def zoo_names() -> list[str]:
    """Every name ``create_model`` takes: the presets and the ``-quickgelu`` names that have weights."""
    from clipforge.models import registry, weights

    names = set(registry.list_models()) | {arch for arch, _ in weights.list_pretrained()}
    return sorted(names, key=str.lower)


def run(args) -> int:
    from clipforge.models import weights

    if args.arch:
        print(weights.format_pretrained_table(args.arch))
        return 0
    needle = args.filter.lower()
    archs = [a for a in zoo_names() if needle in a.lower()]
    if not archs:
        print(f"clipforge models: no architecture name contains '{args.filter}' (`clipforge models` lists all)",
              file=sys.stderr)
        return 1
    if args.tags:
        for arch, tag in weights.list_pretrained():
            if arch in archs:
                print(f"{arch}::{tag}")
        return 0
    width = max(len(a) for a in archs)
    print(f"{'architecture':<{width}}  pretrained tags")
    print(f"{'-' * width}  {'-' * 15}")
    pairs = 0
    for arch in archs:
        tags = weights.list_pretrained_tags(arch)
        pairs += len(tags)
        print(f"{arch:<{width}}  {', '.join(tags) if tags else '(none: random init)'}")
    with_weights = sum(1 for a in archs if weights.list_pretrained_tags(a))
    print(f"\n{_plural(len(archs), 'architecture name')} ({with_weights} with pretrained weights), "
          f"{_plural(pairs, '(architecture, tag) pair')}. Use a pair as ARCH::TAG, e.g. "
          "ViT-B-32::laion2b_s34b_b79k.")
    return 0
