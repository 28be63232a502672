"""``clipforge train``: run (or resume) a training run from a config file plus dotted overrides.

Under torchrun use ``torchrun --nproc-per-node N -m clipforge.train --config ...``: same arguments.
"""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("--config", help="configs/NAME.py[:ARG] (get_config(arg) -> TrainConfig) or a run's "
                                         "config.json; default: built-in defaults")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config fields by dotted path, e.g. optim.lr=3e-4 data.batch_size=256")
    parser.add_argument("--workdir", help="run folder (checkpoints, metrics.jsonl, config.json)")
    parser.add_argument("--resume", help="'auto' (latest checkpoint in the workdir), a checkpoint path, or 'none'")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--print-augmented", type=int, metavar="N", default=0,
                        help="print the first N captions before and after the caption transforms (class captions, "
                             "synonyms) and exit")


def resolve(args):
    from clipforge.training.config import load_config

    overrides = list(args.set)
    if args.workdir:
        overrides.append(f"workdir={args.workdir!r}")
    if args.resume:
        overrides.append("checkpoint.resume=None" if args.resume == "none" else f"checkpoint.resume={args.resume!r}")
    return load_config(args.config, overrides)


def run(args) -> int:
    from clipforge.training.config import config_to_json
    from clipforge.training.loop import train

    if args.print_augmented < 0:
        raise ValueError(f"--print-augmented takes a number of captions >= 1, got {args.print_augmented}")
    cfg = resolve(args)
    if args.print_config:
        print(config_to_json(cfg))
        return 0
    if args.print_augmented:
        from clipforge.training.data.loader import preview_captions

        for before, after in preview_captions(cfg.data, args.print_augmented):
            print(f"{before}\n  -> {after}")
        return 0
    result = train(cfg)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())
                        if k.rsplit("/", 1)[-1] in ("acc1", "acc5", "image_retrieval_recall@5",
                                                    "text_retrieval_recall@5"))
    state = "already complete" if result.already_complete else "done"
    print(f"{state}: {result.steps} steps, final loss {result.final_loss:.4f}"
          + (f", {metrics}" if metrics else "") + f"\ncheckpoint: {result.checkpoint}"
          + (f"\nmodel folder: {result.model_dir}" if result.model_dir else ""))
    return 0
