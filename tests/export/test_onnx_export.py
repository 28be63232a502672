"""ONNX bundles: parity with torch eager for every preset family (dynamo exporter, dynamic batch), the fixed-batch
TorchScript path, external data, int8 variants and their accuracy judgement, and the torch-free runtime."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from clipforge.export import OnnxExportConfig, export_onnx
from clipforge.export.onnx import ExportReport, _judge
from clipforge.models.factory import create_model
from clipforge.runtime import BundleError, OnnxEncoder, read_bundle
from clipforge.transforms import create_eval_transform

ATOL = 1e-4
QUICK_GELU = {"vision.act": "quick_gelu", "text.act": "quick_gelu"}


def _siglip_tokenizer(directory):
    """A small sentencepiece-like tokenizer that appends </s>, as SigLIP's does."""
    words = "a photo of the cat dog red house snow two playing diagram near in".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(300)]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"],
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, f)
    return str(directory)


def _family_model(family, tmp_path_factory):
    torch.manual_seed(0)
    if family == "siglip":
        tokdir = _siglip_tokenizer(tmp_path_factory.mktemp("siglip_tok"))
        return create_model("tiny-siglip", overrides={"tokenizer": tokdir, "text.vocab_size": 60})
    if family == "quickgelu":
        return create_model("tiny-vit", overrides=QUICK_GELU)
    return create_model({"vit": "tiny-vit", "resnet": "tiny-resnet"}[family])


@pytest.fixture(scope="module", params=["vit", "resnet", "siglip", "quickgelu"])
def family(request, tmp_path_factory):
    """(model, bundle folder, report): one dynamo export per preset family, int8 dynamic and fp16 included."""
    model = _family_model(request.param, tmp_path_factory)
    out = tmp_path_factory.mktemp(f"bundle_{request.param}") / "bundle"
    report = export_onnx(model, out, OnnxExportConfig(int8=("dynamic",), fp16=True))
    return model.eval(), out, report


def _images(model, batch, seed):
    height, width = model.preprocess_config.size_hw
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


CAPTIONS = ["a photo of a cat", "two dogs in the snow", "", "a red house " * 30, "diagram", "ein Foto", "?!"]


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_equals_eager(family, batch):
    model, out, report = family
    encoder = OnnxEncoder(out, variant="fp32", providers=["cpu"])
    images = _images(model, batch, seed=batch + 10)
    with torch.no_grad():
        eager_image = model.encode_image(images).numpy()
        tokens = encoder.tokenize(CAPTIONS[:batch])
        eager_text = model.encode_text(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(encoder.encode_image(images.numpy()), eager_image, atol=ATOL, rtol=0)
    np.testing.assert_allclose(encoder.encode_text(CAPTIONS[:batch]), eager_text, atol=ATOL, rtol=0)
    assert report.exporter == {"image": "dynamo", "text": "dynamo"}
    assert max(report.parity.values()) <= ATOL


def test_pil_images_are_preprocessed_as_torch_does(family):
    model, out, _ = family
    encoder = OnnxEncoder(out, providers="auto")
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((50, 70), (33, 20))]
    pictures.append(pictures[0].convert("RGBA"))
    transform = create_eval_transform(model.preprocess_config)
    with torch.no_grad():
        eager = model.encode_image(torch.stack([transform(p) for p in pictures]), normalize=True).numpy()
    np.testing.assert_allclose(encoder.encode_image(pictures, normalize=True), eager, atol=ATOL, rtol=0)


def test_int8_dynamic_stays_close_to_fp32(family):
    """The stated bound for random tiny weights: int8 features keep a cosine similarity of at least 0.93 to fp32
    (measured: ViT/ResNet above 0.99; SigLIP's attention pooling on noise images about 0.94). The benchmark reports
    full-size and trained models, where the held-out accuracy, not this bound, decides."""
    model, out, report = family
    info = report.variants["int8-dynamic"]
    assert info["image_cosine_min"] >= 0.93 and info["text_cosine_min"] >= 0.93
    int8 = OnnxEncoder(out, variant="int8-dynamic", providers=["cpu"])
    fp32 = OnnxEncoder(out, variant="fp32", providers=["cpu"])
    images = _images(model, 4, seed=3).numpy()
    a, b = int8.encode_image(images, normalize=True), fp32.encode_image(images, normalize=True)
    assert (a * b).sum(1).min() >= 0.93
    assert not np.array_equal(a, b)  # it really is another graph
    assert report.default_variant == "fp32"  # no held-out set: the int8 accuracy is unknown


def test_fp16_variant_halves_the_weights_and_keeps_the_features(family):
    model, out, report = family
    info = report.variants["fp16"]
    assert info["image_cosine_min"] >= 0.999 and info["text_cosine_min"] >= 0.999
    # weights halve; in the tiniest graphs (SigLIP's 60-token vocabulary) the graph structure keeps it near 0.62
    assert (out / "text.fp16.onnx").stat().st_size < 0.7 * (out / "text.onnx").stat().st_size
    encoder = OnnxEncoder(out, variant="fp16", providers=["cpu"])
    assert encoder.encode_text(["a cat"]).dtype == np.float32  # inputs and outputs stay float32


def test_manifest_describes_the_model(family):
    model, out, _ = family
    manifest = read_bundle(out).manifest
    assert manifest["embed_dim"] == model.config.embed_dim
    assert manifest["tokenizer"]["context_length"] == model.context_length
    assert manifest["preprocess"] == model.preprocess_config.to_open_clip()
    assert manifest["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))
    for variant in manifest["variants"].values():
        for graph in variant["graphs"].values():
            assert (out / graph["model"]["file"]).is_file() and len(graph["model"]["sha256"]) == 64
    assert [p.name for p in out.parent.iterdir()] == ["bundle"]  # no temporary folder left


def test_runtime_needs_no_torch(family, tmp_path):
    """The runtime is imported and run in a process where importing torch or torchvision fails."""
    model, out, _ = family
    images = _images(model, 2, seed=5)
    np.save(tmp_path / "images.npy", images.numpy())
    with torch.no_grad():
        np.save(tmp_path / "eager.npy", model.encode_image(images).numpy())
    script = f"""
import sys
sys.modules["torch"] = None; sys.modules["torchvision"] = None  # any import of them raises ImportError
import numpy as np
from PIL import Image
from clipforge.runtime import OnnxEncoder
enc = OnnxEncoder({str(out)!r})
got = enc.encode_image(np.load({str(tmp_path / 'images.npy')!r}))
assert np.abs(got - np.load({str(tmp_path / 'eager.npy')!r})).max() <= {ATOL}
assert enc.encode_text(["a cat", "a dog"]).shape == (2, enc.embed_dim)
assert enc.encode_image([Image.new("RGB", (40, 30))]).shape == (1, enc.embed_dim)
print("ok", "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ok", "False"]


def test_fixed_batch_torchscript_and_external_data(tmp_path):
    """--batch 4 with the TorchScript exporter, weights forced into external data: 7 inputs run as two padded
    chunks, and the data file is hashed like the graph."""
    model = create_model("tiny-vit").eval()
    out = tmp_path / "b4"
    report = export_onnx(model, out, OnnxExportConfig(batch=4, exporter="torchscript", external_data_bytes=1))
    assert report.exporter == {"image": "torchscript", "text": "torchscript"}
    graph = read_bundle(out).manifest["variants"]["fp32"]["graphs"]["image"]
    assert graph["batch"] == 4 and graph["external_data"][0]["file"] == "image.onnx.data"
    images = _images(model, 7, seed=1)
    with torch.no_grad():
        eager = model.encode_image(images).numpy()
    np.testing.assert_allclose(OnnxEncoder(out).encode_image(images.numpy()), eager, atol=ATOL, rtol=0)
    data = out / "image.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleError, match="image.onnx.data does not match the sha256"):
        OnnxEncoder(out)


def test_accuracy_judgement():
    """A variant that loses more than the tolerance on any held-out metric is kept but not the default."""
    report = ExportReport(out=None, exporter={}, parity={}, variants={"int8-dynamic": {}, "int8-static": {}},
                          accuracy={"fp32": {"d/acc1": 0.80, "c/image_retrieval_recall@5": 0.5},
                                    "int8-dynamic": {"d/acc1": 0.798, "c/image_retrieval_recall@5": 0.501},
                                    "int8-static": {"d/acc1": 0.79, "c/image_retrieval_recall@5": 0.5}})
    _judge(report, OnnxExportConfig(tolerance=0.5))
    assert report.variants["int8-dynamic"]["accepted"] and not report.variants["int8-static"]["accepted"]
    assert report.variants["int8-static"]["accuracy_change_points"]["d/acc1"] == pytest.approx(-1.0)
    assert report.default_variant == "int8-dynamic"
    assert any("int8-static loses 1.00 points of d/acc1" in n for n in report.notes)
    _judge(report, OnnxExportConfig(tolerance=0.1))
    assert report.default_variant == "fp32"


def _class_folder(root, classes=("red", "green", "blue"), per_class=4):
    colors = {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (20, 30, 220)}
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colors[name]) + rng.integers(-20, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_int8_static_with_calibration_and_holdout(tmp_path):
    calibration = _class_folder(tmp_path / "calib")
    holdout = _class_folder(tmp_path / "holdout")
    model = create_model("tiny-vit")
    report = export_onnx(model, tmp_path / "b", OnnxExportConfig(
        int8=("dynamic", "static"), calibration=str(calibration), holdout=(f"folder:{holdout}",), tolerance=100.0))
    manifest = read_bundle(tmp_path / "b").manifest
    assert set(manifest["variants"]) == {"fp32", "int8-dynamic", "int8-static"}
    assert manifest["variants"]["int8-static"]["calibration_images"] == 12
    assert set(report.accuracy) == {"fp32", "int8-dynamic", "int8-static"}
    assert any(k.endswith("/acc1") for k in report.accuracy["fp32"])
    assert report.variants["int8-static"]["accepted"] and manifest["default_variant"] == "int8-static"
    assert OnnxEncoder(tmp_path / "b").variant == "int8-static"


def test_damaged_bundles_are_refused_by_name(family, tmp_path):
    """A missing graph, an altered graph, a folder that is no bundle: one clear error each, naming the file."""
    import shutil

    _, out, _ = family
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "text.onnx").write_bytes((copy / "text.onnx").read_bytes()[:-1] + b"x")
    with pytest.raises(BundleError, match=r"text.onnx does not match the sha256 .* export the model again"):
        OnnxEncoder(copy)
    shutil.copyfile(out / "text.onnx", copy / "text.onnx")
    (copy / "image.int8.onnx").unlink()
    with pytest.raises(BundleError, match="image.int8.onnx is missing from the bundle"):
        read_bundle(copy)
    with pytest.raises(BundleError, match="holds no clipforge_onnx.json"):
        OnnxEncoder(tmp_path)
    with pytest.raises(BundleError, match="has no variant 'int4'"):
        OnnxEncoder(out, variant="int4")
    with pytest.raises(ValueError, match="execution provider 'cuda' is not available"):
        OnnxEncoder(out, providers=["cuda"])
    with pytest.raises(ValueError, match=r"must be preprocessed \(B, 3, "):
        OnnxEncoder(out).encode_image(np.zeros((2, 3, 5, 5), np.float32))


def test_an_architecture_that_cannot_export_says_why(tmp_path, monkeypatch):
    """Both exporters failing gives one error naming each exporter and its cause; nothing is left behind."""
    from clipforge.export import ExportFailed, graphs

    def refuse(name):
        def fail(spec, path, opset):
            raise RuntimeError(f"{name} cannot trace op aten::weird")
        return fail

    monkeypatch.setattr(graphs, "_export_dynamo", refuse("dynamo"))
    monkeypatch.setattr(graphs, "_export_torchscript", refuse("torchscript"))
    with pytest.raises(ExportFailed, match=r"image tower cannot be exported to ONNX: dynamo exporter failed "
                                           r"\(RuntimeError: dynamo cannot trace.*torchscript exporter failed"):
        export_onnx(create_model("tiny-vit"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_benchmark_takes_a_bundle_and_matches_the_torch_model(tmp_path, capsys):
    """``clipforge benchmark --model onnx:DIR[@VARIANT]``: the fp32 bundle scores what the torch model scores."""
    from clipforge.cli.main import main
    from clipforge.evaluation.benchmark import BenchmarkConfig, run_benchmark
    from clipforge.export.accuracy import ONNX_PREFIX, load_onnx_encoders
    from clipforge.models.factory import save_pretrained

    save_pretrained(create_model("tiny-vit"), tmp_path / "model")
    export_onnx(f"local-dir:{tmp_path / 'model'}", tmp_path / "bundle", OnnxExportConfig(int8=("dynamic",)))
    data = _class_folder(tmp_path / "holdout")
    config = BenchmarkConfig(tasks=("zeroshot_classification", "statistics"), datasets=(f"holdout=folder:{data}",),
                             num_workers=0)
    specs = [f"local-dir:{tmp_path / 'model'}", f"onnx:{tmp_path / 'bundle'}"]
    results = run_benchmark(specs, config, quiet=True, prefixed_loaders={ONNX_PREFIX: load_onnx_encoders})
    torch_result, onnx_result = (results[s] for s in specs)
    assert onnx_result["holdout/acc1"] == torch_result["holdout/acc1"]
    assert onnx_result["holdout/mean_per_class_recall"] == torch_result["holdout/mean_per_class_recall"]
    assert onnx_result["disk_usage_mb"] > 0
    code = main(["benchmark", "--model", f"onnx:{tmp_path / 'bundle'}@int8-dynamic", "--datasets", f"folder:{data}",
                 "--tasks", "zeroshot_classification", "--output", str(tmp_path / "out"), "--quiet"])
    assert code == 0 and "int8-dynamic" in capsys.readouterr().out
