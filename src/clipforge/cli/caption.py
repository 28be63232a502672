"""``clipforge caption IMAGE... --model coca_ViT-B-32 --pretrained TAG``: one caption per image, from a CoCa model."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path


DEFAULT_MAX_LENGTH = 30  # open_clip's default seq_len


def add_arguments(parser):
    parser.add_argument("images", nargs="+", help="image files to caption")
    parser.add_argument("--model", required=True, help="a CoCa architecture, e.g. coca_ViT-B-32 (or a model folder)")
    parser.add_argument("--pretrained", default=None, help="weights: a tag (mscoco_finetuned_laion2b_s13b_b90k), "
                                                           "a file or a folder; none = random weights")
    parser.add_argument("--method", default="beam", help="greedy, beam, top_k or top_p (default beam)")
    parser.add_argument("--num-beams", type=int, default=6, help="beams for --method beam (default 6)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="most tokens per caption, start and end tokens included (default 30, or fewer if the "
                             "model reads fewer)")
    parser.add_argument("--min-length", type=int, default=5, help="no end token before this length (default 5)")
    parser.add_argument("--top-k", type=int, default=50, help="tokens kept for --method top_k (default 50)")
    parser.add_argument("--top-p", type=float, default=0.9, help="probability kept for --method top_p (default 0.9)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the sampling methods")
    parser.add_argument("--batch-size", type=int, default=8, help="images decoded together (default 8)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of one 'path<TAB>caption' line each")


def _config(args):
    from clipforge.captioning import GenerationConfig

    return GenerationConfig(method=args.method, max_length=args.max_length or DEFAULT_MAX_LENGTH,
                            min_length=args.min_length,
                            num_beams=args.num_beams, top_k=args.top_k, top_p=args.top_p,
                            temperature=args.temperature, repetition_penalty=args.repetition_penalty, seed=args.seed)


def _check_files(paths: list[str]) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")


def run(args) -> int:
    from clipforge.captioning import check_captioner, generate
    from clipforge.data.images import read_image
    from clipforge.models.factory import create_model

    config = _config(args)  # bad options fail before the model is built
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    _check_files(args.images)
    model = create_model(args.model, args.pretrained, device=args.device)
    check_captioner(model)
    if args.max_length is None:
        config = dataclasses.replace(config, max_length=min(DEFAULT_MAX_LENGTH, model.config.decoder.context_length))
    results = []
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start:start + args.batch_size]
        captions = generate(model, [read_image(path) for path in paths], config)
        results += [{"image": path, "caption": caption} for path, caption in zip(paths, captions)]
    if args.json:
        print(json.dumps(results, indent=1, ensure_ascii=False))
    else:
        print("\n".join(f"{r['image']}\t{r['caption']}" for r in results))
    if model.info.source is None:
        logging.getLogger("clipforge").warning("the model has random weights (no --pretrained): its captions are "
                                               "noise; e.g. --pretrained mscoco_finetuned_laion2b_s13b_b90k")
    return 0
