"""PNG plots: training curves from hand-written metrics.jsonl files, the benchmark chart and ``clipforge plot``."""
import json
import math
import sys

import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from clipforge.cli.main import main  # noqa: E402
from clipforge.evaluation.charts import write_benchmark_chart  # noqa: E402
from clipforge.training.plots import plot_runs  # noqa: E402


def _write_run(folder, steps=40, lr=1e-3, with_eval=True, truncated=True):
    """A metrics.jsonl as the trainer writes it: step records, a note, a warning, evaluations, a cut last line."""
    folder.mkdir(parents=True)
    lines = [{"note": "resuming from step 0", "step": 0, "time": 0.0}]
    for step in range(1, steps + 1):
        lines.append({"step": step, "loss": 4.0 / step, "contrastive": 3.0 / step, "lr": lr * step / steps,
                      "logit_scale": 14.3 + step / 100, "samples_per_s": 100.0 + (step % 7), "time": 1e9 + step})
        if with_eval and step % 10 == 0:
            lines.append({"step": step, "eval/val/acc1": step / 50, "eval/val/acc5": math.nan,
                          "eval/val/image_retrieval_recall@5": step / 45, "eval/val/num_samples": 64,
                          "time": 1e9 + step})
    lines.insert(5, {"warning": "loss is not finite at step 4; skipped", "time": 1.0})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if truncated:
        text += '{"step": 41, "loss": 0.'  # a crash mid-write
    (folder / "metrics.jsonl").write_text(text)
    return folder


@pytest.fixture
def runs(tmp_path):
    return [_write_run(tmp_path / "a" / "run"), _write_run(tmp_path / "b" / "run", steps=30, lr=5e-4)]


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 1, f"{path.name} is blank"


def _no_temporaries(folder):
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix != ".png"]
    assert not leftovers, leftovers


def test_standard_figures_overlay_two_runs(runs, tmp_path):
    out = tmp_path / "plots"
    written = plot_runs(runs, out)
    assert [p.name for p in written] == ["loss.png", "lr.png", "throughput.png", "eval.png"]
    for path in written:
        assert path.parent == out
        _assert_png(path)
    _no_temporaries(out)


def test_single_run_and_group_without_data_is_skipped(tmp_path):
    run = _write_run(tmp_path / "solo", with_eval=False, truncated=False)
    written = plot_runs([str(run)], tmp_path / "out")
    assert sorted(p.name for p in written) == ["loss.png", "lr.png", "throughput.png"]


def test_metrics_filter(runs, tmp_path):
    out = tmp_path / "some"
    written = plot_runs(runs, out, metrics=["logit_scale", "eval/val/image_retrieval_recall@5", "logit_scale"])
    assert [p.name for p in written] == ["logit_scale.png", "eval_val_image_retrieval_recall_5.png"]
    for path in written:
        _assert_png(path)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)


def test_missing_metrics_file_is_named(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no metrics\.jsonl"):
        plot_runs([runs[0], tmp_path / "empty"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_without_plottable_records_is_named(runs, tmp_path):
    notes = tmp_path / "notes_only"
    notes.mkdir()
    (notes / "metrics.jsonl").write_text(json.dumps({"note": "started", "step": 0}) + "\n"
                                         + json.dumps({"warning": "slow disk"}) + "\n" + '{"step": 3, "lo')
    with pytest.raises(ValueError, match=r"no plottable step records.*notes_only"):
        plot_runs([runs[0], notes], tmp_path / "out")


def test_unknown_metric_lists_available_keys(runs, tmp_path):
    with pytest.raises(ValueError, match=r"unknown metric key\(s\) los\b.*available: .*eval/val/acc1.*loss"):
        plot_runs(runs, tmp_path / "out", metrics=["loss", "los"])
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_nan_only_metric_is_not_available(runs, tmp_path):
    with pytest.raises(ValueError, match="unknown metric key.*eval/val/acc5"):
        plot_runs(runs, tmp_path / "out", metrics=["eval/val/acc5"])


def test_missing_matplotlib_gives_install_hint(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'clipforge\[plot\]'"):
        plot_runs(runs, tmp_path / "out")


def test_cli_plot(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["plot", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in printed] == ["loss.png", "lr.png", "throughput.png", "eval.png"]
    _no_temporaries(out)
    assert main(["plot", str(runs[0]), "--metrics", "lr"]) == 0  # default --out: <first run>/plots
    assert (runs[0] / "plots" / "lr.png").is_file()


def test_cli_plot_bad_run_is_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("clipforge plot: error:") and "nope" in err
    assert not (tmp_path / "nope").exists()


BENCHMARK = {
    "ViT-B-32::openai": {"cifar10/acc1": 0.89, "cifar10/acc5": 0.99, "cifar10/num_samples": 10000,
                         "voc2007_multilabel/mean_average_precision": 0.78,
                         "mscoco_captions/image_retrieval_recall@5": 0.55,
                         "mscoco_captions/text_retrieval_recall@5": 0.74, "peak_ram_gb": 3.1},
    "local-dir:/tmp/mine": {"cifar10/acc1": math.nan, "voc2007_multilabel/mean_average_precision": "error",
                            "mscoco_captions/image_retrieval_recall@5": 0.31,
                            "mscoco_captions/text_retrieval_recall@5": 0.42, "vtab/cifar100/acc1": 0.6},
}


def test_benchmark_chart(tmp_path):
    path = write_benchmark_chart(BENCHMARK, tmp_path / "bench")
    assert path == tmp_path / "bench" / "benchmark.png"
    _assert_png(path)
    _no_temporaries(path.parent)


def test_benchmark_chart_retrieval_only(tmp_path):
    only = {m: {k: v for k, v in r.items() if "retrieval" in k} for m, r in BENCHMARK.items()}
    _assert_png(write_benchmark_chart(only, tmp_path))


def test_benchmark_chart_nothing_to_chart(tmp_path):
    results = {"ViT-B-32": {"cifar10/num_samples": 10, "cifar10/acc1": math.nan, "peak_ram_gb": 1.0,
                            "mscoco_captions/image_retrieval_recall@1": 0.2, "flickr30k/text_retrieval_recall@5": "x"}}
    assert write_benchmark_chart(results, tmp_path / "bench") is None
    assert write_benchmark_chart({}, tmp_path / "bench") is None
    assert not (tmp_path / "bench").exists()
