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
