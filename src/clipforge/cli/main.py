"""The ``clipforge`` command: dispatches ``clipforge VERB ...`` to ``clipforge.cli.<verb>``.

Each verb module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Verb modules are imported
only when chosen, so ``clipforge --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help)
VERBS = {
    "models": ("clipforge.cli.models", "list the model zoo: architectures and pretrained weight tags"),
    "info": ("clipforge.cli.info", "describe one model: parameters, GFLOPs, size on disk, preprocessing"),
    "train": ("clipforge.cli.train", "train or fine-tune a model from a run config (torchrun: -m clipforge.train)"),
    "benchmark": ("clipforge.cli.benchmark", "zero-shot classification/retrieval, linear probe, resource tables"),
    "quickstart": ("clipforge.cli.quickstart", "offline demo: make a dataset, train a tiny CLIP, evaluate it"),
}


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforge", description="CLIP-style vision-language models.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"clipforge: unknown command '{argv[0]}'. Commands: {', '.join(VERBS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    verb = argv[0]
    module = importlib.import_module(VERBS[verb][0])
    parser = argparse.ArgumentParser(prog=f"clipforge {verb}", description=VERBS[verb][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except (UserError, ValueError, FileNotFoundError, KeyError) as e:
        # Library errors are written to be read by people: show the message, not a traceback.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"clipforge {verb}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
