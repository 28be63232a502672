"""A random transformers CLIPModel converted to clipforge gives the same features."""
import pytest
from references import require
import torch

transformers = require("transformers")

from clipforge.models.clip import CLIP  # noqa: E402
from clipforge.models.convert import config_from_hf, convert_state_dict, detect_layout  # noqa: E402
from model_helpers import randomize_  # noqa: E402


def _tiny_hf(eos_token_id: int, hidden_act: str) -> "transformers.CLIPModel":
    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, eos_token_id=eos_token_id, hidden_act=hidden_act)
    vision = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, hidden_act=hidden_act)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    return randomize_(transformers.CLIPModel(config).eval())


@pytest.mark.parametrize("eos_token_id,hidden_act", [(2, "quick_gelu"), (999, "gelu")])
def test_hf_clip_model_parity(eos_token_id, hidden_act):
    hf = _tiny_hf(eos_token_id, hidden_act)
    config = config_from_hf(hf.config.to_dict())
    assert config.text.pool == ("argmax" if eos_token_id == 2 else "eos")
    state_dict = hf.state_dict()
    assert detect_layout(state_dict) == "hf"
    model = CLIP(config).eval()
    model.load_state_dict(convert_state_dict(state_dict, config))
    images = torch.randn(3, 3, 32, 32)
    tokens = torch.randint(3, 990, (3, 16))
    tokens[:, 9] = 999  # end-of-text for the "eos" variant; the largest id for the "argmax" variant
    tokens[:, 10:] = 0
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=images)
        hf_text = hf.get_text_features(input_ids=tokens)
        hf_image = getattr(hf_image, "pooler_output", hf_image)
        hf_text = getattr(hf_text, "pooler_output", hf_text)
        ours_image, ours_text = model.encode_image(images), model.encode_text(tokens)
    assert (torch.nn.functional.normalize(hf_image, dim=-1) - model.encode_image(images, normalize=True)).abs().max() <= 1e-5
    assert (torch.nn.functional.normalize(hf_text, dim=-1) - model.encode_text(tokens, normalize=True)).abs().max() <= 1e-5
    assert (hf_image - ours_image).abs().max() <= 1e-4 and (hf_text - ours_text).abs().max() <= 1e-4
    assert torch.equal(model.logit_scale, hf.logit_scale)
