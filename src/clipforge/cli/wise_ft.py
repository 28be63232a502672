"""``clipforge wise-ft --zeroshot A --finetuned B --alpha 0,0.25,0.5,0.75,1 --eval SETS --control SETS --out DIR``.

Interpolates the weights of a zero-shot model and its fine-tuned version at each alpha (0 = zero-shot, 1 =
fine-tuned), evaluates each on the held-out sets of the fine-tuning target (``--eval``) and on zero-shot control
sets (``--control``), and writes ``DIR/wise_ft.md`` (table), ``wise_ft.json``, ``wise_ft.png`` (the trade-off curve)
and the interpolated models (``DIR/alpha_0.5/``, hub layout; ``--save none`` skips them). Datasets are given as
``clipforge benchmark`` takes them (shipped names under ``--data-root``, ``NAME=wds:...``, ``folder:...``).
"""
from __future__ import annotations


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} takes numbers separated by commas (e.g. 0,0.5,1), got {text!r}") from None


def add_arguments(parser):
    parser.add_argument("--zeroshot", required=True, help="the zero-shot model: NAME::TAG, a file, local-dir:DIR, "
                                                          "hf-hub:ORG/REPO, or a run folder")
    parser.add_argument("--finetuned", required=True, help="its fine-tuned version (a run folder, model folder...)")
    parser.add_argument("--alpha", default="0,0.25,0.5,0.75,1",
                        help="mixing coefficients in [0, 1], comma-separated (default 0,0.25,0.5,0.75,1)")
    parser.add_argument("--eval", nargs="*", default=[], metavar="DATASET", help="held-out sets of the target task")
    parser.add_argument("--control", nargs="*", default=[], metavar="DATASET", help="zero-shot control sets")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--out", required=True, help="the report folder (models go to OUT/alpha_A/, e.g. alpha_0.5)")
    parser.add_argument("--save", default="all", help="models to write: all (default), none, or alphas 0.5,0.75")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")


def run(args) -> int:
    from pathlib import Path

    from clipforge.training.wise_ft import WiseFtConfig, run_wise_ft

    save = args.save if args.save in ("all", "none") else _floats(args.save, "--save")
    config = WiseFtConfig(zeroshot=args.zeroshot, finetuned=args.finetuned, alphas=_floats(args.alpha, "--alpha"),
                          eval_sets=tuple(args.eval), control_sets=tuple(args.control), data_root=args.data_root,
                          out=args.out, save=save, batch_size=args.batch_size, device=args.device)
    result = run_wise_ft(config)
    print(result.table())
    plotted = (Path(args.out) / "wise_ft.png").is_file()
    saved = len(config.alphas_to_save())
    print(f"\nwrote {args.out}/wise_ft.md, wise_ft.json" + (", wise_ft.png" if plotted else "")
          + (f" and {saved} model folder(s) {args.out}/alpha_*/" if saved else ""))
    return 0
