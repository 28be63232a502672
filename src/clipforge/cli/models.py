"""``clipforge models``: the model zoo as a table (architectures and their pretrained weight tags)."""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("filter", nargs="?", default="", help="only architectures whose name contains this text")
    parser.add_argument("--tags", action="store_true", help="one line per (architecture, tag) pair")
    parser.add_argument("--arch", help="the full weight table of one architecture (source, image size, changes)")


def run(args) -> int:
    from clipforge.models import registry, weights

    if args.arch:
        print(weights.format_pretrained_table(args.arch))
        return 0
    needle = args.filter.lower()
    archs = [a for a in registry.list_models() if needle in a.lower()]
    if not archs:
        print(f"no architecture matches '{args.filter}'")
        return 1
    if args.tags:
        for arch, tag in weights.list_pretrained():
            if arch in archs:
                print(f"{arch}::{tag}")
        return 0
    width = max(len(a) for a in archs)
    print(f"{'architecture':<{width}}  pretrained tags")
    print(f"{'-' * width}  {'-' * 15}")
    for arch in archs:
        tags = weights.list_pretrained_tags(arch)
        print(f"{arch:<{width}}  {', '.join(tags) if tags else '(none: random init)'}")
    print(f"\n{len(archs)} architectures, {sum(len(weights.list_pretrained_tags(a)) for a in archs)} tags. "
          "Use a pair as ARCH::TAG, e.g. ViT-B-32::laion2b_s34b_b79k.")
    return 0
