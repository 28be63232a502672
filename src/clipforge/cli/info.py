"""``clipforge info MODEL``: parameters, GFLOPs per image and per text, size on disk, preprocessing.

MODEL is any name ``create_model`` takes: ``ARCH``, ``ARCH::TAG``, ``ARCH::path``, ``local-dir:PATH``,
``hf-hub:org/repo`` or the path of a self-describing checkpoint. Tag weights are not downloaded.
"""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("model", help="ARCH, ARCH::TAG, ARCH::path, local-dir:PATH, hf-hub:org/repo or a checkpoint")
    parser.add_argument("--config", action="store_true", help="also print the resolved architecture config")


def _weights_rows(spec, local) -> list[tuple[str, str]]:
    from clipforge.models import weights

    rows = []
    if spec.arch is not None and spec.pretrained is not None and weights.has_tag(spec.arch, spec.pretrained):
        entry = weights.get_weight_entry(spec.arch, spec.pretrained)
        rows.append(("weights source", f"hf-hub:{entry.hf_hub_id}" if entry.hf_hub_id else entry.url or "?"))
        rows.append(("preprocessing", ", ".join(f"{k}={v}" for k, v in entry.preprocess.items())))
        if entry.arch_overrides:
            rows.append(("architecture changes", ", ".join(f"{k}={v}" for k, v in entry.arch_overrides.items())))
    elif local is not None:
        rows.append(("weights source", local.source))
        pp = local.declared.preprocess
        if pp is not None:
            rows.append(("preprocessing", f"image_size={pp.image_size}, mean={list(pp.mean)}, std={list(pp.std)}, "
                                          f"interpolation={pp.interpolation}, resize_mode={pp.resize_mode}"))
        if local.declared.arch:
            rows.append(("made from", local.declared.arch + (f" with {dict(local.declared.overrides)}"
                                                             if local.declared.overrides else "")))
    return rows


def run(args) -> int:
    from clipforge.models import factory, profile, weights

    spec = factory.parse_model_spec(args.model)
    config, local = factory.describe_model(args.model)
    stats = profile.profile_model(config)
    rows = [("model", args.model),
            ("parameters", f"{stats.params_total / 1e6:.2f} M (image {stats.params_image / 1e6:.2f} M, "
                           f"text {stats.params_text / 1e6:.2f} M)"),
            ("GFLOPs per image", f"{stats.gflops_image:.2f}"),
            ("GFLOPs per text", f"{stats.gflops_text:.2f}"),
            ("size on disk", f"{stats.size_on_disk('fp32') / 2**20:.0f} MiB fp32, "
                             f"{stats.size_on_disk('fp16') / 2**20:.0f} MiB fp16/bf16"),
            ("image size", str(config.vision.image_size)),
            ("context length", str(config.text.context_length)),
            ("embedding dim", str(config.embed_dim)),
            ("tokenizer", config.tokenizer)]
    if spec.arch is not None:
        tags = weights.list_pretrained_tags(spec.arch)
        rows.append(("pretrained tags", ", ".join(tags) if tags else "(none)"))
    rows += _weights_rows(spec, local)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.config:
        print(factory.describe(config))
    return 0
