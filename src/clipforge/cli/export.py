"""``clipforge export MODEL --out DIR``: a model as an ONNX bundle (two graphs + manifest + tokenizer files) that
``clipforge.runtime.OnnxEncoder`` runs with ONNX Runtime alone; ``--int8`` and ``--fp16`` add measured variants."""
from __future__ import annotations


def _batch(text: str):
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"--batch takes 'dynamic' or a positive integer, got {text!r}")
    return int(text)


def add_arguments(parser):
    parser.add_argument("model", help="a model name as create_model takes it: ARCH, ARCH::TAG, ARCH::path, "
                                      "hf-hub:ORG/NAME, local-dir:DIR")
    parser.add_argument("--out", required=True, help="the bundle folder to write (must not exist or be empty)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--batch", type=_batch, default=None, metavar="dynamic|N",
                        help="batch dimension of the graphs: dynamic (default) or a fixed size")
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                        help="torch's ONNX exporter (auto: dynamo, then TorchScript if dynamo fails)")
    parser.add_argument("--fp16", action="store_true", help="add fp16 graphs (for GPUs; never the default)")
    parser.add_argument("--int8", nargs="?", const="dynamic", default=None, choices=["dynamic", "static", "both"],
                        help="add int8 graphs: dynamic (default; no data needed) or static (calibrated on "
                             "--calibration images), or both")
    parser.add_argument("--calibration", default=None, metavar="DIR", help="folder of your images for --int8 static")
    parser.add_argument("--calibration-images", type=int, default=128, help="calibration images used (default 128)")
    parser.add_argument("--holdout", nargs="+", default=[], metavar="DATASET",
                        help="held-out dataset(s) to measure int8/fp16 accuracy against fp32, as the benchmark "
                             "takes them (folder:DIR, captions:FILE, wds:DIR, or a name under --data-root)")
    parser.add_argument("--data-root", default="data", help="where dataset names are found (default: data)")
    parser.add_argument("--tolerance", type=float, default=0.5,
                        help="largest accepted drop, in points, of a held-out metric; a variant that loses more is "
                             "kept but not made the default (default 0.5)")


def _summary(report) -> list[str]:
    lines = [f"wrote {report.out} (exporter: {', '.join(f'{k} {v}' for k, v in report.exporter.items())})",
             "fp32 parity with torch eager (max relative error): "
             + ", ".join(f"{k} {v:.1e}" for k, v in report.parity.items())]
    for name, info in report.variants.items():
        line = f"{name}: cosine to fp32 >= image {info['image_cosine_min']:.4f}, text {info['text_cosine_min']:.4f}"
        if "accuracy_change_points" in info:
            change = ", ".join(f"{k} {v:+.2f}" for k, v in info["accuracy_change_points"].items())
            line += f"; held-out change (points): {change}; {'accepted' if info['accepted'] else 'REJECTED'}"
        lines.append(line)
    lines.append(f"default variant: {report.default_variant}; load it with "
                 f"clipforge.runtime.OnnxEncoder('{report.out}')")
    return lines


def run(args) -> int:
    from clipforge.export import OnnxExportConfig, export_onnx

    int8 = {None: (), "dynamic": ("dynamic",), "static": ("static",), "both": ("dynamic", "static")}[args.int8]
    config = OnnxExportConfig(opset=args.opset, batch=args.batch, exporter=args.exporter, fp16=args.fp16, int8=int8,
                              calibration=args.calibration, calibration_images=args.calibration_images,
                              holdout=tuple(args.holdout), data_root=args.data_root, tolerance=args.tolerance)
    report = export_onnx(args.model, args.out, config, force=args.force)
    print("\n".join(_summary(report)))
    return 0
