"""create_model end to end: every pretrained= source, files moving both ways with open_clip, strictness."""
import dataclasses
import json

import pytest
from references import require
import torch
from safetensors.torch import save_file

from clipforge.models import weights
from clipforge.models.factory import (ModelLoadError, create_model, create_model_and_transforms,
                                      create_model_from_pretrained, get_tokenizer, save_pretrained,
                                      tokenizer_for_config)
from clipforge.models.registry import get_architecture
from clipforge.models.resolve import resolve_weights
from clipforge.models.weights import QUICK_GELU_OVERRIDES, WeightEntry
from test_weights_resolve import make_hub_cache

IMAGES = torch.randn(2, 3, 32, 32)
TOKENS = torch.randint(1, 1000, (2, 16))


def _features(model):
    with torch.no_grad():
        return model.encode_image(IMAGES, normalize=True), model.encode_text(TOKENS, normalize=True)


def _assert_same(a, b):
    for x, y in zip(_features(a), _features(b)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_save_pretrained_is_read_by_open_clip_and_back(tmp_path):
    open_clip = require("open_clip")
    model = create_model("tiny-vit")
    save_pretrained(model, tmp_path / "hub")
    reference, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'hub'}")
    with torch.no_grad():
        ours = model.encode_image(IMAGES, normalize=True)
        theirs = reference.encode_image(IMAGES, normalize=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    again = create_model(f"local-dir:{tmp_path / 'hub'}")
    _assert_same(model, again)
    assert again.preprocess_config == model.preprocess_config


@pytest.fixture
def demo_tag(monkeypatch, tmp_path):
    """A published tag for tiny-vit whose weights need QuickGELU, served from a hub cache made here."""
    entry = WeightEntry(arch="tiny-vit", tag="demo_openai", hf_hub_id="demo/tiny-vit-openai",
                        hf_filename="open_clip_model.safetensors", url=None, sha256=None, sha256_is_full=False,
                        preprocess={"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                    "interpolation": "bilinear", "resize_mode": "squash"},
                        arch_overrides=dict(QUICK_GELU_OVERRIDES))
    table = weights._table() + (entry,)
    monkeypatch.setattr(weights, "_table", lambda: table)
    weights._by_arch.cache_clear()
    source = create_model("tiny-vit", overrides=QUICK_GELU_OVERRIDES)
    from clipforge.models.convert import to_open_clip_state_dict
    save_file({k: v.contiguous() for k, v in to_open_clip_state_dict(source.state_dict(), source.config).items()},
              str(tmp_path / "w.safetensors"))
    make_hub_cache(tmp_path / "cache", "demo/tiny-vit-openai",
                   {"open_clip_model.safetensors": (tmp_path / "w.safetensors").read_bytes()})
    yield source, tmp_path / "cache"
    weights._by_arch.cache_clear()


@pytest.mark.parametrize("spelling", ["tiny-vit::demo_openai", "tiny-vit::demo-openai", "TINY-VIT::demo_openai"])
def test_tag_from_the_hub_cache_offline(demo_tag, monkeypatch, spelling):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source, cache = demo_tag
    model, train_tf, eval_tf = create_model_and_transforms(spelling, cache_dir=cache)
    assert model.config.vision.act == "quick_gelu" and model.config.text.act == "quick_gelu"
    assert model.preprocess_config.interpolation == "bilinear" and model.preprocess_config.std == (0.25,) * 3
    _assert_same(model, source)
    model2, _ = create_model_from_pretrained("tiny-vit", pretrained="demo_openai", cache_dir=cache)
    _assert_same(model2, source)


def test_tag_not_cached_offline_is_a_clear_error(demo_tag, tmp_path):
    with pytest.raises(FileNotFoundError, match="demo/tiny-vit-openai"):
        create_model("tiny-vit::demo_openai", cache_dir=tmp_path / "empty", local_files_only=True)


def test_transformers_clip_directory(tmp_path):
    transformers = require("transformers")
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 16, "vocab_size": 49408},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(0)
    reference = transformers.CLIPModel(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    model = create_model(f"local-dir:{tmp_path / 'hf'}")
    tokens = torch.randint(1, 1000, (2, 16))
    tokens[:, -1] = 49407  # end of text, the highest id, where CLIP pools
    with torch.no_grad():
        ours_i, ours_t = model.encode_image(IMAGES), model.encode_text(tokens)
        out_i, out_t = reference.get_image_features(pixel_values=IMAGES), reference.get_text_features(input_ids=tokens)
    theirs_i = getattr(out_i, "pooler_output", out_i)
    theirs_t = getattr(out_t, "pooler_output", out_t)
    torch.testing.assert_close(ours_i, theirs_i, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_t, theirs_t, rtol=0, atol=1e-5)


def test_checkpoint_config_disagreeing_with_the_architecture(tmp_path):
    save_pretrained(create_model("tiny-vit"), tmp_path / "hub")
    with pytest.raises(ModelLoadError, match="differs from 'tiny-resnet'"):
        create_model("tiny-resnet", pretrained=str(tmp_path / "hub"))


def test_preprocessing_comes_from_the_folder_and_overrides_win(tmp_path):
    model = create_model("tiny-vit", preprocess_overrides={"interpolation": "bilinear", "resize_mode": "squash"})
    save_pretrained(model, tmp_path / "hub")
    config = json.loads((tmp_path / "hub" / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"]["interpolation"] == "bilinear"
    again = create_model(f"local-dir:{tmp_path / 'hub'}")
    assert again.preprocess_config == model.preprocess_config
    changed = create_model(f"local-dir:{tmp_path / 'hub'}", preprocess_overrides={"interpolation": "bicubic"})
    assert changed.preprocess_config.interpolation == "bicubic" and changed.preprocess_config.resize_mode == "squash"


def test_weights_of_another_architecture_say_which_it_fits(tmp_path):
    """ResNet weights loaded into a ViT name the architecture they fit instead of listing a hundred keys."""
    other = create_model("tiny-resnet")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError) as info:
        create_model("tiny-vit", pretrained=str(tmp_path / "w.safetensors"))
    message = str(info.value)
    assert "they fit tiny-resnet" in message and "tiny-resnet::" in message and "visual.layer1" not in message


def test_few_mismatched_keys_are_listed(tmp_path):
    model = create_model("tiny-vit")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "visual.proj.weight"}
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="1 missing: visual.proj.weight"):
        create_model("tiny-vit", pretrained=str(tmp_path / "w.safetensors"))


def test_truncated_file(tmp_path):
    model = create_model("tiny-vit")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="w.safetensors"):
        create_model("tiny-vit", pretrained=str(tmp_path / "w.safetensors"))


def test_image_size_override_interpolates_the_grid(tmp_path):
    model = create_model("tiny-vit")
    save_pretrained(model, tmp_path / "hub")
    big = create_model("tiny-vit", pretrained=str(tmp_path / "hub"), image_size=48)
    assert big.config.vision.image_size == 48 and big.preprocess_config.image_size == 48
    with torch.no_grad():
        assert big.encode_image(torch.randn(1, 3, 48, 48)).shape == (1, 32)
    # the class token's embedding is kept as is; the grid is resampled
    torch.testing.assert_close(big.state_dict()["visual.pos_embed"][0], model.state_dict()["visual.pos_embed"][0])


def test_precision_and_tokenizer():
    model = create_model("tiny-vit", precision="bf16")
    assert model.logit_scale.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*amp_bf16"):
        create_model("tiny-vit", precision="fp8")
    assert create_model("tiny-vit", precision="pure_bf16").logit_scale.dtype == torch.bfloat16  # open_clip's name
    assert create_model("tiny-vit", precision="amp_bf16").logit_scale.dtype == torch.float32  # autocast only
    tokenizer = get_tokenizer("tiny-vit")
    assert tokenizer(["a cat"]).shape == (1, 16)
    with pytest.raises(ValueError, match="positional embedding"):
        get_tokenizer("tiny-vit", context_length=77)


def test_tokenizer_strips_separators_when_the_architecture_says_so(tmp_path):
    """CLIPA's BERT tokenizer: open_clip's strip_sep_token, recorded in the preset as tokenizer_strip_sep."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "cat": 5},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]", "sep_token": "[SEP]"}))
    clipa = dataclasses.replace(get_architecture("ViT-L-14-CLIPA"), tokenizer=str(tmp_path))
    assert clipa.tokenizer_strip_sep and clipa.text.context_length == 32
    assert tokenizer_for_config(clipa)(["a cat"]).tolist() == [[2, 4, 5] + [0] * 29]
    kept = dataclasses.replace(clipa, tokenizer_strip_sep=False)
    assert tokenizer_for_config(kept)(["a cat"]).tolist() == [[2, 4, 5, 3] + [0] * 28]


@pytest.mark.parametrize("name, pretrained, needle", [
    ("", None, "non-empty"),
    ("tiny-vit::a", "b", "names the tag 'a'"),
    ("hf-hub:org/repo", "x", "already names its weights"),
])
def test_bad_names(name, pretrained, needle):
    with pytest.raises(ModelLoadError, match=needle):
        create_model(name, pretrained)
