"""Every command-line verb on a table of bad inputs: a non-zero exit, one line on stderr that names the problem, no
traceback, and nothing half-written. Plus the bad inputs that must be skipped and counted rather than fatal."""
import json
import subprocess
import sys
import tarfile

import pytest
import torch
from safetensors.torch import save_file

from cli_checks import one_line_failures
from clipforge.cli.main import main
from clipforge.models.factory import create_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files of every kind, made once."""
    root = tmp_path_factory.mktemp("bad")
    model = create_model("tiny-vit")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors"))
    data = (root / "w.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 3])
    (root / "not_weights.txt").write_text("hello")
    (root / "latin1.tsv").write_bytes("filepath\ttitle\nimg.png\tcaf\xe9\n".encode("latin-1"))
    (root / "empty_run").mkdir()
    (root / "a_file").write_text("x")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("user data")
    (root / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, root / "run" / "checkpoints" / "step_00000001.pt")
    return root


def _cases(f):
    """(argv, words the error line must contain, paths that must not exist afterwards)."""
    out = f / "out"
    return [
        (["models", "--arch", "ViT-B-99"], "no pretrained weights", []),
        (["info", "ViT-B-33"], "Closest: ViT-B-32", []),
        (["info", f"local-dir:{f / 'nope'}"], "not found", []),
        (["info", str(f / "not_weights.txt")], "not_weights.txt", []),
        (["train", "--config", str(f / "missing.py")], "not found", []),
        (["train", "--workdir", str(out), "--set", "optim.lr=-1"], "optim.lr must be positive", [out]),
        (["train", "--workdir", str(out), "--set", "optim.accum_steps=0"], "optim.accum_steps must be >= 1", [out]),
        (["train", "--workdir", str(out), "--set", "schedule.steps=10", "schedule.warmup_steps=50"],
         "schedule.warmup_steps=50", [out]),
        (["train", "--workdir", str(out), "--set", "data.kind='csv'", f"data.train='{f / 'nope.tsv'}'"],
         "nope.tsv", [out]),
        (["train", "--workdir", str(out), "--set", "data.kind='csv'", f"data.train='{f / 'latin1.tsv'}'"],
         "latin1.tsv: no row is UTF-8 text (first bad row: line 2)", [out]),
        (["train", "--workdir", str(out), "--set", "data.kind='synthetic'", "data.num_samples=16",
          "eval.datasets=('wds:/nonexistent/val.tar',)"], "do not exist", [out]),
        (["train", "--workdir", str(out), "--set", "threads=0"], "threads must be", [out]),
        (["export-model", str(f / "nope"), "--out", str(out)], "does not exist", [out]),
        (["export-model", str(f / "empty_run"), "--out", str(out)], "neither a run folder", [out]),
        (["export-model", str(f / "empty_run"), "--out", str(f / "full")], "already exists and is not empty", []),
        (["export-model", str(f / "run"), "--out", str(f), "--force"], "a folder holding it", []),
        (["benchmark", "--output", str(out)], "give at least one --model", [out]),
        (["benchmark", "--model", "tiny-vit", "--datasets", "cifar11", "--output", str(out)],
         "unknown dataset 'cifar11'", [out]),
        (["benchmark", "--model", f"tiny-vit::{f / 'truncated.safetensors'}", "--datasets", "cifar10", "--output",
          str(out)], "truncated or corrupt", [out]),
        (["benchmark", "--model", "tiny-vit", "--set", "precision='fp8'", "--output", str(out)],
         "unknown precision 'fp8'", [out]),
        (["benchmark", "--model", "tiny-vit", "--set", "ties='random'", "--output", str(out)],
         "'random' is not one of ['reference', 'pessimistic']", [out]),
        (["export", "ViT-B-99", "--out", str(out)], "ViT-B-99", [out]),
        (["export", "tiny-vit", "--out", str(f / "full")], "already exists and is not empty", []),
        (["export", "tiny-vit", "--out", str(f / "a_file" / "bundle")], "is a file, not a folder", []),
        (["export", "tiny-vit", "--out", str(out), "--int8", "static"], "needs calibration images", [out]),
        (["export", "tiny-vit", "--out", str(out), "--opset", "3"], "opset must be between 9 and 23", [out]),
        (["export", "tiny-vit", "--out", str(out), "--int8", "static", "--calibration", str(f / "nope")],
         "calibration folder", [out]),
        (["benchmark", "--model", f"onnx:{f / 'nope'}", "--datasets", "cifar10", "--output", str(out)],
         "is not a folder: pass the folder clipforge export wrote", [out]),
        (["benchmark", "--model", f"onnx:{f / 'full'}", "--datasets", "cifar10", "--output", str(out)],
         "holds no clipforge_onnx.json", [out]),
        (["plot", str(f / "nope")], "nope", []),
        (["quickstart", "--workdir", str(out), "--steps", "0"], "--steps must be >= 1", [out]),
    ]


def test_every_verb_gives_one_clear_line(files, capsys):
    failures = one_line_failures(_cases(files), capsys)
    assert not failures, "\n".join(failures)
    assert (files / "full" / "keep.txt").read_text() == "user data"
    assert not list(files.rglob("*.partial"))


def test_the_truncated_weights_message_fits_the_cause(files, capsys):
    """Once every load failure ended with advice about model names, even a truncated download."""
    main(["benchmark", "--model", f"tiny-vit::{files / 'truncated.safetensors'}", "--datasets", "cifar10",
          "--output", str(files / "out")])
    err = capsys.readouterr().err
    assert "download it again" in err and "clipforge models" not in err


def test_a_real_process_exits_with_status_2_and_no_traceback(files):
    result = subprocess.run([sys.executable, "-m", "clipforge", "info", "ViT-B-33"], capture_output=True, text=True)
    assert result.returncode == 2 and "Closest: ViT-B-32" in result.stderr and "Traceback" not in result.stderr
    debug = subprocess.run([sys.executable, "-m", "clipforge", "info", "ViT-B-33", "--debug"], capture_output=True,
                           text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_bug_is_one_line_without_debug(monkeypatch, capsys):
    from clipforge.cli import info

    def broken(args):
        raise TypeError("something internal")

    monkeypatch.setattr(info, "run", broken)
    assert main(["info", "tiny-vit"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: TypeError: something internal" in err and "--debug" in err


# ------------------------------------------------------------------------ skipped and counted, never fatal


def test_non_utf8_caption_rows_are_skipped_and_counted(tmp_path):
    from clipforge.training.data.indexed import load_csv
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "t.tsv").write_bytes(b"filepath\ttitle\na.png\tgood caption\na.png\tcaf\xe9 latin-1\na.png\tok\n")
    table = load_csv([str(tmp_path / "t.tsv")], None, "filepath", "title")
    assert table.captions == ("good caption", "ok") and table.missing_captions == 1


def test_a_truncated_shard_in_the_benchmark_is_counted(tmp_path):
    """`clipforge benchmark wds:` on a truncated shard crashed with tarfile.ReadError; training handled it."""
    from clipforge.evaluation.datasets import load_dataset
    from clipforge.training import shapes
    info = shapes.generate_shapes_dataset(tmp_path, n_train=1, n_val=40, shard_size=20)
    shard = tmp_path / "val-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    loaded = load_dataset(f"wds:{info['val']}")
    assert 20 <= len(loaded.dataset) < 40 and loaded.shard_errors == 1
    readable = [loaded.dataset[i] for i in range(len(loaded.dataset))]  # the cut image is skipped, not raised
    assert sum(item is None for item in readable) <= 1 and sum(item is not None for item in readable) >= 20


def test_an_image_cut_by_a_truncated_shard_is_skipped(tmp_path):
    import io
    from PIL import Image
    from clipforge.evaluation.datasets import load_dataset
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for i in range(3):
            buffer = io.BytesIO()
            Image.new("RGB", (64, 64), (i * 60, 0, 0)).save(buffer, format="PNG")
            for ext, data in (("cls", b"0"), ("png", buffer.getvalue())):
                info = tarfile.TarInfo(f"{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "s.tar").write_bytes(data[: data.rfind(b"IEND") - 40])  # inside the last image's bytes
    (tmp_path / "classnames.txt").write_text("red\n")
    loaded = load_dataset(f"wds:{tmp_path / 's.tar'}")
    items = [loaded.dataset[i] for i in range(len(loaded.dataset))]
    assert items[-1] is None and all(item is not None for item in items[:-1])


def test_a_state_dict_saved_with_an_argparse_namespace_loads(tmp_path, caplog):
    """Many training scripts save {"state_dict": ..., "args": Namespace(...)}; weights_only refuses the
    Namespace. The weights are read, the Namespace ignored with a note."""
    import argparse
    import logging
    model = create_model("tiny-vit")
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": 3},
               tmp_path / "ckpt.pt")
    with caplog.at_level(logging.WARNING, logger="clipforge"):
        again = create_model("tiny-vit", pretrained=str(tmp_path / "ckpt.pt"))
    assert torch.equal(again.state_dict()["visual.proj.weight"], model.state_dict()["visual.proj.weight"])
    assert any("'args' (argparse.Namespace)" in r.getMessage() for r in caplog.records)


def test_models_and_info_accept_every_name(capsys, tmp_path):
    from clipforge.models.factory import save_pretrained
    assert main(["models", "quickgelu"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-32-quickgelu" in out and "openai" in out
    assert main(["models"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    from clipforge.models.weights import list_pretrained
    assert f"{len(list_pretrained())} (architecture, tag) pairs" in last  # open_clip's count (101)
    assert main(["models", "tiny-resnet"]) == 0
    assert "1 architecture name (0 with pretrained weights), 0 (architecture, tag) pairs" in \
        capsys.readouterr().out.strip().splitlines()[-1]
    save_pretrained(create_model("tiny-vit", image_size=48), tmp_path / "m")
    assert main(["info", f"local-dir:{tmp_path / 'm'}"]) == 0
    out = capsys.readouterr().out
    assert "image size        48" in out and "directory" in out
    assert json.loads((tmp_path / "m" / "open_clip_config.json").read_text())["clipforge"]["arch"] == "tiny-vit"
    assert not tarfile.is_tarfile(tmp_path / "m" / "open_clip_config.json")
