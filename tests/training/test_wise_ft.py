"""WiSE-FT: interpolation is exact, each alpha is evaluated like the benchmark would, the command writes its table,
curve and models, and bad inputs are one-line errors that write nothing."""
import json

import pytest
import torch

from clipforge.cli.main import main
from clipforge.models.factory import create_model, save_pretrained
from clipforge.training.evaluate import Evaluator
from clipforge.training.config import EvalConfig
from clipforge.models.factory import tokenizer_for_config
from clipforge.training.shapes import generate_shapes_dataset
from clipforge.training.wise_ft import WiseFtConfig, WiseFtError, interpolate_state_dicts, run_wise_ft


def test_interpolation_endpoints_midpoint_and_integer_buffers():
    zs = {"w": torch.zeros(3), "b": torch.tensor([2.0], dtype=torch.bfloat16), "n": torch.tensor(3)}
    ft = {"w": torch.ones(3), "b": torch.tensor([4.0], dtype=torch.bfloat16), "n": torch.tensor(7)}
    assert torch.equal(interpolate_state_dicts(zs, ft, 0.0)["w"], zs["w"])
    assert torch.equal(interpolate_state_dicts(zs, ft, 1.0)["w"], ft["w"])
    mid = interpolate_state_dicts(zs, ft, 0.25)
    assert torch.allclose(mid["w"], torch.full((3,), 0.25)) and mid["b"].dtype == torch.bfloat16
    assert float(mid["b"]) == 2.5 and int(mid["n"]) == 7
    with pytest.raises(WiseFtError, match="different parameters"):
        interpolate_state_dicts({"w": torch.zeros(1)}, {"v": torch.zeros(1)}, 0.5)
    with pytest.raises(WiseFtError, match="same architecture"):
        interpolate_state_dicts({"w": torch.zeros(1)}, {"w": torch.zeros(2)}, 0.5)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two tiny models (different random weights standing for zero-shot and fine-tuned) and two shapes sets."""
    root = tmp_path_factory.mktemp("wise")
    torch.manual_seed(0)
    save_pretrained(create_model("tiny-vit", image_size=64), root / "zs")
    torch.manual_seed(1)
    save_pretrained(create_model("tiny-vit", image_size=64), root / "ft")
    generate_shapes_dataset(str(root / "plain"), n_train=8, n_val=48, image_size=64, seed=0)
    generate_shapes_dataset(str(root / "shifted"), n_train=8, n_val=48, image_size=64, seed=1, variant="shifted")
    return root


def test_each_alpha_is_the_interpolated_model_evaluated(pair, tmp_path):
    target, control = f"shifted=wds:{pair}/shifted/val-000000.tar", f"plain=wds:{pair}/plain/val-000000.tar"
    config = WiseFtConfig(zeroshot=f"local-dir:{pair}/zs", finetuned=str(pair / "ft"), alphas=(0.0, 0.5, 1.0),
                          eval_sets=(target,), control_sets=(control,), out=str(tmp_path / "out"), save=(0.5,))
    result = run_wise_ft(config)
    assert [r["alpha"] for r in result.rows] == [0.0, 0.5, 1.0]
    assert result.target_sets == ["shifted"] and result.control_sets == ["plain"]
    zs, ft = create_model(f"local-dir:{pair}/zs"), create_model(f"local-dir:{pair}/ft")
    evaluator = Evaluator(EvalConfig(datasets=(target, control)), tokenizer_for_config(zs.config),
                          zs.preprocess_config)
    for row, model in ((result.rows[0], zs), (result.rows[2], ft)):  # the endpoints are the two models
        expected = evaluator(model.eval(), 0)
        assert row["metrics"] == pytest.approx(expected, abs=1e-6)
        assert row["target"] == pytest.approx(expected["shifted/acc1"])
    mid = create_model(f"local-dir:{tmp_path}/out/alpha_0.5")
    for key, value in mid.state_dict().items():
        torch.testing.assert_close(value, (zs.state_dict()[key] + ft.state_dict()[key]) / 2, rtol=1e-6, atol=1e-6)
    assert not (tmp_path / "out" / "alpha_0").exists()  # only the asked alpha was saved
    report = json.loads((tmp_path / "out" / "wise_ft.json").read_text())
    assert len(report["rows"]) == 3
    table = (tmp_path / "out" / "wise_ft.md").read_text()
    assert "| 0.5 |" in table and "shifted (target)" in table and "plain (control)" in table
    assert (tmp_path / "out" / "wise_ft.png").stat().st_size > 1000


def test_command_prints_the_table(pair, tmp_path, capsys):
    code = main(["wise-ft", "--zeroshot", str(pair / "zs"), "--finetuned", str(pair / "ft"), "--alpha", "0,1",
                 "--control", f"plain=wds:{pair}/plain/val-000000.tar", "--out", str(tmp_path / "o"),
                 "--save", "none"])
    out = capsys.readouterr().out
    assert code == 0 and "| 1 |" in out and "plain (control)" in out
    assert not list((tmp_path / "o").glob("alpha_*"))


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "0.5,1.5"], "alpha must be in [0, 1]"),
    (["--alpha", "half"], "numbers separated by commas"),
    (["--save", "some"], "numbers separated by commas"),
    (["--alpha", "0.5,0.50"], "repeat a value"),
    (["--alpha", "0,1", "--save", "0.5"], "is not one of the alphas"),
])
def test_bad_alphas_are_one_line_errors(pair, tmp_path, capsys, extra, message):
    code = main(["wise-ft", "--zeroshot", str(pair / "zs"), "--finetuned", str(pair / "ft"), "--out",
                 str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_different_architectures_are_refused(pair, tmp_path, capsys):
    save_pretrained(create_model("tiny-siglip"), tmp_path / "other")
    capsys.readouterr()  # the save's own warning (open_clip cannot build a MAP-pooled ViT)
    code = main(["wise-ft", "--zeroshot", str(pair / "zs"), "--finetuned", str(tmp_path / "other"), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "different architectures" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
