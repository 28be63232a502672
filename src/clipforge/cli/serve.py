"""``clipforge serve MODEL|BUNDLE [--index DIR]``: the embedding / ranking / classification / search service."""
from __future__ import annotations

import os

from clipforge.serving.config import DEFAULT_FORMATS, ServeConfig


def add_arguments(parser):
    parser.add_argument("model", help="a model name create_model takes (MODEL, MODEL::TAG, hf-hub:ORG/NAME, a folder) "
                                      "or an ONNX bundle folder from `clipforge export`")
    parser.add_argument("--index", default=None, help="an index folder from `clipforge index`: /v1/search and the "
                                                      "search page at /")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"],
                        help="torch, or onnx for a bundle (default: onnx when MODEL is a bundle)")
    parser.add_argument("--precision", default="fp32", help="torch runtime precision (fp32, bf16, fp16, amp ...)")
    parser.add_argument("--device", default="auto", help="torch: auto, cpu, cuda, cuda:N; onnx: auto, cpu, cuda, "
                                                         "tensorrt")
    parser.add_argument("--variant", default=None, help="onnx: the bundle variant (fp32, int8, fp16)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own model (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads per process")
    batching = parser.add_argument_group("dynamic batching")
    batching.add_argument("--max-batch", type=int, default=32, help="inputs encoded together at most (32)")
    batching.add_argument("--max-wait-ms", type=float, default=5.0, help="how long an input waits for others (5)")
    batching.add_argument("--max-queue", type=int, default=1024, help="queued inputs before 503 (1024)")
    limits = parser.add_argument_group("limits and access")
    limits.add_argument("--max-body-mb", type=float, default=32, help="request body size (32 MB)")
    limits.add_argument("--max-inputs", type=int, default=256, help="inputs per request (256)")
    limits.add_argument("--max-pixels", type=int, default=40_000_000, help="pixels per image (40M)")
    limits.add_argument("--image-formats", default=",".join(DEFAULT_FORMATS), help="accepted image formats")
    limits.add_argument("--allow-url-host", action="append", default=[], metavar="HOST",
                        help="fetch image URLs from this host (repeatable, '*.example.com' allowed; public "
                             "addresses only). Default: URLs are not fetched")
    limits.add_argument("--api-key-file", default=None,
                        help="file with one API key per line (or CLIPFORGE_API_KEYS=k1,k2); /v1 then needs a key")
    limits.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser calls from this origin (repeatable). Default: CORS off")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _api_keys(path: str | None) -> tuple[str, ...]:
    keys = [k.strip() for k in os.environ.get("CLIPFORGE_API_KEYS", "").split(",") if k.strip()]
    if path:
        with open(path, encoding="utf-8") as f:
            keys += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        if not keys:
            raise ValueError(f"--api-key-file {path} holds no keys (one per line)")
    return tuple(keys)


def config_from_args(args) -> ServeConfig:
    return ServeConfig(
        model=args.model, runtime=args.runtime, precision=args.precision, device=args.device, variant=args.variant,
        index=args.index, host=args.host, port=args.port, workers=args.workers, threads=args.threads,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * (1 << 20)), max_inputs=args.max_inputs, max_pixels=args.max_pixels,
        image_formats=tuple(f.strip().upper() for f in args.image_formats.split(",") if f.strip()),
        url_hosts=tuple(args.allow_url_host), api_keys=_api_keys(args.api_key_file),
        cors_origins=tuple(args.cors_origin))


def run(args) -> int:
    from clipforge.serving.app import open_index
    from clipforge.serving.encoders import load_model
    from clipforge.serving.server import check_port, serve

    config = config_from_args(args)
    config.check()
    check_port(config.host, config.port)

    # loaded here, so that a bad model or index is one line before the server starts; several workers load their own
    model = load_model(config)
    index = open_index(config, model) if config.index else None
    if config.workers > 1:
        if index is not None:
            index.close()
        model = index = None
    serve(config, model, index, args.log_level)
    return 0
