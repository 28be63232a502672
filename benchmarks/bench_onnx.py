"""ONNX Runtime against clipforge's own torch eager path, and what int8 costs in accuracy.

    python benchmarks/bench_onnx.py                 # ViT-B-32 and RN50 (random weights), batch 1, 8, 64; accuracy
    python benchmarks/bench_onnx.py --quick         # batch 1 and 8, fewer repeats
    python benchmarks/bench_onnx.py --run runs/quickstart   # accuracy on an existing quickstart run

Speed: each model is exported once (``export_onnx`` with int8 dynamic and static; static calibrated on 16 noise
images, which is enough to time it), then image and text encoding are timed for torch eager (fused CPU path on, as
``create_model`` users get it), ONNX Runtime fp32, int8 dynamic and int8 static, interleaved, best of N. The ratio
is each runtime's items/s over eager's in the same run.

Accuracy: a model trained by the quickstart (trained here with ``--steps`` unless ``--run`` points at one) is
exported with both int8 modes, calibrated on 128 of its training images, and measured on its held-out split:
zero-shot top-1 and recall@5 of fp32 and each int8 variant through ONNX Runtime.
"""
from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys
import tarfile
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipforge.export import OnnxExportConfig, export_onnx  # noqa: E402
from clipforge.models.factory import create_model  # noqa: E402
from clipforge.runtime import OnnxEncoder  # noqa: E402

RUNTIMES = ("eager", "ort-fp32", "ort-int8-dynamic", "ort-int8-static")


def _best_rate(fn, items: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return items / best


def _noise_images(folder: pathlib.Path, n: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(folder)


def speed(name: str, batches: list[int], repeats: int, scratch: pathlib.Path) -> list[dict]:
    model = create_model(name).eval()
    bundle = scratch / name
    start = time.perf_counter()
    export_onnx(model, bundle, OnnxExportConfig(int8=("dynamic", "static"),
                                                calibration=_noise_images(scratch / "noise", 16)), force=True)
    print(f"{name}: exported in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    encoders = {f"ort-{v}": OnnxEncoder(bundle, variant=v) for v in ("fp32", "int8-dynamic", "int8-static")}
    height, width = model.preprocess_config.size_hw
    rows = []
    for batch in batches:
        images = torch.randn(batch, 3, height, width)
        tokens = encoders["ort-fp32"].tokenize(["a photo of a dog playing in the snow"] * batch)
        for tower, eager, arg in (("image", model.encode_image, images),
                                  ("text", model.encode_text, torch.from_numpy(tokens))):
            rates = {}
            for runtime in RUNTIMES:
                if runtime == "eager":
                    def run():
                        with torch.no_grad():
                            eager(arg)
                else:
                    encode = getattr(encoders[runtime], f"encode_{tower}")
                    run = (lambda e=encode, a=arg.numpy(): e(a))
                rates[runtime] = _best_rate(run, batch, repeats)
            rows.append({"model": name, "tower": tower, "batch": batch, **{k: round(v, 1) for k, v in rates.items()},
                         **{f"{k}/eager": round(rates[k] / rates["eager"], 2) for k in RUNTIMES[1:]}})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _calibration_from_shard(shard: pathlib.Path, folder: pathlib.Path, n: int) -> str:
    """The first ``n`` images of one training shard, as files."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith((".png", ".jpg"))][:n]
        for m in members:
            Image.open(io.BytesIO(tar.extractfile(m).read())).save(folder / pathlib.Path(m.name).name)
    return str(folder)


def accuracy(run_dir: pathlib.Path | None, steps: int, scratch: pathlib.Path) -> dict:
    from clipforge.training.shapes import load_shapes_info

    if run_dir is None:
        from clipforge.cli.main import main

        run_dir = scratch / "quickstart"
        main(["quickstart", "--workdir", str(run_dir), "--steps", str(steps)])
    data = run_dir / "data"
    info = load_shapes_info(str(data))
    calibration = _calibration_from_shard(sorted(data.glob("train-*.tar"))[0], scratch / "calib", 128)
    report = export_onnx(f"local-dir:{run_dir / 'run' / 'model'}", scratch / "quickstart_bundle", OnnxExportConfig(
        int8=("dynamic", "static"), calibration=calibration, holdout=(f"val=wds:{info['val']}",)), force=True)
    return {"accuracy": report.accuracy,
            "change_points": {k: v.get("accuracy_change_points") for k, v in report.variants.items()},
            "cosine": {k: (v["image_cosine_min"], v["text_cosine_min"]) for k, v in report.variants.items()},
            "default_variant": report.default_variant}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "RN50"])
    parser.add_argument("--run", type=pathlib.Path, default=None, help="an existing quickstart workdir")
    parser.add_argument("--steps", type=int, default=600, help="quickstart steps when --run is not given")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default 1 8 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats after a warm-up (default 3)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    batches, repeats = ([1, 8], 2) if args.quick else ([1, 8, 64], 3)
    batches, repeats = args.batches or batches, args.repeats or repeats
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        scratch = pathlib.Path(tmp)
        rows = [] if args.skip_speed else [r for m in args.models for r in speed(m, batches, repeats, scratch)]
        acc = None if args.skip_accuracy else accuracy(args.run, args.steps, scratch)
    print("\n| model | tower | batch | eager items/s | ORT fp32 | ORT int8 dynamic | ORT int8 static |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['tower']} | {r['batch']} | {r['eager']} | {r['ort-fp32']} ({r['ort-fp32/eager']}x) "
              f"| {r['ort-int8-dynamic']} ({r['ort-int8-dynamic/eager']}x) "
              f"| {r['ort-int8-static']} ({r['ort-int8-static/eager']}x) |")
    if acc:
        print("\nquickstart model, held-out split (fp32 and int8 through ONNX Runtime):")
        print(json.dumps(acc, indent=1))


if __name__ == "__main__":
    main()
