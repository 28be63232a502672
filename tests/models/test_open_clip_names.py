"""open_clip's public names that its clients import (clip_benchmark imports `tokenize`; users register their own
architecture files with `add_model_config`) exist in clipforge with the same behaviour."""
import json

import pytest
import torch

import clipforge
from clipforge.models import registry
from references import require


@pytest.fixture(autouse=True)
def _forget_registrations():
    yield
    registry._USER_FILES.clear()
    registry._load.cache_clear()


def test_tokenize_equals_open_clip():
    open_clip = require("open_clip")
    texts = ["a photo of a cat", "Ünïcödé and emoji 🐱", "x " * 100]
    for length in (77, 16):
        assert torch.equal(clipforge.tokenize(texts, context_length=length),
                           open_clip.tokenize(texts, context_length=length))
    assert torch.equal(clipforge.tokenize("one string"), open_clip.tokenize("one string"))


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50", "ViT-B-16-SigLIP", "ViT-L-14-quickgelu"])
def test_get_model_config_builds_the_same_model_in_open_clip(name):
    open_clip = require("open_clip")
    ours = clipforge.get_model_config(name)
    theirs = open_clip.get_model_config(name)
    def build(cfg):
        cfg = dict(cfg)
        cls = open_clip.model.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.model.CLIP
        return cls(**cfg)

    with torch.device("meta"):
        a, b = build(ours), build(theirs)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert clipforge.get_model_config("no-such-model") is None and open_clip.get_model_config("no-such-model") is None


def test_add_model_config_registers_open_clip_and_clipforge_files(tmp_path):
    open_clip_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                     "head_width": 16},
                     "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "My-ViT.json").write_text(json.dumps(open_clip_cfg))
    from clipforge.config import to_dict
    mine = to_dict(registry.get_architecture("tiny-resnet"))
    (tmp_path / "My-ResNet.json").write_text(json.dumps(mine))
    assert sorted(clipforge.add_model_config(tmp_path)) == ["My-ResNet", "My-ViT"]
    assert "My-ViT" in clipforge.list_models()
    model = clipforge.create_model("my-vit")
    assert model.config.vision.width == 32 and model.context_length == 8
    assert clipforge.create_model("My-ResNet").config.vision.kind == "resnet"


def test_add_model_config_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clipforge.add_model_config(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        clipforge.add_model_config(tmp_path / "empty")
    (tmp_path / "Broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="Broken.json"):
        clipforge.add_model_config(tmp_path / "Broken.json")
    assert "Broken" not in clipforge.list_models()
