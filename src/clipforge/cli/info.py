"""``clipforge info MODEL``: parameters, GFLOPs per image and per text, size on disk, preprocessing."""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("model", help="architecture name, ARCH::TAG, hf-hub:org/repo or local-dir:PATH")
    parser.add_argument("--config", action="store_true", help="also print the resolved architecture config")


def run(args) -> int:
    from clipforge.models import factory, profile, registry, weights

    spec = factory.parse_model_spec(args.model)
    if spec.arch is None:
        raise ValueError("info takes an architecture name (optionally ARCH::TAG); for hub or directory sources use "
                         "create_model in Python")
    config = registry.get_architecture(spec.arch)
    stats = profile.profile_model(config)
    rows = [("architecture", spec.arch),
            ("parameters", f"{stats.params_total / 1e6:.2f} M (image {stats.params_image / 1e6:.2f} M, "
                           f"text {stats.params_text / 1e6:.2f} M)"),
            ("GFLOPs per image", f"{stats.gflops_image:.2f}"),
            ("GFLOPs per text", f"{stats.gflops_text:.2f}"),
            ("size on disk", f"{stats.size_on_disk('fp32') / 2**20:.0f} MiB fp32, "
                             f"{stats.size_on_disk('fp16') / 2**20:.0f} MiB fp16/bf16"),
            ("image size", str(config.vision.image_size)),
            ("context length", str(config.text.context_length)),
            ("embedding dim", str(config.embed_dim))]
    tags = weights.list_pretrained_tags(spec.arch)
    rows.append(("pretrained tags", ", ".join(tags) if tags else "(none)"))
    if spec.pretrained:
        entry = weights.get_weight_entry(spec.arch, spec.pretrained)
        rows.append(("weights source", entry.hf_hub_id or entry.url or "?"))
        rows.append(("preprocessing", ", ".join(f"{k}={v}" for k, v in entry.preprocess.items())))
        if entry.arch_overrides:
            rows.append(("architecture changes", ", ".join(f"{k}={v}" for k, v in entry.arch_overrides.items())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.config:
        print(factory.describe(config))
    return 0
