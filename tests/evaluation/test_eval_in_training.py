"""SugarCrepe (image-caption selection) as a training evaluation: the number logged for the final model is the one
``clipforge.evaluation`` gives for that model."""
import json
import math

import pytest

from clipforge.config import ConfigError, apply_overrides
from clipforge.evaluation.benchmark import BenchmarkConfig, evaluate, load_datasets, make_encoders
from clipforge.models.factory import create_model, get_tokenizer
from clipforge.training.config import EvalConfig, TrainConfig
from clipforge.training.loop import train
from clipforge.transforms import create_eval_transform
from benchmark_set_fixtures import make_sugar_crepe


def test_sugar_crepe_is_scored_during_training(tmp_path):
    make_sugar_crepe(str(tmp_path / "data" / "sugar_crepe"), "replace_rel", 6)
    over = {"workdir": str(tmp_path / "run"), "model.name": "tiny-vit", "data.kind": "synthetic",
            "data.num_samples": 16, "data.batch_size": 8, "schedule.steps": 2, "schedule.warmup_steps": 1,
            "checkpoint.every_steps": 0, "log.progress": False, "eval.datasets": ["sugar_crepe/replace_rel"],
            "eval.data_root": str(tmp_path / "data")}
    result = train(apply_overrides(TrainConfig(), over))
    logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    final = [row for row in logged if "eval/sugar_crepe/replace_rel/acc" in row][-1]
    assert 0 <= final["eval/sugar_crepe/replace_rel/acc"] <= 1
    assert result.metrics["sugar_crepe/replace_rel/acc"] == final["eval/sugar_crepe/replace_rel/acc"]

    model = create_model(f"tiny-vit::{result.checkpoint}").eval()
    config = BenchmarkConfig(datasets=("sugar_crepe/replace_rel",), data_root=str(tmp_path / "data"),
                             num_workers=0, tasks=("image_caption_selection",))
    transform = create_eval_transform(model.preprocess_config)
    datasets = [test for test, _ in load_datasets(config.datasets, config, transform)]
    encoders = make_encoders(model, get_tokenizer("tiny-vit"), transform, "final",
                             image_size=model.preprocess_config.image_size)
    expected = evaluate(encoders, datasets, config)["sugar_crepe/replace_rel/acc"]
    assert math.isclose(final["eval/sugar_crepe/replace_rel/acc"], expected, abs_tol=1e-6)


def test_unknown_eval_task_is_refused():
    with pytest.raises(ConfigError, match="eval.tasks must be among"):
        EvalConfig(tasks=("captioning",))
