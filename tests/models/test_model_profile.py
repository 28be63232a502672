"""Parameter and FLOP counts (meta device) against direct counts and the textbook formula."""
import pytest
import torch

from clipforge.models.clip import CLIP
from clipforge.models.profile import profile_model
from clipforge.models.registry import get_architecture


def test_profile_tiny_vit_matches_real_model():
    config = get_architecture("tiny-vit")
    profile = profile_model(config)
    model = CLIP(config)
    assert profile.params_total == sum(p.numel() for p in model.parameters())
    assert profile.params_image == sum(p.numel() for p in model.visual.parameters())
    assert profile.params_total == profile.params_image + profile.params_text + 1  # + logit_scale
    assert profile.size_on_disk("fp16") * 2 == profile.size_on_disk("fp32")
    with pytest.raises(ValueError, match="precision"):
        profile.size_on_disk("int3")


def test_vit_b32_gflops_close_to_formula():
    profile = profile_model(get_architecture("ViT-B-32"))
    tokens, width, depth = 50, 768, 12
    # per block: qkv + out proj (4 w^2) + mlp (8 w^2) per token, plus attention scores and mixing (2 n w)
    macs = depth * (tokens * 12 * width ** 2 + 2 * tokens ** 2 * width) + 49 * 3 * 32 * 32 * width + width * 512
    # the last block computes queries, output projection and MLP for the class token only
    skipped = (tokens - 1) * 10 * width ** 2 + 2 * (tokens - 1) * tokens * width
    assert profile.gflops_image == pytest.approx(2 * (macs - skipped) / 1e9, rel=0.01)
    assert 150e6 < profile.params_total < 152e6  # open_clip reports 151.28M


def test_profile_huge_model_is_free():
    profile = profile_model(get_architecture("ViT-bigG-14"))
    assert profile.params_total > 2.5e9
    assert profile.gflops_image > profile.gflops_text > 0
