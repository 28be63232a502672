"""resolve_weights: tags, files, hf-hub repos (from a cache laid out like huggingface_hub's) and directories."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from clipforge.models import resolve, weights
from clipforge.models._checkpoint_file import read_state_dict
from clipforge.models._download import WeightsNotCachedError
from clipforge.models.resolve import resolve_weights
from clipforge.models.weights import QUICK_GELU_OVERRIDES, WeightEntry
from clipforge.transforms import OPENAI_MEAN, PreprocessConfig

REVISION = "0123456789abcdef0123456789abcdef01234567"
OPEN_CLIP_CONFIG = {
    "model_cfg": {"embed_dim": 8, "quick_gelu": True,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
                  "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}},
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                       "resize_mode": "squash"},
}
HF_CONFIG = {"architectures": ["CLIPModel"], "projection_dim": 8,
             "vision_config": {"image_size": 48, "hidden_size": 16, "num_attention_heads": 2, "hidden_act": "quick_gelu"},
             "text_config": {"hidden_size": 16, "num_attention_heads": 2, "hidden_act": "gelu"}}


@pytest.fixture(autouse=True)
def _offline(no_network):
    """Everything here is local: any connection attempt fails the test (fixture in conftest.py)."""
    yield


def _tensors():
    return {"visual.proj": torch.randn(16, 8), "logit_scale": torch.tensor(2.0)}


def _safetensors_bytes(tmp_path, tensors):
    save_file(tensors, str(tmp_path / "tmp.safetensors"))
    data = (tmp_path / "tmp.safetensors").read_bytes()
    (tmp_path / "tmp.safetensors").unlink()
    return data


def make_hub_cache(cache_dir, repo_id, files, revision=REVISION, ref="main"):
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(revision)
    return snapshot


def test_tag_resolves_through_the_hub_cache(tmp_path):
    tensors = _tensors()
    snapshot = make_hub_cache(tmp_path / "hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                              {"open_clip_model.safetensors": _safetensors_bytes(tmp_path, tensors)})
    local = resolve_weights("laion2b-s34b-b79k", "ViT-B-32", cache_dir=tmp_path / "hub", local_files_only=True)
    assert local.weights_path == snapshot / "open_clip_model.safetensors"
    assert local.format_hint == "safetensors" and local.entry.tag == "laion2b_s34b_b79k"
    assert local.declared.preprocess.image_size == 224 and local.declared.overrides == {}
    assert "ViT-B-32::laion2b_s34b_b79k" in local.source
    assert torch.equal(read_state_dict(local.weights_path)["visual.proj"], tensors["visual.proj"])


def test_quickgelu_tag_declares_its_overrides(tmp_path):
    torch.save(_tensors(), tmp_path / "w.bin")
    make_hub_cache(tmp_path, "timm/vit_base_patch32_clip_224.openai",
                   {"open_clip_pytorch_model.bin": (tmp_path / "w.bin").read_bytes()})
    for arch in ("ViT-B-32", "ViT-B-32-quickgelu"):
        local = resolve_weights("openai", arch, cache_dir=tmp_path, local_files_only=True)
        assert local.declared.overrides == QUICK_GELU_OVERRIDES and local.format_hint == "torch"


def test_tag_falls_back_to_the_url_cache(tmp_path, monkeypatch):
    payload = b"weights"
    entry = WeightEntry(arch="ViT-T", tag="t", hf_hub_id="org/absent", hf_filename="open_clip_pytorch_model.bin",
                        url="https://example.invalid/a/vit-t.pt", sha256=hashlib.sha256(payload).hexdigest(),
                        sha256_is_full=True, preprocess={"image_size": 224})
    (tmp_path / "vit-t.pt").write_bytes(payload)
    assert resolve._fetch_entry(entry, tmp_path, True, None) == tmp_path / "vit-t.pt"
    (tmp_path / "vit-t.pt").unlink()
    with pytest.raises(WeightsNotCachedError) as info:
        resolve._fetch_entry(entry, tmp_path, True, None)
    assert "org/absent" in str(info.value) and "vit-t.pt" in str(info.value)


def test_uncached_tag_offline_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotCachedError, match="ViT-B-32::laion2b_s34b_b79k"):
        resolve_weights("laion2b_s34b_b79k", "ViT-B-32", cache_dir=tmp_path, local_files_only=True)


def test_hf_hub_open_clip_layout_with_pinned_revision(tmp_path):
    older = "a" * 40
    make_hub_cache(tmp_path, "org/tiny", {"open_clip_config.json": OPEN_CLIP_CONFIG,
                                          "open_clip_model.safetensors": _safetensors_bytes(tmp_path, _tensors())})
    old = make_hub_cache(tmp_path, "org/tiny", {"open_clip_config.json": OPEN_CLIP_CONFIG,
                                                "open_clip_pytorch_model.bin": b"x" * 16}, revision=older, ref=None)
    local = resolve_weights("hf-hub:org/tiny", cache_dir=tmp_path, local_files_only=True)
    assert local.declared.config.vision.width == 16 and local.declared.config.vision.act == "quick_gelu"
    assert local.declared.preprocess == PreprocessConfig(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                                                         interpolation="bilinear", resize_mode="squash")
    assert local.declared.overrides == QUICK_GELU_OVERRIDES and local.entry is None
    pinned = resolve_weights(f"hf-hub:org/tiny@{older}", cache_dir=tmp_path, local_files_only=True)
    assert pinned.weights_path == old / "open_clip_pytorch_model.bin" and "@" + older in pinned.source


def test_hf_hub_transformers_layout(tmp_path):
    make_hub_cache(tmp_path, "openai/tiny", {"config.json": HF_CONFIG,
                                             "preprocessor_config.json": {"image_mean": [0.1, 0.2, 0.3],
                                                                          "image_std": [1, 1, 1], "resample": 3},
                                             "model.safetensors": _safetensors_bytes(tmp_path, _tensors())})
    local = resolve_weights("hf-hub:openai/tiny", cache_dir=tmp_path, local_files_only=True)
    assert local.declared.config.vision.image_size == 48 and local.declared.config.embed_dim == 8
    assert local.declared.preprocess.image_size == 48 and local.declared.preprocess.mean == (0.1, 0.2, 0.3)
    assert local.declared.overrides == {"vision.act": "quick_gelu"}  # the text tower says gelu


def test_hf_hub_repo_not_cached(tmp_path):
    with pytest.raises(WeightsNotCachedError) as info:
        resolve_weights("hf-hub:org/absent", cache_dir=tmp_path, local_files_only=True)
    assert "org/absent" in str(info.value) and "open_clip_config.json" in str(info.value)


@pytest.mark.parametrize("spec", ["hf-hub:", "hf-hub:justname", "hf-hub:org/repo@", "hf-hub:a/b/c"])
def test_bad_hf_hub_spec(spec):
    with pytest.raises(ValueError, match="hf-hub:org/repo"):
        resolve_weights(spec)


def test_directory_layouts(tmp_path):
    oc = tmp_path / "oc"
    oc.mkdir()
    (oc / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    torch.save(_tensors(), oc / "open_clip_pytorch_model.bin")
    local = resolve_weights(oc)
    assert local.weights_path == oc / "open_clip_pytorch_model.bin" and local.declared.config.embed_dim == 8
    assert resolve_weights(f"local-dir:{oc}").weights_path == local.weights_path
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file(_tensors(), str(hf / "model.safetensors"))
    local = resolve_weights(str(hf))
    assert local.declared.config.vision.image_size == 48 and local.format_hint == "safetensors"
    assert local.declared.preprocess.mean == OPENAI_MEAN  # no preprocessor_config.json: CLIP defaults


def test_directory_without_a_layout_lists_what_it_expects(tmp_path):
    (tmp_path / "random.txt").write_text("hi")
    with pytest.raises(FileNotFoundError) as info:
        resolve_weights(tmp_path)
    for name in ("open_clip_config.json", "open_clip_model.safetensors", "config.json", "model.safetensors"):
        assert name in str(info.value)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        resolve_weights(tmp_path)


def test_directory_with_a_broken_config(tmp_path):
    (tmp_path / "open_clip_config.json").write_text("{not json")
    torch.save(_tensors(), tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="open_clip_config.json"):
        resolve_weights(tmp_path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {}}))
    with pytest.raises(ValueError, match="model_cfg"):
        resolve_weights(tmp_path)


def test_plain_files_and_missing_paths(tmp_path):
    torch.save(_tensors(), tmp_path / "epoch_1.pt")
    local = resolve_weights(str(tmp_path / "epoch_1.pt"), "ViT-B-32")
    assert local.weights_path == tmp_path / "epoch_1.pt" and local.format_hint == "torch"
    assert local.declared.config is None and local.declared.preprocess is None and local.entry is None
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        resolve_weights(str(tmp_path / "missing.safetensors"), "ViT-B-32")


def test_unknown_tag_and_missing_arch():
    with pytest.raises(ValueError) as info:
        resolve_weights("laion5b_wrong", "ViT-B-32")
    assert "laion2b_s34b_b79k" in str(info.value) and "openai" in str(info.value)
    with pytest.raises(ValueError, match="needs an architecture"):
        resolve_weights("openai")
    with pytest.raises(ValueError, match="empty"):
        resolve_weights("  ")


def test_a_tag_wins_over_a_same_named_local_path(tmp_path, monkeypatch):
    torch.save(_tensors(), tmp_path / "w.bin")
    snapshot = make_hub_cache(tmp_path / "hub", "timm/resnet50_clip.openai",
                              {"open_clip_pytorch_model.bin": (tmp_path / "w.bin").read_bytes()})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").mkdir()
    local = resolve_weights("openai", "RN50", cache_dir=tmp_path / "hub", local_files_only=True)
    assert local.weights_path == snapshot / "open_clip_pytorch_model.bin" and local.entry.arch == "RN50"
    with pytest.raises(FileNotFoundError, match="not a weights folder"):
        resolve_weights("openai")  # without an architecture it can only be the directory
