"""save_hub_layout writes the folder open_clip reads, and folders written by open_clip are read back."""
import json

import pytest
from references import require
import torch

from clipforge.models._checkpoint_file import read_state_dict
from clipforge.models.hub_layout import QUICK_GELU_OVERRIDES, save_hub_layout
from clipforge.models.resolve import resolve_weights
from clipforge.transforms import PreprocessConfig

TINY_MODEL_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
TINY_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                   "resize_mode": "squash"}


def _assert_same(got, expected):
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("mode, files", [
    (True, ["open_clip_config.json", "open_clip_model.safetensors"]),
    (False, ["open_clip_config.json", "open_clip_pytorch_model.bin"]),
    ("both", ["open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]),
])
def test_round_trip_through_our_reader(tmp_path, mode, files):
    sd = {"a.weight": torch.randn(3, 4), "b": torch.arange(6).reshape(2, 3)}
    save_hub_layout(tmp_path / "out", sd, {"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": TINY_PREPROCESS},
                    safe_serialization=mode)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == files
    local = resolve_weights(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())
    assert written == {"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": TINY_PREPROCESS}
    assert local.declared.preprocess.image_size == 32 and local.declared.preprocess.std == (0.25,) * 3
    _assert_same(read_state_dict(local.weights_path), sd)


def test_shared_and_strided_tensors_are_saved(tmp_path):
    base = torch.randn(6, 4)
    sd = {"tied.a": base, "tied.b": base, "view": base[:3], "transposed": base.t(), "alone": torch.ones(2)}
    save_hub_layout(tmp_path, sd, {"model_cfg": TINY_MODEL_CFG})
    got = read_state_dict(tmp_path / "open_clip_model.safetensors")
    _assert_same(got, sd)
    assert sd["tied.a"] is base  # the caller's tensors are left alone


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="model_cfg"):
        save_hub_layout(tmp_path, {"a": torch.zeros(1)}, {"preprocess_cfg": {}})
    with pytest.raises(ValueError, match="safe_serialization"):
        save_hub_layout(tmp_path, {"a": torch.zeros(1)}, {"model_cfg": {}}, safe_serialization="yes")
    with pytest.raises(TypeError, match="'a'"):
        save_hub_layout(tmp_path, {"a": [1, 2]}, {"model_cfg": {}})


def test_interrupted_save_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_hub_layout(tmp_path / "out", {"a": torch.zeros(2)}, {"model_cfg": TINY_MODEL_CFG})
    assert list((tmp_path / "out").iterdir()) == []


def test_open_clip_loads_what_we_save(tmp_path):
    open_clip = require("open_clip")
    from open_clip.model import CLIP

    reference = CLIP(**TINY_MODEL_CFG)
    ours = PreprocessConfig(image_size=32, **TINY_PREPROCESS)
    save_hub_layout(tmp_path, reference.state_dict(), {"model_cfg": TINY_MODEL_CFG,
                                                       "preprocess_cfg": ours.to_open_clip()})
    assert resolve_weights(tmp_path).declared.preprocess == ours  # and back
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    _assert_same(model.state_dict(), reference.state_dict())
    assert model.visual.preprocess_cfg["interpolation"] == "bilinear"
    assert model.visual.preprocess_cfg["resize_mode"] == "squash"
    assert tuple(model.visual.image_std) == (0.25, 0.25, 0.25)


def test_we_read_what_open_clip_saves(tmp_path):
    open_clip = require("open_clip")
    from open_clip.model import CLIP
    from open_clip.push_to_hf_hub import save_config_for_hf

    reference = CLIP(**TINY_MODEL_CFG)
    reference.visual.image_mean, reference.visual.image_std = (0.1, 0.2, 0.3), (0.9, 0.8, 0.7)
    save_config_for_hf(reference, tmp_path / "open_clip_config.json", model_config=TINY_MODEL_CFG)
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    local = resolve_weights(tmp_path)
    assert local.declared.preprocess.mean == (0.1, 0.2, 0.3) and local.declared.preprocess.image_size == 32
    assert local.declared.overrides == QUICK_GELU_OVERRIDES
    written = json.loads((tmp_path / "open_clip_config.json").read_text())
    assert written["model_cfg"] == TINY_MODEL_CFG and local.declared.config.vision.act == "quick_gelu"
    _assert_same(read_state_dict(local.weights_path), reference.state_dict())
