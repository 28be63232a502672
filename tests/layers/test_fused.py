"""The fused CPU inference path (layers/fused.py: oneDNN linear and conv+BN+add+ReLU) behind its one switch,
against the plain aten path, under every mode a caller may be in."""
import platform

import pytest
import torch

from clipforge.layers import fused as fused_module
from clipforge.layers.fused import fused_inference, fusion_applies, set_fused_inference
from clipforge.layers.transformer import Transformer
from clipforge.models.clip import CLIP
from clipforge.models.registry import get_architecture

pytestmark = [pytest.mark.filterwarnings("ignore:TF32 acceleration")]


def test_the_fused_ops_exist_on_x86_builds():
    """The CI wheels are x86_64 builds of torch with oneDNN: the fast path must really be exercised there."""
    if platform.machine() in ("x86_64", "AMD64"):
        assert fused_module._LINEAR_OPS and fused_module._CONV_OPS


def _plain_and_fused(fn):
    with torch.no_grad(), fused_inference(False):
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
        assert not fusion_applies(x, torch.zeros(2, dtype=torch.bfloat16))  # a bf16 weight
        with torch.backends.mkldnn.flags(enabled=False):
            assert not fusion_applies(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fusion_applies(x)
        with fused_inference(False):
            assert not fusion_applies(x)
        assert fusion_applies(x)
        set_fused_inference(False)
        try:
            assert not fusion_applies(x)
        finally:
            set_fused_inference(True)
    with torch.inference_mode():
        assert fusion_applies(x)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_fp32_then_autocast_then_fp32(name):
    """clip_benchmark's default AMP on CPU after an fp32 call: the fused path used to feed bf16 activations to
    fp32 oneDNN weights ("Input type (CPUBFloat16Type) and weight type (torch.FloatTensor)")."""
    torch.manual_seed(0)
    model = CLIP(get_architecture(name)).eval()
    size = model.config.vision.image_size
    images, tokens = torch.randn(2, 3, size, size), torch.randint(1, 99, (2, model.context_length))
    with torch.no_grad():
        first = model.encode_image(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.encode_image(images)
            mixed_text = model.encode_text(tokens)
        again = model.encode_image(images)
    assert mixed.dtype == torch.bfloat16 and mixed_text.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), first, atol=0.05, rtol=0.05)
    torch.testing.assert_close(again, first, atol=0, rtol=0)  # the cached fused weights are still right


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_half_precision_weights_take_the_plain_path(name):
    torch.manual_seed(0)
    model = CLIP(get_architecture(name)).eval()
    size = model.config.vision.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = model.encode_image(images)
        model.to(torch.bfloat16)
        low = model.encode_image(images.to(torch.bfloat16))
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad"])
def test_every_autograd_mode_gives_the_plain_result(mode):
    torch.manual_seed(0)
    model = CLIP(get_architecture("tiny-vit")).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), fused_inference(False):
        plain = model.encode_image(images)
    context = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(),
               "grad": torch.enable_grad()}[mode]
    with context:
        got = model.encode_image(images)
    torch.testing.assert_close(got.detach(), plain, atol=1e-5, rtol=1e-5)


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
    config = get_architecture(name)
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


def test_auto_uses_linear_fusion_only_where_it_measures_faster(monkeypatch):
    x, weight = torch.randn(2, 3), torch.randn(4, 3)
    monkeypatch.setattr(fused_module, "_enabled", None)
    for pays in (False, True):
        monkeypatch.setattr(fused_module, "linear_fusion_pays", lambda pays=pays: pays)
        with torch.no_grad():
            assert fusion_applies(x, weight) is pays
            assert fusion_applies(torch.randn(1, 3, 4, 4), conv=True)  # convolutions always pay
            torch.testing.assert_close(fused_module.linear(x, weight), x @ weight.T)
    with fused_inference(True), torch.no_grad():
        assert fusion_applies(x, weight)  # on: unconditional


def test_the_measurement_answers_once_per_process():
    fused_module.linear_fusion_pays.cache_clear()
    first = fused_module.linear_fusion_pays()
    assert isinstance(first, bool) and fused_module.linear_fusion_pays() is first
    assert fused_module.linear_fusion_pays.cache_info().misses == 1
