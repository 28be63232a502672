"""The `clipforge` command: each verb runs in-process, bad input gives one clear line and exit code 2."""
import json

import pytest
import torch

from clipforge.cli.main import main


def test_help_lists_verbs(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for verb in ("models", "info", "train", "benchmark", "quickstart"):
        assert verb in out


def test_unknown_verb(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_models_table(capsys):
    assert main(["models", "ViT-B-32"]) == 0
    out = capsys.readouterr().out
    assert "laion2b_s34b_b79k" in out and "ViT-B-32" in out
    assert main(["models", "--arch", "RN50"]) == 0
    assert "quick_gelu" in capsys.readouterr().out


def test_info(capsys):
    assert main(["info", "ViT-B-32::laion2b_s34b_b79k"]) == 0
    out = capsys.readouterr().out
    assert "151.28 M" in out and "GFLOPs per image" in out and "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in out


@pytest.mark.parametrize("argv, needle", [
    (["info", "ViT-B-33"], "Closest: ViT-B-32"),
    (["info", "ViT-B-32::nope"], "Its tags: openai"),
    (["train", "--set", "optim.lrr=1"], "Did you mean: lr"),
    (["train", "--set", "data.batch_size=abc"], "data.batch_size"),
    (["train", "--config", "missing.py"], "not found"),
])
def test_bad_input_is_one_clear_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_train_print_config(capsys):
    assert main(["train", "--config", "configs/clip_vit_b32.py:tiny", "--set", "optim.lr=3e-4",
                 "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["name"] == "tiny-vit" and cfg["data"]["kind"] == "synthetic"


@pytest.mark.parametrize("recipe", ["configs/clip_vit_b32.py:tiny", "configs/siglip_vit_b16.py:tiny"])
def test_recipes_run_tiny(tmp_path, capsys, recipe):
    assert main(["train", "--config", recipe, "--workdir", str(tmp_path), "--set", "log.progress=false"]) == 0
    assert "done: 6 steps" in capsys.readouterr().out
    assert (tmp_path / "config.json").exists() and len(list((tmp_path / "checkpoints").iterdir())) == 2


def test_quickstart_tiny(tmp_path, capsys):
    """The README's main job in miniature: data, training, held-out table, checkpoint."""
    argv = ["quickstart", "--workdir", str(tmp_path), "--steps", "4", "--train-size", "64", "--val-size", "32",
            "--batch-size", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "zero-shot top-1 accuracy" in out and "image->text recall@1" in out
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000004.pt"
    assert checkpoint.exists()
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["run_state"]["step"] == 4 and "visual.conv1.weight" in payload["state_dict"]
