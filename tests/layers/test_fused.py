"""The oneDNN-fused inference path (layers/fused.py, ResNet conv+BN+add+ReLU) against the plain aten path."""
import pytest
import torch

from clipforge.layers import fused as fused_module
from clipforge.layers.fused import fusion_applies
from clipforge.layers.transformer import Transformer
from clipforge.models.clip import CLIP
from clipforge.models.registry import get_model_config

pytestmark = [pytest.mark.skipif(not fused_module._AVAILABLE, reason="torch built without oneDNN linear ops"),
              pytest.mark.filterwarnings("ignore:TF32 acceleration")]


def _plain_and_fused(fn):
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        plain = fn()
    with torch.inference_mode():
        fused = fn()
    return plain, fused


def test_fusion_only_without_autograd_on_cpu_float32():
    x = torch.randn(2, 3)
    assert not fusion_applies(x)  # autograd on
    with torch.no_grad():
        assert fusion_applies(x)
        assert not fusion_applies(x.double())
        with torch.backends.mkldnn.flags(enabled=False):
            assert not fusion_applies(x)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "quick_gelu"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fused_blocks_match_plain(act, is_causal):
    torch.manual_seed(0)
    stack = Transformer(width=64, depth=2, num_heads=4, mlp_ratio=4.0, act=act).eval()
    x = torch.randn(3, 10, 64)
    index = torch.tensor([0, 4, 9])
    plain, fused = _plain_and_fused(lambda: stack(x, is_causal=is_causal))
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    plain, fused = _plain_and_fused(lambda: stack(x, is_causal=is_causal, output_index=index))
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_layer_scale_blocks_keep_the_plain_path():
    torch.manual_seed(0)
    stack = Transformer(width=32, depth=1, num_heads=2, mlp_ratio=2.0, act="gelu", layer_scale_init=0.5).eval()
    x = torch.randn(2, 5, 32)
    plain, fused = _plain_and_fused(lambda: stack(x))
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-vit"])
def test_fused_towers_match_plain(name):
    torch.manual_seed(0)
    config = get_model_config(name)
    model = CLIP(config).eval()
    for block in model.visual.modules():  # make the zero-initialised residual branches matter
        if isinstance(block, torch.nn.BatchNorm2d):
            block.weight.data.uniform_(0.5, 1.5)
            block.running_mean.uniform_(-0.1, 0.1)
    size = config.vision.image_size
    images = torch.randn(2, 3, size, size)
    plain, fused = _plain_and_fused(lambda: model.encode_image(images))
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    assert plain.abs().max() > 1e-3
