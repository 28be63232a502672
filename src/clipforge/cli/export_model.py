"""``clipforge export-model RUN|CHECKPOINT --out DIR``: a training checkpoint as a model folder in the hub layout.

The folder (``open_clip_config.json`` + ``open_clip_model.safetensors`` + ``README.md``) loads with
``create_model("local-dir:DIR")``, ``clipforge benchmark --model local-dir:DIR`` and open_clip's own
``create_model_and_transforms("local-dir:DIR")``; share it with ``hf upload ORG/NAME DIR .``.
"""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("source", help="a run folder (its latest checkpoint), a step_N.pt file or a sharded folder")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--model", default=None,
                        help="architecture name, only for checkpoints that do not record it (older clipforge)")


def run(args) -> int:
    from clipforge.training.export import export_model

    out = export_model(args.source, args.out, force=args.force, arch=args.model)
    print(f"wrote {out}: load it with create_model('local-dir:{out}'); share it with: hf upload ORG/NAME {out} .")
    return 0
