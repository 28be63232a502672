"""The pretrained tag table: coverage of the supported architectures, names users type, and open_clip parity."""
import importlib.util
import json
from pathlib import Path

import pytest
from references import require

from clipforge.models import weights
from clipforge.models.weights import (
    PREPROCESS_KEYS, QUICK_GELU_OVERRIDES, format_pretrained_table, get_weight_entry, list_pretrained,
    list_pretrained_tags, split_model_tag,
)

ROOT = Path(__file__).resolve().parents[2]
ARCHS = [
    "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-B-16-plus-240", "ViT-L-14",
    "ViT-L-14-336", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256",
    "ViT-B-16-SigLIP-384", "ViT-B-16-SigLIP-512", "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384",
    "ViT-SO400M-14-SigLIP", "ViT-SO400M-14-SigLIP-384", "coca_ViT-B-32", "coca_ViT-L-14",
]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_supported_arch_has_tags(arch):
    assert list_pretrained_tags(arch)


def test_well_known_pairs_are_listed():
    pairs = list_pretrained()
    assert ("ViT-B-32", "laion2b_s34b_b79k") in pairs
    assert ("RN50", "openai") in pairs
    assert ("ViT-B-32-quickgelu", "metaclip_400m") in pairs
    assert "ViT-L-14-336::openai" in list_pretrained(as_str=True)
    assert len(set(pairs)) == len(pairs)


def _table_archs() -> set[str]:
    """The architectures the committed table covers (tools/make_pretrained_table.py: every preset with tags)."""
    return {entry.arch for entry in weights._table()}


def test_matches_open_clip_list_for_supported_archs():
    open_clip = require("open_clip")
    assert set(ARCHS) <= _table_archs()
    wanted = _table_archs() | {a + "-quickgelu" for a in _table_archs()}
    theirs = [(a, t) for a, t in open_clip.list_pretrained() if a in wanted]
    assert list_pretrained() == theirs


def test_entries_carry_source_preprocess_and_overrides():
    open_clip = require("open_clip")
    for arch, tag in list_pretrained():
        entry = get_weight_entry(arch, tag)
        theirs = open_clip.get_pretrained_cfg(arch, tag)
        assert set(entry.preprocess) == set(PREPROCESS_KEYS)
        assert tuple(entry.preprocess["mean"]) == tuple(theirs["mean"])
        assert tuple(entry.preprocess["std"]) == tuple(theirs["std"])
        assert entry.preprocess["interpolation"] == theirs["interpolation"]
        assert entry.preprocess["resize_mode"] == theirs["resize_mode"]
        assert (entry.arch_overrides == QUICK_GELU_OVERRIDES) == bool(theirs.get("quick_gelu"))
        assert entry.hf_hub_id or entry.url
        assert (entry.url or "") == theirs["url"]


def test_image_size_and_hashes():
    assert get_weight_entry("ViT-L-14-336", "openai").preprocess["image_size"] == 336
    assert get_weight_entry("RN50x4", "openai").preprocess["image_size"] == 288
    siglip = get_weight_entry("ViT-B-16-SigLIP-384", "webli")
    assert siglip.preprocess["image_size"] == 384 and siglip.preprocess["resize_mode"] == "squash"
    assert siglip.preprocess["mean"] == [0.5, 0.5, 0.5]
    openai = get_weight_entry("ViT-B-32", "openai")
    assert openai.sha256_is_full and len(openai.sha256) == 64 and openai.sha256 in openai.url
    release = get_weight_entry("ViT-B-32", "laion400m_e31")  # open_clip release file: 8-hex prefix in its name
    assert release.sha256 == "d867053b" and not release.sha256_is_full
    hub_only = get_weight_entry("ViT-B-32", "laion2b_s34b_b79k")
    assert hub_only.hf_hub_id == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" and hub_only.url is None
    assert hub_only.sha256 is None and not hub_only.sha256_is_full


def test_quickgelu_tags_reachable_under_both_names():
    plain = get_weight_entry("ViT-B-32", "metaclip_400m")
    twin = get_weight_entry("ViT-B-32-quickgelu", "metaclip_400m")
    assert plain == twin
    assert plain.arch_overrides == {"vision.act": "quick_gelu", "text.act": "quick_gelu"}
    assert get_weight_entry("RN50", "openai").arch_overrides == QUICK_GELU_OVERRIDES
    assert get_weight_entry("ViT-B-32", "laion2b_s34b_b79k").arch_overrides == {}
    # the -quickgelu name lists only the tags trained with QuickGELU, as open_clip does
    assert "laion2b_s34b_b79k" not in list_pretrained_tags("ViT-B-32-quickgelu")


def test_entries_cannot_be_edited_through_the_api():
    entry = get_weight_entry("RN50", "openai")
    entry.preprocess["image_size"] = 999
    entry.arch_overrides.clear()
    fresh = get_weight_entry("RN50", "openai")
    assert fresh.preprocess["image_size"] == 224 and fresh.arch_overrides == QUICK_GELU_OVERRIDES


def test_tag_and_arch_spellings():
    entry = get_weight_entry("ViT-B-32", "laion2b-s34b-b79k")
    assert entry.tag == "laion2b_s34b_b79k"
    assert get_weight_entry("vit-b-32", "LAION2B_S34B_B79K") == entry
    assert split_model_tag("ViT-B-32::laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert split_model_tag("ViT-B-32") == ("ViT-B-32", None)
    with pytest.raises(ValueError, match="ARCH::TAG"):
        split_model_tag("ViT-B-32::")


def test_unknown_tag_lists_that_archs_tags():
    with pytest.raises(ValueError) as info:
        get_weight_entry("ViT-B-16", "laion2b_s34b_b79k")
    message = str(info.value)
    assert "laion2b_s34b_b79k" in message and "ViT-B-16" in message
    for tag in list_pretrained_tags("ViT-B-16"):
        assert tag in message


def test_open_clip_helper_names():
    open_clip = require("open_clip")
    assert weights.list_pretrained_tags_by_model("ViT-L-14") == list_pretrained_tags("ViT-L-14")
    for tag in ("openai", "webli", "laion2b-s34b-b79k"):
        theirs = [a for a in open_clip.list_pretrained_models_by_tag(tag)
                  if a.replace("-quickgelu", "") in _table_archs()]
        assert weights.list_pretrained_models_by_tag(tag) == theirs


def test_unknown_arch_suggests_close_names():
    with pytest.raises(ValueError, match="ViT-B-32"):
        get_weight_entry("ViT-B-33", "openai")
    assert list_pretrained_tags("not-a-model") == []


def test_format_table_for_the_cli():
    text = format_pretrained_table("RN50")
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["architecture", "tag"]
    assert len(lines) == 1 + len(list_pretrained_tags("RN50"))
    assert "openai" in text and "quick_gelu" in text
    assert len(format_pretrained_table().splitlines()) == 1 + len(list_pretrained())
    with pytest.raises(ValueError):
        format_pretrained_table("nope")


def test_committed_table_is_what_the_generator_writes():
    require("open_clip")
    spec = importlib.util.spec_from_file_location("make_pretrained_table", ROOT / "tools" / "make_pretrained_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = json.loads((ROOT / "src" / "clipforge" / "models" / "pretrained.json").read_text())
    assert module.build_table() == committed
    assert module.sha256_from_url("https://x/y/rn50-quickgelu-cc12m-f000538c.pt") == ("f000538c", False)
    assert module.split_hub("org/repo/") == ("org/repo", "open_clip_pytorch_model.bin")
    assert module.split_hub("org/repo/file.bin") == ("org/repo", "file.bin")
    assert weights._table()[0].arch == "RN50"
