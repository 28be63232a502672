"""The ``clipforge`` command: dispatches ``clipforge VERB ...`` to ``clipforge.cli.<verb>``.

Each verb module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Verb modules are imported only when
chosen, so ``clipforge --help`` stays fast.

This is the outermost boundary: an error becomes one line on stderr (``clipforge VERB: error: ...``) and exit
status 2; an unexpected exception (a bug) becomes one line too, exit status 1, and ``--debug`` (anywhere on the
command line, or ``CLIPFORGE_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# verb -> (module, one-line help)
VERBS = {
    "models": ("clipforge.cli.models", "list the model zoo: architectures and pretrained weight tags"),
    "info": ("clipforge.cli.info", "describe one model: parameters, GFLOPs, size on disk, preprocessing"),
    "train": ("clipforge.cli.train", "train or fine-tune a model from a run config (torchrun: -m clipforge.train)"),
    "export-model": ("clipforge.cli.export_model",
                     "write a run's (or checkpoint's) model as a hub folder for create_model, open_clip, the hub"),
    "export": ("clipforge.cli.export",
               "write an ONNX bundle (image + text graphs, manifest; int8/fp16 variants measured) for ONNX Runtime"),
    "wise-ft": ("clipforge.cli.wise_ft",
                "interpolate zero-shot and fine-tuned weights (WiSE-FT) at several alphas, evaluate each, plot"),
    "caption": ("clipforge.cli.caption", "caption images with a CoCa model (greedy, beam search, top-k/top-p)"),
    "benchmark": ("clipforge.cli.benchmark", "zero-shot classification/retrieval, linear probe, resource tables"),
    "index": ("clipforge.cli.index", "embed an image folder, table or shards into a searchable index (incremental)"),
    "search": ("clipforge.cli.search", "search an index with text or an image; a table or JSON"),
    "dedup": ("clipforge.cli.dedup", "groups of near-duplicate images in an index"),
    "curate": ("clipforge.cli.curate", "MetaCLIP curation: match captions to metadata, balance, write curated shards"),
    "serve": ("clipforge.cli.serve", "HTTP service: OpenAI-shaped embeddings, ranking, classification, index search"),
    "plot": ("clipforge.cli.plot", "PNG curves of training runs (loss, lr, throughput, evaluation metrics)"),
    "quickstart": ("clipforge.cli.quickstart", "offline demo: make a dataset, train a tiny CLIP, evaluate it"),
}


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforge", description="CLIP-style vision-language models.",
                                     epilog="Add --debug to any command to see a traceback on errors.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def _one_line(message: object) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines) if lines else ""


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input or a bad environment: their message is the whole story."""
    from clipforge.config import ConfigError

    return (UserError, ConfigError, ValueError, KeyError, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError, FileExistsError, ImportError, ConnectionError, OSError)


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("clipforge: %(message)s"))
    root = logging.getLogger("clipforge")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _run_verb(verb: str, argv: list[str], debug: bool) -> int:
    module = importlib.import_module(VERBS[verb][0])
    parser = argparse.ArgumentParser(prog=f"clipforge {verb}", description=VERBS[verb][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"clipforge {verb}: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"clipforge {verb}: error: {_one_line(message) or type(e).__name__}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the outermost boundary: a bug still gets one line, not a traceback
        if debug:
            raise
        print(f"clipforge {verb}: internal error: {type(e).__name__}: {_one_line(e)} (run again with --debug "
              "for the traceback, and please report it)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CLIPFORGE_DEBUG", "").strip() not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"clipforge: error: unknown command '{argv[0]}'. Commands: {', '.join(VERBS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    _configure_logging()
    return _run_verb(argv[0], argv[1:], debug)


if __name__ == "__main__":
    sys.exit(main())
