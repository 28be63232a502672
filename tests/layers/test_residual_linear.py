"""``fused.residual_linear``: a block's residual adds accumulated inside the GEMM (``addmm_`` into residual + bias),
the path training and plain CPU inference take. Same values (to float rounding) and the same gradients as
``residual + linear(x)``, and only where it applies."""
import pytest
import torch
from torch import nn

from clipforge.layers import fused, transformer
from clipforge.layers.transformer import Block, Transformer
from clipforge.models.clip import CLIP
from clipforge.models.registry import get_architecture


def _both(monkeypatch, fn):
    """(plain, accumulating): the plain run with the fused path's switch off, the other as by default."""
    torch.manual_seed(0)
    with fused.fused_inference(False):
        plain = fn()
    torch.manual_seed(0)
    return plain, fn()


def _spy(monkeypatch):
    calls = []
    real = transformer.residual_linear

    def counting(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(transformer, "residual_linear", counting)
    return calls


@pytest.mark.parametrize("is_causal", [False, True])
def test_block_values_and_gradients_equal_the_plain_path(monkeypatch, is_causal):
    torch.manual_seed(0)
    block = Block(48, 4, 4.0, "gelu")
    x = torch.randn(3, 7, 48, requires_grad=True)
    calls = _spy(monkeypatch)

    def run():
        x.grad = None
        for p in block.parameters():
            p.grad = None
        out = block(x, is_causal=is_causal)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in block.named_parameters()}, x.grad.clone()
    (plain, plain_grads, plain_x), (ours, our_grads, our_x) = _both(monkeypatch, run)
    assert len(calls) == 2  # both residual adds of the block, only on the second run
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_x, plain_x, rtol=1e-5, atol=1e-5)
    for name in plain_grads:
        torch.testing.assert_close(our_grads[name], plain_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_clip_training_step_equal(monkeypatch):
    """A whole model: loss and every gradient equal with and without the accumulating GEMMs."""
    config = get_architecture("tiny-vit")
    images, tokens = torch.randn(4, 3, config.vision.image_size, config.vision.image_size), \
        torch.randint(1, 400, (4, config.text.context_length))

    def step():
        torch.manual_seed(0)
        model = CLIP(config)
        image, text, scale = model(images, tokens)[:3]
        logits = scale * image @ text.t()
        loss = (logits.logsumexp(1) - logits.diag()).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    (plain_loss, plain), (loss, ours) = _both(monkeypatch, step)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert plain.keys() == ours.keys() and len(ours) > 20
    for name in plain:
        torch.testing.assert_close(ours[name], plain[name], rtol=1e-5, atol=1e-5, msg=name)


def test_applies_only_to_plain_float_cpu_linears():
    x, layer = torch.randn(2, 5, 8), nn.Linear(8, 8)
    assert fused.residual_linear_applies(x, layer)

    class Quantised(nn.Linear):
        def forward(self, inp):
            return super().forward(inp.round())
    assert not fused.residual_linear_applies(x, Quantised(8, 8))  # a subclass computes something else
    handle = layer.register_forward_hook(lambda *args: None)
    assert not fused.residual_linear_applies(x, layer)  # a hook must see the call
    handle.remove()
    with fused.fused_inference(False):
        assert not fused.residual_linear_applies(x, layer)
    assert not fused.residual_linear_applies(x, nn.Linear(8, 8, bias=False))
    assert not fused.residual_linear_applies(x, nn.Sequential(layer))  # an adapter (LoRA) wraps the layer
    assert not fused.residual_linear_applies(x.double(), layer)
    assert not fused.residual_linear_applies(x, layer.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused.residual_linear_applies(x, nn.Linear(8, 8))


def test_autocast_and_layer_scale_take_the_plain_path(monkeypatch):
    calls = _spy(monkeypatch)
    stack = Transformer(32, 2, 4, 4.0, "gelu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stack(torch.randn(2, 5, 32))
    assert not calls
    Transformer(32, 2, 4, 4.0, "gelu", layer_scale_init=0.1)(torch.randn(2, 5, 32))
    assert not calls
    stack(torch.randn(2, 5, 32))
    assert len(calls) == 4
    seen = []
    stack.blocks[0].mlp.register_forward_hook(lambda *args: seen.append(1))
    stack(torch.randn(2, 5, 32))
    assert seen == [1] and len(calls) == 6  # the hooked block takes the plain path, the other does not


def test_result_has_the_residual_shape_and_leaves_inputs_alone():
    residual, x, layer = torch.randn(2, 5, 8), torch.randn(2, 5, 16), nn.Linear(16, 8)
    before = residual.clone()
    out = fused.residual_linear(residual, x, layer)
    assert out.shape == residual.shape and torch.equal(residual, before)
    torch.testing.assert_close(out, residual + layer(x), rtol=1e-6, atol=1e-6)
