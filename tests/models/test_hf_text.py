"""Hugging Face text towers (text.kind='hf') against open_clip 3.3.0's HFTextEncoder, built offline.

open_clip reads the encoder's config from the hub even with random weights; here both sides get the same small
config built locally (open_clip's ``AutoConfig.from_pretrained`` is patched to return it), one state dict is loaded
into both, and image and text features must agree to 1e-5 in fp32.
"""
import dataclasses
import json
import sys

import pytest
from references import require
import torch

open_clip = require("open_clip")
transformers = require("transformers")

from clipforge.config import ConfigError, from_dict, to_dict  # noqa: E402
from clipforge.models import convert, hf_text, registry  # noqa: E402
from clipforge.models.clip import CLIP  # noqa: E402
from clipforge.models.config import ClipConfig, HFTextConfig, TextConfig  # noqa: E402
from clipforge.models.loading import ModelLoadError, load_weights  # noqa: E402
from model_helpers import HF_STAND_INS, hf_stand_in, randomize_  # noqa: E402

TOL = 1e-5
# small stand-ins for each model family open_clip publishes HF text towers for (same model_type, tiny sizes)
LOCAL_CONFIGS = {family: (lambda d=d: transformers.AutoConfig.for_model(**d)) for family, d in HF_STAND_INS.items()}
# (family, open_clip hf_pooler_type, hf_proj_type, embed_dim): every pooler and projection open_clip builds
VARIANTS = [
    ("roberta", "mean_pooler", "mlp", 24),
    ("roberta", "cls_pooler", "linear", 24),
    ("xlm-roberta", "mean_pooler", "mlp", 24),
    ("xlm-roberta", "cls_last_hidden_state_pooler", "linear", 24),
    ("xlm-roberta", "mean_pooler", None, 32),  # no projection: the encoder width is embed_dim
    ("m2m_100", "cls_pooler", "linear", 24),  # NLLB: the encoder of an encoder-decoder model, no pooler
    ("mt5", "mean_pooler", "mlp", 24),
]
VISION = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}


@pytest.fixture
def local_hub(monkeypatch):
    """open_clip's hub config lookup answered from LOCAL_CONFIGS ('local/<model_type>')."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def from_pretrained(name, *args, **kwargs):
        assert name.startswith("local/"), name
        return LOCAL_CONFIGS[name[len("local/"):]]()

    monkeypatch.setattr(open_clip.hf_model.AutoConfig, "from_pretrained", from_pretrained)


def _open_clip_cfg(family: str, pooler: str, proj, embed_dim: int) -> dict:
    text = {"hf_model_name": f"local/{family}", "hf_tokenizer_name": f"local/{family}", "hf_pooler_type": pooler,
            "hf_proj_type": proj, "hf_model_pretrained": False, "context_length": 16}
    return {"embed_dim": embed_dim, "vision_cfg": dict(VISION), "text_cfg": text}


def _with_local_config(config: ClipConfig, family: str) -> ClipConfig:
    """clipforge's side of the same architecture: the config dict instead of the hub name."""
    hf = dataclasses.replace(config.text.hf, model_config=dict(HF_STAND_INS[family]))
    return dataclasses.replace(config, text=dataclasses.replace(config.text, hf=hf))


def _tokens(pad: int, vocab: int, batch: int = 3, length: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, vocab, (batch, length), generator=gen)
    tokens[tokens == pad] = pad + 3
    tokens[0, 10:] = pad  # padded rows, as a tokenizer writes them
    tokens[1, 5:] = pad
    return tokens


@pytest.mark.parametrize("family, pooler, proj, embed_dim", VARIANTS)
def test_features_match_open_clip(local_hub, family, pooler, proj, embed_dim):
    cfg = _open_clip_cfg(family, pooler, proj, embed_dim)
    torch.manual_seed(0)
    reference = randomize_(open_clip.model.CustomTextCLIP(**cfg)).eval()
    config = _with_local_config(convert.config_from_open_clip(cfg), family)
    model = CLIP(config).eval()
    load_weights(model, reference.state_dict(), "open_clip")  # the loader's strict path
    text_keys = {k for k in reference.state_dict() if k.startswith("text.")}
    assert text_keys == {k for k in model.state_dict() if k.startswith("text.")}  # the same names
    # and back: clipforge's state dict loads strictly into open_clip
    reference.load_state_dict(convert.to_open_clip_state_dict(model.state_dict(), config), strict=True)
    pad = model.text.pad_id
    tokens = _tokens(pad, LOCAL_CONFIGS[family]().vocab_size)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = model.encode_text(tokens, normalize=True), reference.encode_text(tokens, normalize=True)
        assert ours.shape == theirs.shape == (3, embed_dim)
        assert (ours - theirs).abs().max().item() <= TOL
        ours, theirs = model.encode_image(images, normalize=True), reference.encode_image(images, normalize=True)
        assert (ours - theirs).abs().max().item() <= TOL


def test_padding_does_not_change_features(local_hub):
    config = _with_local_config(convert.config_from_open_clip(_open_clip_cfg("xlm-roberta", "mean_pooler", "mlp",
                                                                             24)), "xlm-roberta")
    for pool in ("mean", "max", "first", "cls"):
        model = CLIP(dataclasses.replace(config, text=dataclasses.replace(
            config.text, hf=dataclasses.replace(config.text.hf, pool=pool)))).eval()
        tokens = _tokens(model.text.pad_id, 120)[:1, :10]
        padded = torch.cat([tokens, torch.full((1, 6), model.text.pad_id)], dim=1)
        with torch.no_grad():
            torch.testing.assert_close(model.encode_text(tokens), model.encode_text(padded), atol=1e-5, rtol=0)


def test_projection_bias_and_layer_groups():
    config = _with_local_config(convert.config_from_open_clip(_open_clip_cfg("roberta", "mean_pooler", "mlp", 24)),
                                "roberta")
    biased = dataclasses.replace(config, text=dataclasses.replace(
        config.text, hf=dataclasses.replace(config.text.hf, proj_bias=True)))
    keys = set(CLIP(biased).text.state_dict())
    assert {"proj.0.bias", "proj.2.bias"} <= keys
    with pytest.raises(ConfigError, match="projection bias"):
        convert.config_to_open_clip(biased)
    text = CLIP(config).text
    groups = text.param_groups()
    assert len(groups) == 2 + 1 + 1  # embeddings, layer 0, layer 1 (+ what follows), projection
    counted = sum(p.numel() for group in groups for item in group
                  for p in ([item] if isinstance(item, torch.nn.Parameter) else item.parameters()))
    assert counted == sum(p.numel() for p in text.parameters())


def test_open_clip_configs_convert_and_round_trip():
    for name in ("roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32", "xlm-roberta-large-ViT-H-14", "nllb-clip-base",
                 "nllb-clip-large-siglip", "mt5-base-ViT-B-32"):
        cfg = open_clip.get_model_config(name)
        config = convert.config_from_open_clip(cfg)
        assert config.text.kind == "hf" and config.text.hf.model_name == cfg["text_cfg"]["hf_model_name"]
        assert config.open_clip_class == "CustomTextCLIP"
        assert config.tokenizer == cfg["text_cfg"]["hf_tokenizer_name"]
        assert convert.config_from_open_clip(convert.config_to_open_clip(config)) == config, name
        assert from_dict(ClipConfig, to_dict(config)) == config
        assert registry.get_architecture(name) == config  # the shipped preset
    nllb = convert.config_from_open_clip(open_clip.get_model_config("nllb-clip-base")).text.hf
    assert (nllb.pool, nllb.proj) == ("cls", "linear")
    roberta = registry.get_architecture("roberta-ViT-B-32")
    assert roberta.vision.act == "quick_gelu"
    assert registry.get_architecture("xlm-roberta-base-ViT-B-32-quickgelu").vision.act == "quick_gelu"


def test_bad_hf_configs_are_one_line():
    with pytest.raises(ConfigError, match="text.hf"):
        TextConfig(kind="hf")
    with pytest.raises(ConfigError, match="remove text.width"):
        TextConfig(kind="hf", width=768, hf=HFTextConfig(model_name="roberta-base"))
    with pytest.raises(ConfigError, match="model_type"):
        HFTextConfig(model_name="x", model_config={"hidden_size": 8})
    with pytest.raises(ConfigError, match="hf_pooler_type='attn'"):
        convert.config_from_open_clip({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {"hf_model_name": "x",
                                                                                      "hf_pooler_type": "attn"}})


def test_missing_transformers_names_the_extra(monkeypatch):
    config = registry.get_architecture("roberta-ViT-B-32")
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(ImportError) as info:
        with torch.device("meta"):
            CLIP(config)
    assert str(info.value) == hf_text.HF_HINT and "pip install 'clipforge[hf]'" in str(info.value)


def test_hub_config_offline_and_not_cached_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_text._download, "_cached_hub_file", lambda *a, **k: None)
    hf_text._hub_config.cache_clear()
    config = registry.get_architecture("roberta-ViT-B-32")
    with pytest.raises(hf_text.HFConfigUnavailable) as info:
        with torch.device("meta"):
            CLIP(config)
    message = str(info.value)
    assert "'roberta-base'" in message and "offline" in message and "text.hf.model_config" in message
    assert "\n" not in message


def test_hub_config_from_the_cache_is_used(monkeypatch, tmp_path):
    """A name alone builds from the cached config.json (what a download leaves), dtype fields dropped."""
    stored = {**HF_STAND_INS["roberta"], "torch_dtype": "float16", "architectures": ["X"]}
    (tmp_path / "config.json").write_text(json.dumps(stored))
    monkeypatch.setattr(hf_text._download, "hub_file", lambda name, files, **k: tmp_path / "config.json")
    hf_text._hub_config.cache_clear()
    try:
        cfg = _open_clip_cfg("roberta", "mean_pooler", "mlp", 24)
        cfg["text_cfg"]["hf_model_name"] = "some/roberta"
        model = CLIP(convert.config_from_open_clip(cfg))
        assert model.text.width == 32 and model.text.proj[0].weight.dtype == torch.float32
        assert next(model.text.transformer.parameters()).dtype == torch.float32
    finally:
        hf_text._hub_config.cache_clear()


def test_checkpoint_for_another_hf_config_is_one_line(local_hub):
    cfg = _open_clip_cfg("roberta", "mean_pooler", "mlp", 24)
    reference = open_clip.model.CustomTextCLIP(**cfg)
    config = _with_local_config(convert.config_from_open_clip(cfg), "roberta")
    wider = dict(config.text.hf.model_config, hidden_size=48, intermediate_size=96)
    model = CLIP(dataclasses.replace(config, text=dataclasses.replace(
        config.text, hf=dataclasses.replace(config.text.hf, model_config=wider))))
    with pytest.raises(ModelLoadError) as info:
        load_weights(model, reference.state_dict(), "ckpt.pt")
    message = str(info.value)
    assert "\n" not in message and "text.hf.model_config" in message and "word_embeddings" in message


def test_old_position_ids_buffer_is_dropped(local_hub):
    cfg = _open_clip_cfg("roberta", "mean_pooler", "mlp", 24)
    reference = open_clip.model.CustomTextCLIP(**cfg)
    state_dict = {**reference.state_dict(), "text.transformer.embeddings.position_ids": torch.arange(40)[None]}
    model = CLIP(_with_local_config(convert.config_from_open_clip(cfg), "roberta"))
    load_weights(model, state_dict, "old checkpoint")
    assert convert.detect_layout(state_dict) == "open_clip"
    assert convert.detect_layout(model.state_dict()) == "clipforge"
