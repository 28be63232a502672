"""Building blocks against their plain-formula references."""
import pytest
from references import require
import torch

from clipforge.layers.attention import Attention, causal_mask, eager_attention
from clipforge.layers.embed import PatchEmbed, resize_pos_embed
from clipforge.layers.mlp import QuickGELU, create_act, mlp_hidden
from clipforge.layers.norm import LayerNorm, freeze_batch_norm
from clipforge.layers.pool import AttentionPool2d, LatentAttentionPool, pool_text
from clipforge.layers.regularize import PatchDropout


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_matches_eager(dtype, atol, is_causal):
    attn = Attention(32, 4).to(dtype)
    x = torch.randn(2, 7, 32, dtype=dtype)
    fast = attn(x, is_causal=is_causal)
    attn.use_sdpa = False
    slow = attn(x, is_causal=is_causal)
    assert (fast.float() - slow.float()).abs().max() <= atol


def test_attention_matches_torch_multihead():
    attn = Attention(32, 4)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ref.in_proj_weight.data.copy_(attn.qkv.weight)
    ref.in_proj_bias.data.copy_(attn.qkv.bias)
    ref.out_proj.load_state_dict(attn.proj.state_dict())
    x = torch.randn(2, 5, 32)
    mask = causal_mask(5)
    torch.testing.assert_close(attn(x, is_causal=True), ref(x, x, x, attn_mask=mask, need_weights=False)[0])


def test_eager_attention_formula():
    q, k, v = torch.randn(3, 1, 1, 4, 8).unbind(0)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-1) @ v
    torch.testing.assert_close(eager_attention(q, k, v), expected)


def test_activations():
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    assert isinstance(create_act("gelu_tanh"), torch.nn.GELU)
    with pytest.raises(ValueError, match="quick_gelu"):
        create_act("relu")
    assert mlp_hidden(32, 37 / 32) == 37 and mlp_hidden(1664, 4.9231) == 8192


def test_layer_norm_half_precision_upcasts():
    norm = LayerNorm(16)
    x = torch.randn(4, 16) * 100
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(x, (16,)))
    half = norm.to(torch.float16)(x.half())
    assert half.dtype == torch.float16
    assert (half.float() - norm.float()(x)).abs().max() < 1e-2


def test_patch_dropout_keeps_prefix_and_is_identity_in_eval():
    drop = PatchDropout(0.75, num_prefix_tokens=1)
    x = torch.arange(2 * 9, dtype=torch.float32).view(2, 9, 1).expand(2, 9, 3)
    out = drop.train()(x)
    assert out.shape == (2, 1 + 2, 3)
    assert torch.equal(out[:, 0], x[:, 0])
    assert set(out[0, 1:, 0].tolist()) <= set(x[0, 1:, 0].tolist())
    assert drop.eval()(x) is x
    with pytest.raises(ValueError):
        PatchDropout(1.0)


def test_resize_pos_embed():
    pos = torch.randn(1 + 16, 8)
    assert resize_pos_embed(pos, (4, 4)) is pos
    out = resize_pos_embed(pos, (6, 6))
    assert out.shape == (1 + 36, 8) and torch.equal(out[0], pos[0])
    constant = torch.ones(16, 8)
    torch.testing.assert_close(resize_pos_embed(constant, (3, 3), num_prefix_tokens=0), torch.ones(9, 8))
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(torch.randn(1 + 15, 8), (4, 4))


def test_patch_embed_shape():
    assert PatchEmbed(8, 16)(torch.randn(2, 3, 32, 32)).shape == (2, 16, 16)


def test_pool_text():
    x = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    tokens = torch.tensor([[5, 9, 1, 0], [5, 6, 9, 9]])
    assert pool_text(x, tokens, "argmax").flatten().tolist() == [1.0, 6.0]
    assert pool_text(x, tokens, "eos", eos_id=9).flatten().tolist() == [1.0, 6.0]
    assert pool_text(x, tokens, "last").flatten().tolist() == [3.0, 7.0]
    with pytest.raises(ValueError, match="argmax"):
        pool_text(x, tokens, "mean")


def test_latent_pool_matches_timm():
    timm_pool = require("timm.layers").AttentionPoolLatent
    ours = LatentAttentionPool(32, 4, 4.0, "gelu", norm_eps=1e-6)
    ref = timm_pool(32, num_heads=4, norm_layer=torch.nn.LayerNorm).eval()
    state = {k: v for k, v in ref.state_dict().items()}
    state["latent"] = state["latent"][0]
    ours.load_state_dict(state)
    ref.norm.eps = 1e-6
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(ours(x), ref(x))


def test_resnet_attention_pool_matches_full_attention():
    pool = AttentionPool2d(grid=3, width=16, num_heads=2, out_dim=8)
    x = torch.randn(2, 16, 3, 3)
    tokens = x.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.pos_embed
    k_w, v_w = pool.kv.weight.chunk(2)
    k_b, v_b = pool.kv.bias.chunk(2)
    expected, _ = torch.nn.functional.multi_head_attention_forward(
        tokens.transpose(0, 1), tokens.transpose(0, 1), tokens.transpose(0, 1), 16, 2, None,
        torch.cat([pool.q.bias, k_b, v_b]), None, None, False, 0.0, pool.proj.weight, pool.proj.bias,
        use_separate_proj_weight=True, q_proj_weight=pool.q.weight, k_proj_weight=k_w, v_proj_weight=v_w,
        need_weights=False)
    torch.testing.assert_close(pool(x), expected[0])


def test_freeze_batch_norm_survives_train():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    freeze_batch_norm(net)
    net.train()
    before = net[1].running_mean.clone()
    net(torch.randn(2, 3, 4, 4))
    assert not net[1].training and torch.equal(before, net[1].running_mean)
    assert not net[1].weight.requires_grad


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_transformer_output_index_matches_full_forward(is_causal, use_sdpa):
    from clipforge.layers.transformer import Transformer
    stack = Transformer(32, 2, 4, 4.0, "gelu", layer_scale_init=0.3)
    for block in stack.blocks:
        block.attn.use_sdpa = use_sdpa
    x = torch.randn(3, 6, 32)
    index = torch.tensor([5, 0, 3])
    full = stack(x, is_causal=is_causal)[torch.arange(3), index]
    torch.testing.assert_close(stack(x, is_causal=is_causal, output_index=index), full)
    stack.grad_checkpointing = True
    torch.testing.assert_close(stack(x.requires_grad_(), is_causal=is_causal, output_index=index), full)
