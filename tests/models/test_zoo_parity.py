"""Feature parity with open_clip for one architecture of each family added from its zoo (tools/make_zoo_table.py).

The reference is built from open_clip's own config (not from clipforge's conversion of it), given random weights,
and its state dict is loaded into clipforge's model for the preset of the same name. Large architectures keep
everything that makes them what they are (widths, heads, MLP ratio, resolution, pooling, activations) but run with
fewer blocks or a smaller vocabulary; the test first proves that the shrunk config is the preset plus exactly
those overrides.
"""
import pytest
from references import require
import torch

open_clip = require("open_clip")

from clipforge.config import apply_overrides  # noqa: E402
from clipforge.models.convert import config_from_open_clip  # noqa: E402
from clipforge.models.registry import get_architecture  # noqa: E402
from model_helpers import randomize_  # noqa: E402
from test_open_clip_parity import TOL, _clipforge_from  # noqa: E402

# name -> (open_clip config changes, the same changes as clipforge overrides); empty: full size
CASES = {
    "ViT-S-32": ({}, {}),  # small ViTs people train from scratch
    "ViT-M-16-alt": ({}, {}),  # medium, with layer scale
    "ViT-B-32-256": ({}, {}),  # another resolution of a known size
    "ViT-e-14": ({"vision_cfg.layers": 1, "text_cfg.layers": 1},  # head width 112, MLP ratio 8.5715
                 {"vision.depth": 1, "text.depth": 1}),
    "ViT-H-14-378-quickgelu": ({"vision_cfg.layers": 1, "text_cfg.layers": 1},  # 27x27 grid, QuickGELU twin
                               {"vision.depth": 1, "text.depth": 1}),
    "ViT-H-14-worldwide": ({"vision_cfg.layers": 1, "text_cfg.layers": 2, "text_cfg.vocab_size": 4000},
                           {"vision.depth": 1, "text.depth": 2, "text.vocab_size": 4000}),  # eos pooling, id 2
    "ViT-B-32-SigLIP2-256": ({"text_cfg.layers": 2, "text_cfg.vocab_size": 4000},  # tanh GELU in both towers
                             {"text.depth": 2, "text.vocab_size": 4000}),
    # CLIPA: no ln_pre, LayerNorm after average pooling, bidirectional text pooled at the last position
    "ViT-L-14-CLIPA": ({"vision_cfg.layers": 2, "text_cfg.layers": 2}, {"vision.depth": 2, "text.depth": 2}),
    "ViT-H-14-CLIPA-336": ({"vision_cfg.layers": 1, "text_cfg.layers": 1},  # head width 80, 24x24 grid
                           {"vision.depth": 1, "text.depth": 1}),
    # text tower without a projection; the timm trunk is shrunk through TIMM_DEPTH
    "ViT-SO400M-16-SigLIP-i18n-256": ({"text_cfg.layers": 2, "text_cfg.vocab_size": 4000},
                                      {"vision.depth": 2, "text.depth": 2, "text.vocab_size": 4000}),
}
# name -> blocks of open_clip's timm trunk (its config names a timm model; timm takes the depth as a keyword)
TIMM_DEPTH = {"ViT-SO400M-16-SigLIP-i18n-256": 2}


def _open_clip_config(name: str, changes: dict) -> dict:
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in open_clip.get_model_config(name).items()}
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def _reference(cfg: dict, timm_depth: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = open_clip.model.CustomTextCLIP if cfg.get("custom_text") else open_clip.model.CLIP
    with pytest.MonkeyPatch.context() as mp:
        if timm_depth is not None:
            timm = require("timm")
            create = timm.create_model
            mp.setattr(timm, "create_model", lambda *args, **kwargs: create(*args, depth=timm_depth, **kwargs))
        return cls(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()


def _inputs(config, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    size = config.vision.image_size
    images = torch.randn(batch, 3, size, size, generator=gen)
    tokens = torch.randint(3, config.text.vocab_size, (batch, config.text.context_length), generator=gen)
    tokens[:, -3:] = 0  # padding after the end of the text, as a tokenizer produces
    if config.text.pool == "eos":
        tokens[0, 7], tokens[1, 12] = config.text.eos_id, config.text.eos_id  # pooled at different positions
    return images, tokens


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_features_as_open_clip(name):
    oc_changes, overrides = CASES[name]
    cfg = _open_clip_config(name, oc_changes)
    config = config_from_open_clip(cfg)
    if name in TIMM_DEPTH:  # a timm trunk's depth comes with its name, not in open_clip's config
        config = apply_overrides(config, {"vision.depth": TIMM_DEPTH[name]})
    assert config == apply_overrides(get_architecture(name), overrides)  # the preset is what runs here
    reference = _reference(cfg, TIMM_DEPTH.get(name))
    # every tensor perturbed where that is cheap; above that, the 1-D ones, where inert inits (zeros, ones) live
    reference = randomize_(reference, vectors_only=sum(p.numel() for p in reference.parameters()) > 80_000_000)
    model = _clipforge_from(reference, config)
    images, tokens = _inputs(config)
    with torch.no_grad():
        pairs = [(model.encode_image(images, normalize=True), reference.encode_image(images, normalize=True)),
                 (model.encode_text(tokens, normalize=True), reference.encode_text(tokens, normalize=True))]
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= TOL
