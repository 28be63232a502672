"""The benchmark runner end to end on generated data, the feature cache, tables, statistics, linear probe, CLI."""
import argparse
import csv
import dataclasses
import io
import json
import os

import pytest
import torch
import torch.nn.functional as F

from clipforge.evaluation import tables
from clipforge.models.factory import ModelLoadError
from clipforge.evaluation.benchmark import (BenchmarkConfig, evaluate, load_model_encoders,
                                            run_benchmark)
from clipforge.evaluation.datasets import load_dataset
from clipforge.evaluation.features import EncodedImages
from clipforge.evaluation.linear_probe import probe_features
from clipforge.evaluation.stats import disk_usage_mb, resource_usage
from eval_fixtures import make_captions, make_cifar, make_imagefolder, make_voc


def _counting(encoders):
    calls = {"images": 0}
    encode = encoders.encode_image

    def counted(images):
        calls["images"] += len(images)
        return encode(images)

    return dataclasses.replace(encoders, encode_image=counted), calls


def test_run_benchmark_writes_seed_tables_and_caches_features(tmp_path, encoders):
    make_cifar(tmp_path / "cifar10", n_per_class=2)
    make_captions(tmp_path / "flickr8k", n_images=6)
    make_voc(tmp_path / "voc2007")
    counted, calls = _counting(encoders)
    config = BenchmarkConfig(datasets=("cifar10", "flickr8k", "voc2007", "voc2007_multilabel"),
                             data_root=str(tmp_path), num_workers=0, batch_size=8, cache_dir=str(tmp_path / "cache"))
    results = run_benchmark(["tiny::a", "tiny::b"], config, quiet=True, loader=lambda spec, device, precision: counted)
    assert list(results) == ["tiny::a", "tiny::b"]
    first = results["tiny::a"]
    assert {"cifar10/acc1", "cifar10/acc5", "flickr8k/image_retrieval_recall@5", "flickr8k/text_retrieval_recall@10",
            "voc2007/mean_per_class_recall", "voc2007_multilabel/mean_average_precision"} <= set(first)
    # the second "model" has the same id and transform: its image features come from the cache
    assert calls["images"] == 20 + 6 + 9 + 5
    assert results["tiny::b"] == first
    paths = tables.write_tables(results, str(tmp_path / "out"))
    grid = open(paths["benchmark.md"]).read()
    assert "| Model" in grid and "Flickr 8k" in grid and "| model_fullname" in grid and "| tiny::a" in grid and "(recall@5)" in grid
    rows = list(csv.DictReader(io.StringIO(open(paths["retrieval.csv"]).read())))
    assert len(rows) == 2 and float(rows[0]["Flickr 8k Image"]) == pytest.approx(
        first["flickr8k/image_retrieval_recall@5"], abs=5e-4)
    assert json.load(open(paths["results.json"]))["tiny::a"]["cifar10/acc1"] == first["cifar10/acc1"]


def test_evaluate_hook_returns_flat_metrics(tmp_path, encoders):
    make_imagefolder(tmp_path / "mine", n_per_class=2)
    loaded = load_dataset(f"folder:{tmp_path / 'mine'}", "", transform=encoders.transform)
    metrics = evaluate(encoders, [loaded], BenchmarkConfig(num_workers=0))
    name = f"folder:{tmp_path / 'mine'}"
    assert set(metrics) == {f"{name}/{k}" for k in ("acc1", "acc5", "mean_per_class_recall", "num_samples",
                                                   "num_skipped")}
    assert all(isinstance(v, (int, float)) for v in metrics.values())


def test_skipped_samples_are_reported_next_to_the_metric(tmp_path, encoders):
    make_captions(tmp_path / "flickr8k", n_images=4, broken=2)
    config = BenchmarkConfig(tasks=("zeroshot_retrieval",), datasets=("flickr8k",), data_root=str(tmp_path),
                             num_workers=0)
    results = run_benchmark(["tiny"], config, quiet=True, loader=lambda *a: encoders)
    assert results["tiny"]["flickr8k/num_skipped"] == 2 and results["tiny"]["flickr8k/num_samples"] == 4
    paths = tables.write_tables(results, str(tmp_path / "out"))
    assert "tiny on Flickr 8k: 2 sample(s) skipped (failed to decode), metrics over 4 samples" in open(
        paths["benchmark.md"]).read()


def test_missing_datasets_are_reported_together_before_any_encoding(tmp_path, encoders):
    counted, calls = _counting(encoders)
    make_cifar(tmp_path / "cifar10", n_per_class=1)
    config = BenchmarkConfig(datasets=("cifar10", "flickr30k", "vtab/dtd"), data_root=str(tmp_path), num_workers=0)
    with pytest.raises(FileNotFoundError, match="(?s)2 dataset.*flickr30k.*vtab/dtd"):
        run_benchmark(["tiny"], config, quiet=True, loader=lambda *a: counted)
    assert calls["images"] == 0


def test_model_that_cannot_be_loaded_is_a_clear_error():
    with pytest.raises(ValueError, match="no-such-arch"):
        load_model_encoders("no-such-arch::x")
    with pytest.raises(ModelLoadError, match="ARCH::TAG"):
        load_model_encoders("ViT-B-32::")
    with pytest.raises(ValueError, match="unknown task"):
        BenchmarkConfig(tasks=("zeroshot",))
    with pytest.raises(KeyError, match="no shipped template set 'imagenet_selected'"):
        BenchmarkConfig(templates="imagenet_selected")
    assert len(BenchmarkConfig(templates="imagenet1k_selected").templates) > 0


def test_cli_verb_parses_and_reports_bad_model(tmp_path):
    from clipforge.cli import benchmark as verb
    parser = argparse.ArgumentParser()
    verb.add_arguments(parser)
    args = parser.parse_args(["--model", "no-such-arch", "--datasets", "cifar10", "--data-root", str(tmp_path),
                              "--output", str(tmp_path / "out"), "--set", "batch_size=4", "--quiet"])
    with pytest.raises(ValueError, match="unknown model 'no-such-arch'"):
        verb.run(args)


def test_resource_usage_sees_allocations_and_file_size(tmp_path, encoders):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\0" * (3 * 1024 * 1024))
    held = []

    def load():
        held.append(torch.ones(64 * 1024 * 1024 // 4))  # 64 MiB, touched, so it is resident
        return dataclasses.replace(encoders, weights_path=str(weights))

    stats = resource_usage(load)
    assert stats["disk_usage_mb"] == pytest.approx(3.0)
    assert stats["peak_ram_gb"] >= 60 / 1024 and stats["peak_vram_gb"] == "n/a"
    assert disk_usage_mb(str(tmp_path)) == pytest.approx(3.0) and disk_usage_mb(None) is None


def test_disk_usage_of_a_sharded_checkpoint_counts_its_shards(tmp_path):
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (tmp_path / name).write_bytes(b"\0" * (1024 * 1024))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "model-00002-of-00002.safetensors",
                                                "c": "model-00002-of-00002.safetensors"}}))
    assert disk_usage_mb(str(index)) == pytest.approx(2.0 + index.stat().st_size / 2**20)


def test_linear_probe_on_separable_features_picks_weight_decay():
    torch.manual_seed(0)
    centers = F.normalize(torch.randn(4, 16), dim=-1)

    def sample(n):
        labels = torch.arange(4).repeat(n)
        return EncodedImages(F.normalize(centers[labels] + 0.1 * torch.randn(len(labels), 16), dim=-1), labels)

    metrics = probe_features(sample(10), sample(5), 4, weight_decays=(1e-4, 1e-2))
    assert metrics["acc1"] == 1.0 and metrics["mean_per_class_recall"] == 1.0
    assert metrics["weight_decay"] in (1e-4, 1e-2) and metrics["num_samples"] == 20
    # labels that carry no information: the probe cannot beat chance by much on fresh samples
    noise = probe_features(EncodedImages(torch.randn(80, 16), torch.randint(0, 4, (80,))),
                           EncodedImages(torch.randn(400, 16), torch.randint(0, 4, (400,))), 4)
    assert noise["acc1"] < 0.4


def test_grid_table_lines_align_and_best_is_bold():
    results = {"A::x": {"peak_ram_gb": 1.0, "disk_usage_mb": 10, "peak_vram_gb": "n/a",
                        "mscoco_captions/image_retrieval_recall@5": 0.5, "mscoco_captions/text_retrieval_recall@5": 0.7,
                        "vtab/cifar10/acc1": 0.9},
               "B::y": {"peak_ram_gb": 2.0, "disk_usage_mb": 20, "peak_vram_gb": 1.5,
                        "mscoco_captions/image_retrieval_recall@5": 0.6, "mscoco_captions/text_retrieval_recall@5": 0.6,
                        "vtab/cifar10/acc1": 0.8}}
    built = {t.name: t for t in tables.build_tables(results)}
    grid = tables.render_grid(built["retrieval"]).splitlines()
    assert len({len(line) for line in grid}) == 1  # every line of the grid has the same width
    assert grid[1].startswith("| Model") and "COCO Caption" in grid[1] and set(grid[4]) == {"+", "="}
    assert built["retrieval"].rows[1][1] == "**0.600**" and built["retrieval"].rows[0][2] == "**0.700**"
    # every table names the models the same way
    assert built["classification"].rows == [["A::x", "**0.900**"], ["B::y", "0.800"]]
    assert [row[0] for row in built["statistics"].rows] == [row[0] for row in built["retrieval"].rows] == ["A::x",
                                                                                                      "B::y"]
    assert built["statistics"].rows[0][3] == "n/a"
    assert built["retrieval"].title == "Zero-shot retrieval (recall@5)"


def test_linear_probe_results_have_a_table():
    results = {"A::x": {"vtab/cifar10/acc1": 0.5, "vtab/cifar10/linear_probe_acc1": 0.8},
               "B::y": {"vtab/cifar10/acc1": 0.4, "vtab/cifar10/linear_probe_acc1": 0.7}}
    built = {t.name: t for t in tables.build_tables(results)}
    assert built["linear_probe"].rows == [["A::x", "**0.800**"], ["B::y", "0.700"]]
    assert built["classification"].rows[0][1] == "**0.500**"


def test_statistics_of_each_model_are_measured_in_its_own_process():
    """Peak RAM of the second model of a run once read 0.00 GB: the first had already grown the process."""
    from clipforge.evaluation.benchmark import isolated_resource_usage
    first, second = isolated_resource_usage("tiny-vit"), isolated_resource_usage("tiny-resnet")
    assert first["peak_ram_gb"] > 0.001 and second["peak_ram_gb"] > 0.001
    assert first["peak_vram_gb"] == "n/a"


def test_cli_verb_end_to_end_with_a_stand_in_model(tmp_path, encoders, monkeypatch, capsys):
    from clipforge.cli import benchmark as verb
    from clipforge.evaluation import benchmark as bench
    monkeypatch.setattr(bench, "load_model_encoders", lambda spec, device, precision: encoders)
    make_captions(tmp_path / "data" / "flickr8k", n_images=4)
    make_cifar(tmp_path / "data" / "vtab_cifar10", n_per_class=1)
    parser = argparse.ArgumentParser()
    verb.add_arguments(parser)
    args = parser.parse_args(["--model", "tiny::one", "--datasets", "flickr8k", "vtab/cifar10", "--tasks",
                              "zeroshot_retrieval", "zeroshot_classification", "--data-root", str(tmp_path / "data"),
                              "--output", str(tmp_path / "out"), "--device", "cpu", "--set", "num_workers=0",
                              "--quiet"])
    assert verb.run(args) == 0
    printed = capsys.readouterr().out
    assert "Zero-shot retrieval (recall@5)" in printed and "| tiny::one" in printed and "vtab/cifar10" in printed
    assert sorted(os.listdir(tmp_path / "out")) == ["benchmark.md", "benchmark.png", "benchmark_github.md",
                                                    "classification.csv", "results.json", "retrieval.csv"]


def test_amp_bf16_on_cpu_runs_and_stays_close(tmp_path, tiny):
    from clipforge.evaluation.benchmark import make_encoders
    from eval_fixtures import transform
    model, tokenizer = tiny
    fp32 = make_encoders(model, tokenizer, transform(), "a")
    amp = make_encoders(model, tokenizer, transform(), "b", precision="amp_bf16")
    images, tokens = torch.rand(4, 3, 32, 32), tokenizer(["a cat", "a dog"])
    for encode in ("encode_image", "encode_text"):
        x = images if encode == "encode_image" else tokens
        low, high = getattr(amp, encode)(x), getattr(fp32, encode)(x)
        assert low.dtype == torch.bfloat16 and high.dtype == torch.float32
        assert F.cosine_similarity(low.float(), high, dim=-1).min() > 0.99
    make_imagefolder(tmp_path, n_per_class=2)
    loaded = load_dataset(f"folder:{tmp_path}", "", transform=transform())
    metrics = evaluate(amp, [loaded], BenchmarkConfig(num_workers=0))
    assert 0.0 <= metrics[f"folder:{tmp_path}/acc1"] <= 1.0


def test_logistic_probe_matches_sklearn_objective():
    """Same objective as sklearn's multinomial LogisticRegression with C = 1 / (weight_decay * N)."""
    from sklearn.linear_model import LogisticRegression

    from clipforge.evaluation.linear_probe import fit_logistic
    torch.manual_seed(0)
    x = torch.randn(150, 6, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(150, dtype=torch.float64) > 0).long() + (x[:, 1] > 0.5).long()
    wd = 1e-2
    probe = fit_logistic(x.float(), y, 3, wd, max_iter=500)
    reference = LogisticRegression(C=1 / (wd * len(x)), tol=1e-10, max_iter=5000).fit(x.numpy(), y.numpy())
    with torch.no_grad():
        ours = probe(x.float()).softmax(dim=-1)
    theirs = torch.from_numpy(reference.predict_proba(x.numpy())).float()
    assert (ours - theirs).abs().max() < 2e-3


def test_progress_lines_and_nan_in_json(tmp_path):
    from clipforge.progress import progress
    stream = io.StringIO()
    with progress(total=10, desc="m cifar10/test", unit="img", every=3600, stream=stream) as bar:
        bar.update(4)  # throttled: not a terminal, lines every hour
        bar.update(6)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("m cifar10/test: 10/10 img (")  # the final line
    paths = tables.write_tables({"m": {"voc2007/acc1": 0.5, "voc2007/acc5": float("nan")}}, str(tmp_path))
    assert json.load(open(paths["results.json"]))["m"]["voc2007/acc5"] is None
