"""``clipforge plot RUN [RUN ...] [--out DIR] [--metrics KEY ...]``: PNG curves of training runs.

Writes ``loss.png``, ``lr.png``, ``throughput.png`` and ``eval.png`` (those the runs have data for), several runs
overlaid; ``--metrics`` gives one PNG per named key instead (``--metrics logit_scale eval/val/acc1``). Needs the
``plot`` extra: ``pip install 'clipforge[plot]'``.
"""
from __future__ import annotations

import os


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN", help="training run folders (each holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="the folder for the PNG files (default: <first RUN>/plots)")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="KEY",
                        help="plot only these keys, one PNG each (e.g. loss lr eval/val/acc1); put it after the runs")


def run(args) -> int:
    from clipforge.training.plots import plot_runs

    out = args.out if args.out is not None else os.path.join(args.runs[0], "plots")
    for path in plot_runs(args.runs, out, args.metrics):
        print(path)
    return 0
