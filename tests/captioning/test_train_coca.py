"""`clipforge train` with a CoCa model and loss.kind=coca: the run trains, logs both loss parts, and exports a model
folder that captions."""
import json

import pytest

import torch

from clipforge.captioning import generate
from clipforge.config import apply_overrides
from clipforge.models.coca import CoCa
from clipforge.models.factory import create_model
from clipforge.training.config import TrainConfig
from clipforge.training.loop import train


def test_train_loop_runs_coca(tmp_path):
    cfg = apply_overrides(TrainConfig(), {
        "workdir": str(tmp_path / "run"), "model.name": "tiny-coca", "loss.kind": "coca", "data.kind": "synthetic",
        "data.num_samples": 32, "data.batch_size": 8, "schedule.steps": 4, "schedule.warmup_steps": 1,
        "checkpoint.every_steps": 4, "log.every_steps": 1, "log.progress": False, "optim.lr": 1e-3})
    result = train(cfg)
    assert result.steps == 4
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    logged = [r for r in rows if "loss" in r]
    assert logged and all("caption" in r and "contrastive" in r for r in logged)
    model = create_model(f"local-dir:{tmp_path / 'run' / 'model'}")
    assert isinstance(model, CoCa)
    assert len(generate(model, torch.randn(2, 3, 32, 32), method="greedy", max_length=8)) == 2


@pytest.mark.parametrize("over, message", [
    ({"model.name": "tiny-vit"}, "has none: use a CoCa architecture"),
    ({"optim.accum_steps": 2}, "no gradient-cached form"),
])
def test_coca_loss_misconfigurations_fail_before_the_run_folder(tmp_path, over, message):
    from clipforge.config import ConfigError

    cfg = apply_overrides(TrainConfig(), {"workdir": str(tmp_path / "r"), "model.name": "tiny-coca",
                                          "loss.kind": "coca", "data.kind": "synthetic", "data.num_samples": 16,
                                          "data.batch_size": 8, **over})
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "r").exists()


def test_a_contrastive_loss_on_a_coca_freezes_the_decoder(tmp_path):
    """Only loss.kind=coca trains the decoder; with another loss it is frozen (DDP needs every trainable parameter
    to get a gradient) and comes out of the run unchanged."""
    cfg = apply_overrides(TrainConfig(), {"workdir": str(tmp_path / "r"), "model.name": "tiny-coca",
                                          "loss.kind": "clip", "data.kind": "synthetic", "data.num_samples": 16,
                                          "data.batch_size": 8, "schedule.steps": 2, "schedule.warmup_steps": 1,
                                          "log.progress": False, "optim.lr": 1e-2})
    result = train(cfg)
    torch.manual_seed(cfg.seed)  # the run's own initialisation
    initial = create_model("tiny-coca")
    trained = create_model(f"local-dir:{result.model_dir}")
    for key, value in trained.decoder.state_dict().items():
        assert torch.equal(value, initial.decoder.state_dict()[key]), key
    assert not torch.equal(trained.visual.proj.weight, initial.visual.proj.weight)  # the towers did train


def test_coca_image_groups_end_with_pool_norm_and_projection():
    visual = create_model("tiny-coca").visual
    assert visual.param_groups()[-1] == [visual.attn_pool, visual.norm, visual.proj]
