"""docs/zoo.md (tools/make_zoo_table.py): open_clip's zoo against clipforge, names and shapes only, no downloads.

The tool is run once per module (about 20 s on one core): the committed table must be what it writes now, every
name clipforge resolves must match open_clip (architecture, state-dict keys and shapes, activations, parameter
count; for weight tags also the source, sha256 and preprocessing), and coverage must not shrink. Rows with a Hugging
Face text tower are built from the stand-in configs in tools/hf_stand_in_configs.json, only while the table is built.
"""
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from references import require
import torch

from clipforge.models import convert_config, hf_text, registry
from clipforge.models.clip import CLIP
from clipforge.models.registry import UnknownModelError, get_architecture

ROOT = Path(__file__).resolve().parents[2]
# what the committed table shows (open_clip 3.3.0: 144 architectures, 196 pairs): the whole zoo
MIN_ARCHS, MIN_PAIRS = 144, 196
MIN_RESOLVING_ARCHS, MIN_RESOLVING_PAIRS = 144, 196


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_zoo_table", ROOT / "tools" / "make_zoo_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    require("open_clip")
    require("timm")
    return _load_tool()


@pytest.fixture(scope="module")
def rows(tool):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return tool.build_rows()


def test_committed_table_is_what_the_tool_writes(tool, rows):
    assert tool.render(*rows) == tool.DOC_PATH.read_text(encoding="utf-8"), \
        "docs/zoo.md is stale: run `python tools/make_zoo_table.py` and review the diff"


def test_every_name_clipforge_resolves_matches_open_clip(rows):
    archs, pairs, version = rows
    assert version == "3.3.0" and len(archs) == 144 and len(pairs) == 196
    wrong = [f"{r.name}: {r.note}" for r in archs if r.resolves and not r.matches and not r.unchecked]
    wrong += [f"{p.arch}::{p.tag}: {p.note}" for p in pairs if p.resolves and not p.matches and not p.unchecked]
    assert not wrong
    # rows this table cannot build would be Hugging Face text towers without a stand-in config whose configs convert
    # exactly, never a way to hide a mismatch (today there are none)
    unchecked = [r for r in archs if r.unchecked]
    assert all(r.config_exact and r.family == "Hugging Face text towers" and not r.matches for r in unchecked)
    assert {p.arch for p in pairs if p.unchecked} <= {r.name for r in unchecked}
    assert sum(r.resolves for r in archs) >= MIN_RESOLVING_ARCHS
    assert sum(p.resolves for p in pairs) >= MIN_RESOLVING_PAIRS
    # every open_clip architecture that converts exactly has its preset (or is a -quickgelu twin of one)
    assert not [r.name for r in archs if "no preset" in r.note]
    assert sum(r.matches for r in archs) >= MIN_ARCHS and sum(p.matches for p in pairs) >= MIN_PAIRS


def test_hf_text_rows_are_built_from_the_stand_ins_with_open_clips_published_counts(tool, rows):
    archs, _, _ = rows
    hf_rows = [r for r in archs if r.stand_in]
    assert len(hf_rows) == 10 and all(r.matches for r in hf_rows)  # 9 CLIPs and coca_roberta-ViT-B-32
    profiled = [r for r in hf_rows if r.name in tool.PROFILE]
    assert len(profiled) == 8  # open_clip's docs/model_profile.csv has no nllb-clip-*-siglip rows
    for row in profiled:  # published in millions, 2 decimals
        assert round(row.params[1] / 1e6, 2) == tool.PROFILE[row.name][0], row.name
        assert "equals open_clip's published profile" in row.note


def test_stand_ins_cover_every_encoder_and_stay_inside_the_tool(tool, rows, monkeypatch, tmp_path):
    open_clip = require("open_clip")
    transformers = require("transformers")
    named = {open_clip.get_model_config(n)["text_cfg"].get("hf_model_name") for n in open_clip.list_models()}
    assert named - {None} == set(tool.HF_STAND_INS)
    for config in tool.HF_STAND_INS.values():
        transformers.AutoConfig.for_model(**config)  # every field is one transformers knows how to take
    # after the table: the real lookups are back, so clipforge without the hub still fails in one line
    assert isinstance(transformers.AutoConfig.__dict__["from_pretrained"], classmethod)
    assert hasattr(hf_text._hub_config, "cache_clear")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_text._download, "_cached_hub_file", lambda *a, **k: None)
    hf_text._hub_config.cache_clear()
    with pytest.raises(hf_text.HFConfigUnavailable, match="'roberta-base'"):
        with torch.device("meta"):
            CLIP(get_architecture("roberta-ViT-B-32"))


def test_check_exit_codes(tool, rows, tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "build_rows", lambda: rows)
    monkeypatch.setattr(tool, "DOC_PATH", tmp_path / "zoo.md")
    assert tool.main(["--check"]) == 1  # missing
    assert tool.main([]) == 0
    assert tool.main(["--check"]) == 0
    (tmp_path / "zoo.md").write_text(tool.render(*rows).replace("| yes |", "| **no** |", 1), encoding="utf-8")
    assert tool.main(["--check"]) == 1  # stale


def test_write_presets_writes_the_committed_files(tool, tmp_path, monkeypatch):
    open_clip = require("open_clip")
    shutil.copytree(registry.PRESET_DIR, tmp_path / "presets")
    (tmp_path / "presets" / "ViT-S-32.json").unlink()
    monkeypatch.setattr(registry, "PRESET_DIR", tmp_path / "presets")
    registry._shipped_files.cache_clear()
    try:
        (tmp_path / "presets" / "EVA02-B-16.json").unlink()
        names = ["ViT-S-32", "ViT-S-32-quickgelu", "RN50", "convnext_base", "EVA02-B-16", "coca_roberta-ViT-B-32"]
        assert tool.write_presets(names, open_clip.get_model_config) == ["ViT-S-32", "EVA02-B-16"]
    finally:
        monkeypatch.undo()
        registry._shipped_files.cache_clear()
        registry._load.cache_clear()
    for name in ("ViT-S-32", "EVA02-B-16"):
        written = (tmp_path / "presets" / f"{name}.json").read_text(encoding="utf-8")
        assert written == (registry.PRESET_DIR / f"{name}.json").read_text(encoding="utf-8")


def test_timm_siglip_activations_are_timm_s(tool):
    """convert_config writes out which timm SigLIP trunks use tanh GELU (clipforge never imports timm)."""
    timm = require("timm")
    names = [n for n in timm.list_models("vit_*_siglip_*") if convert_config._TIMM_SIGLIP_RE.match(n)]
    assert set(convert_config._TIMM_SIGLIP_GELU_TANH) <= set(names)
    for name in names:
        with tool._meta_without_init():
            trunk = timm.create_model(name, pretrained=False)
        acts = tool.activations(trunk, {"": "vision"})["vision"]
        assert acts == {"gelu_tanh" if name in convert_config._TIMM_SIGLIP_GELU_TANH else "gelu"}, name


@pytest.mark.parametrize("name, close", [("ViT-S-23", "ViT-S-32"), ("vit-m-61", "ViT-M-16"),
                                         ("ViT-SO400M-16-SigLIP3", "ViT-SO400M-16-SigLIP2")])
def test_unknown_name_is_one_line_with_close_names(name, close):
    with pytest.raises(UnknownModelError) as info:
        get_architecture(name)
    message = str(info.value)
    assert close in message and "\n" not in message


def test_new_presets_build_by_open_clip_names():
    for name in ("ViT-S-32", "vit-m-16-alt", "ViT-H-14-378-quickgelu", "ViT-gopt-16-SigLIP2-384"):
        config = get_architecture(name)
        with torch.device("meta"):
            assert sum(p.numel() for p in CLIP(config).parameters()) > 0
    assert get_architecture("ViT-H-14-378-quickgelu").vision.act == "quick_gelu"
    siglip2 = get_architecture("ViT-B-32-SigLIP2-256")
    assert siglip2.vision.act == siglip2.text.act == "gelu_tanh"
