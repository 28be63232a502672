"""transformers SiglipModel / Siglip2Model folders (single file or sharded with an index) load through clipforge's
public API with the same features and logits; sharded CLIPModel folders too; bad folders fail in one line."""
import json
import logging
import shutil

import pytest
from references import require
import torch

transformers = require("transformers")

from clipforge.models._checkpoint_file import CheckpointFileError  # noqa: E402
from clipforge.models._download import WeightsNotCachedError  # noqa: E402
from clipforge.models.convert import config_from_hf  # noqa: E402
from clipforge.models.factory import create_model, get_tokenizer, save_pretrained  # noqa: E402
from clipforge.config import ConfigError  # noqa: E402
from model_helpers import randomize_  # noqa: E402

REVISION = "5" * 40
TEXT = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, pad_token_id=1, bos_token_id=2, eos_token_id=3)
VISION = dict(hidden_size=32, intermediate_size=44, num_hidden_layers=2, num_attention_heads=4, patch_size=8)
SHARD = "20KB"  # a tiny model in about ten shards


@pytest.fixture(autouse=True)
def _offline(no_network):
    """Everything here is local: any connection attempt fails the test (fixture in conftest.py)."""
    yield


def _randomized(model):
    randomize_(model.eval())
    with torch.no_grad():  # randomize_ leaves these at their init; values far from it catch a dropped or swapped one
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-4.5)
    return model


def _siglip(text=None):
    config = transformers.SiglipConfig(text_config={**TEXT, **(text or {})}, vision_config={**VISION, "image_size": 32})
    return _randomized(transformers.SiglipModel(config))


def _siglip2():
    config = transformers.Siglip2Config(text_config=TEXT, vision_config={**VISION, "num_patches": 16})  # a 4x4 grid
    return _randomized(transformers.Siglip2Model(config))


def _save(model, folder, sharded: bool):
    model.save_pretrained(folder, max_shard_size=SHARD) if sharded else model.save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").is_file() == sharded
    return folder


def _pooled(output):
    return getattr(output, "pooler_output", output)


def _tokens(batch=2):
    return torch.randint(4, 1000, (batch, TEXT["max_position_embeddings"]), generator=torch.Generator().manual_seed(1))


def _logits(model, images, tokens):
    image_features, text_features, scale, bias = model(images, tokens)
    return scale * image_features @ text_features.T + bias


def _assert_siglip_parity(ours, hf, images, tokens, hf_image_inputs):
    with torch.no_grad():
        hf_image = _pooled(hf.get_image_features(**hf_image_inputs))
        hf_text = _pooled(hf.get_text_features(input_ids=tokens))
        hf_logits = hf(input_ids=tokens, **hf_image_inputs).logits_per_image
        torch.testing.assert_close(ours.encode_image(images), hf_image, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.encode_text(tokens), hf_text, rtol=0, atol=1e-5)
        torch.testing.assert_close(_logits(ours, images, tokens), hf_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sharded", [False, True])
def test_siglip_folder_matches_transformers(tmp_path, sharded):
    hf = _siglip()
    model = create_model(f"local-dir:{_save(hf, tmp_path / 'siglip', sharded)}")
    config = model.config
    assert (config.vision.pool, config.vision.class_token, config.text.pool, config.text.causal_mask) == \
        ("map", False, "last", False)
    assert model.logit_bias is not None and model.logit_bias.item() == pytest.approx(-4.5)
    pp = model.preprocess_config
    assert (pp.image_size, pp.mean, pp.resize_mode) == (32, (0.5,) * 3, "squash")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _assert_siglip_parity(model, hf, images, _tokens(), {"pixel_values": images})


def _patches(images, patch):
    """What Siglip2's image processor feeds the model for an image: (row, column, channel)-flattened patches."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return {"pixel_values": x.reshape(b, (h // patch) * (w // patch), patch * patch * c),
            "spatial_shapes": torch.tensor([[h // patch, w // patch]] * b),
            "pixel_attention_mask": torch.ones(b, (h // patch) * (w // patch), dtype=torch.long)}


@pytest.mark.parametrize("image_size", [None, 48, 24])  # the stored 4x4 grid, resized up (6x6) and down (3x3)
def test_siglip2_naflex_folder_matches_transformers_at_a_fixed_size(tmp_path, image_size):
    hf = _siglip2()
    model = create_model(f"local-dir:{_save(hf, tmp_path / 'naflex', sharded=False)}", image_size=image_size)
    size = image_size or 32  # default: sqrt(num_patches) * patch_size, where transformers uses the grid as stored
    assert model.config.vision.image_size == size and model.preprocess_config.image_size == size
    assert model.preprocess_config.interpolation == "bilinear"
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    _assert_siglip_parity(model, hf, images, _tokens(), _patches(images, VISION["patch_size"]))


def _hub_cache(cache, repo_id, folder):
    """A copy of ``folder`` laid out as huggingface_hub's cache (models--org--name/{refs,snapshots/<rev>})."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo_dir / "snapshots" / REVISION)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REVISION)
    return repo_dir / "snapshots" / REVISION


def test_sharded_siglip_from_the_hub_cache(tmp_path):
    hf = _siglip()
    snapshot = _hub_cache(tmp_path / "hub", "org/tiny-siglip", _save(hf, tmp_path / "saved", sharded=True))
    model = create_model("hf-hub:org/tiny-siglip", cache_dir=tmp_path / "hub", local_files_only=True)
    assert model.info.weights_path == str(snapshot / "model.safetensors.index.json")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _assert_siglip_parity(model, hf, images, _tokens(), {"pixel_values": images})
    (snapshot / "model-00002-of-00011.safetensors").unlink()
    with pytest.raises(WeightsNotCachedError, match="model-00002-of-00011.safetensors") as info:
        create_model("hf-hub:org/tiny-siglip", cache_dir=tmp_path / "hub", local_files_only=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("with_file", [True, False])
def test_hub_tokenizer(tmp_path, with_file):
    """A SigLIP repo's own tokenizer.json when the cache holds it, else open_clip's tokenizer of that vocabulary."""
    folder = _save(_siglip({"vocab_size": 32000}), tmp_path / "saved", sharded=False)
    if with_file:
        _write_tokenizer(folder)
    _hub_cache(tmp_path / "hub", "org/tiny-siglip", folder)
    model = create_model("hf-hub:org/tiny-siglip", cache_dir=tmp_path / "hub", local_files_only=True)
    assert model.config.tokenizer == ("org/tiny-siglip" if with_file else "timm/ViT-B-16-SigLIP")
    assert model.config.tokenizer_clean == "canonicalize"


def test_sharded_clip_model_folder(tmp_path):
    """The index is found for transformers' CLIPModel folders too (local and in the hub cache)."""
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 16, "vocab_size": 1000, "eos_token_id": 999},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8}, projection_dim=16)
    hf = randomize_(transformers.CLIPModel(config).eval())
    folder = _save(hf, tmp_path / "clip", sharded=True)
    _hub_cache(tmp_path / "hub", "org/tiny-clip", folder)
    images, tokens = torch.randn(2, 3, 32, 32), _tokens()
    tokens[:, -1] = 999  # end of text, where CLIP pools
    for name, kwargs in ((f"local-dir:{folder}", {}),
                         ("hf-hub:org/tiny-clip", {"cache_dir": tmp_path / "hub", "local_files_only": True})):
        model = create_model(name, **kwargs)
        assert model.config.tokenizer == "clip"
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(images), _pooled(hf.get_image_features(pixel_values=images)),
                                       rtol=0, atol=1e-5)
            torch.testing.assert_close(model.encode_text(tokens), _pooled(hf.get_text_features(input_ids=tokens)),
                                       rtol=0, atol=1e-5)


def test_sharded_torch_files(tmp_path):
    """pytorch_model.bin.index.json (older transformers' sharded torch files) is read the same way."""
    hf = _siglip()
    folder = _save(hf, tmp_path / "siglip", sharded=False)
    (folder / "model.safetensors").unlink()
    names = list(hf.state_dict())
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, keys in shards.items():
        torch.save({k: hf.state_dict()[k] for k in keys}, folder / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    model = create_model(f"local-dir:{folder}")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _assert_siglip_parity(model, hf, images, _tokens(), {"pixel_values": images})


def _one_line_error(kind, match, name):
    with pytest.raises(kind, match=match) as info:
        create_model(name)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_shard_is_named(tmp_path):
    folder = _save(_siglip(), tmp_path / "siglip", sharded=True)
    (folder / "model-00003-of-00011.safetensors").unlink()
    _one_line_error(FileNotFoundError, "shard model-00003-of-00011.safetensors named by model.safetensors.index.json "
                                       "is missing", f"local-dir:{folder}")


def test_tensor_not_where_the_index_says(tmp_path):
    folder = _save(_siglip(), tmp_path / "siglip", sharded=True)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = next(k for k, v in index["weight_map"].items() if v == "model-00001-of-00011.safetensors")
    index["weight_map"][name] = "model-00002-of-00011.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    message = _one_line_error(CheckpointFileError, "does not match model.safetensors.index.json", f"local-dir:{folder}")
    assert name in message and "model-00002-of-00011.safetensors" in message  # the shard the index names


@pytest.mark.parametrize("weight_map, match", [({}, "has no 'weight_map'"),
                                               ({"logit_bias": "../elsewhere.safetensors"}, "not a file name")])
def test_bad_index(tmp_path, weight_map, match):
    folder = _save(_siglip(), tmp_path / "siglip", sharded=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _one_line_error(CheckpointFileError, match, f"local-dir:{folder}")


def test_unsupported_model_type(tmp_path):
    folder = _save(_siglip(), tmp_path / "blip", sharded=False)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "blip"}))
    _one_line_error(ValueError, "model_type 'blip' is not supported; clipforge reads 'clip'", f"local-dir:{folder}")


@pytest.mark.parametrize("vision, text, match", [
    ({"vision_use_head": False}, {}, "vision_use_head=false is not supported"),
    ({}, {"projection_size": 16}, "projection_size 16 differs from vision_config.hidden_size 32"),
    ({"image_size": [32, 48]}, {}, "is not square"),
])
def test_siglip_configs_clipforge_cannot_build(vision, text, match):
    config = {"model_type": "siglip", "vision_config": {**VISION, **vision}, "text_config": {**TEXT, **text}}
    with pytest.raises(ConfigError, match=match):
        config_from_hf(config, tokenizer="some/tokenizer")


def _write_tokenizer(folder):
    """A small word-level tokenizer.json (+ tokenizer_config.json) as transformers saves one: '</s>' ends and pads."""
    tokenizers = require("tokenizers")
    words = ["<pad>", "</s>", "<unk>", "a", "photo", "of", "cat", "dog"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="</s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def test_tokenizer_comes_from_the_folder(tmp_path):
    folder = _save(_siglip(), tmp_path / "siglip", sharded=False)
    reference = _write_tokenizer(folder)
    tokenizer = get_tokenizer(f"local-dir:{folder}")
    ours = tokenizer(["A photo of a cat.", "a DOG"])
    theirs = reference(["a photo of a cat", "a dog"], padding="max_length", max_length=16)["input_ids"]
    assert ours.shape == (2, 16) and ours.tolist() == theirs  # SigLIP's canonical text: lower case, no punctuation


def test_tokenizer_without_a_file(tmp_path):
    """No tokenizer.json: open_clip's tokenizer of the same vocabulary, or (unknown vocabulary) a clear error."""
    known = _save(_siglip({"vocab_size": 32000}), tmp_path / "known", sharded=False)
    assert create_model(f"local-dir:{known}").config.tokenizer == "timm/ViT-B-16-SigLIP"
    unknown = _save(_siglip(), tmp_path / "unknown", sharded=False)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.json"):
        get_tokenizer(f"local-dir:{unknown}")


def test_converted_siglip_saves_and_reloads(tmp_path, caplog):
    """save_pretrained writes the converted model in the hub layout (clipforge's keys: open_clip has no MAP-pooled
    ViT of its own) and create_model reads it back exactly."""
    folder = _save(_siglip(), tmp_path / "siglip", sharded=True)
    model = create_model(f"local-dir:{folder}")
    with caplog.at_level(logging.WARNING, logger="clipforge"):
        save_pretrained(model, tmp_path / "out")
    assert "open_clip cannot build this architecture" in caplog.text
    assert json.loads((tmp_path / "out" / "open_clip_config.json").read_text())["model_cfg"] is None
    again = create_model(f"local-dir:{tmp_path / 'out'}")
    assert again.config == model.config and again.preprocess_config == model.preprocess_config
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
