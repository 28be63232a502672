"""CLIP model behaviour: outputs, bad input, grad checkpointing, tower locking, patch dropout, image-size override."""
import dataclasses

import pytest
import torch

from clipforge.config import apply_overrides
from clipforge.models.clip import CLIP
from clipforge.models.convert import convert_state_dict, resize_state_dict_pos_embed
from clipforge.models.registry import get_architecture


def _batch(config, batch=2):
    size = config.vision.image_size
    tokens = torch.randint(1, 1000, (batch, config.text.context_length))
    return torch.randn(batch, 3, size, size), tokens


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet", "tiny-siglip"])
def test_forward_outputs(name):
    config = get_architecture(name)
    model = CLIP(config).eval()
    images, tokens = _batch(config)
    out = model(images, tokens)
    assert len(out) == (4 if config.init_logit_bias is not None else 3)
    image_features, text_features, scale = out[:3]
    assert image_features.shape == text_features.shape == (2, config.embed_dim)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(scale, torch.tensor(config.init_logit_scale).exp())
    as_dict = model(images=images, tokens=tokens, output_dict=True)
    assert torch.equal(as_dict["image_features"], image_features)
    assert ("logit_bias" in as_dict) == (config.init_logit_bias is not None)
    assert model(images=images)[1] is None
    raw = model.encode_image(images)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), image_features, atol=1e-6)


def test_too_long_tokens_rejected():
    config = get_architecture("tiny-vit")
    model = CLIP(config)
    with pytest.raises(ValueError, match="context_length is 16"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tokens"):
        model.encode_text(torch.zeros(1, 16))
    # shorter sequences are fine (positional embedding is sliced)
    assert model.encode_text(torch.ones(1, 8, dtype=torch.long)).shape == (1, config.embed_dim)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_wrong_image_size_rejected(name):
    model = CLIP(get_architecture(name))
    with pytest.raises(ValueError, match="vision.image_size=48"):
        model.encode_image(torch.zeros(1, 3, 48, 48))


def test_causal_mask_makes_prefix_independent_of_suffix():
    config = apply_overrides(get_architecture("tiny-vit"), {"text.pool": "first"})
    model = CLIP(config).eval()
    tokens = torch.randint(1, 1000, (1, 16))
    changed = tokens.clone()
    changed[:, 5:] = 7
    assert torch.allclose(model.encode_text(tokens), model.encode_text(changed), atol=1e-6)
    bidirectional = CLIP(apply_overrides(config, {"text.causal_mask": False})).eval()
    assert not torch.allclose(bidirectional.encode_text(tokens), bidirectional.encode_text(changed), atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-siglip"])
def test_grad_checkpointing_same_gradients(name):
    config = get_architecture(name)
    model = CLIP(config)
    images, tokens = _batch(config)

    def grads():
        model.zero_grad()
        image_features, text_features = model(images, tokens)[:2]
        (image_features @ text_features.T).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.visual.transformer.grad_checkpointing and model.text.transformer.grad_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_lock_image_tower_groups():
    model = CLIP(get_architecture("tiny-vit"))
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.text.parameters())
    model.lock_image_tower(unlocked_groups=2)  # last block + norm, and the projection
    trainable = {n for n, p in model.visual.named_parameters() if p.requires_grad}
    assert "proj.weight" in trainable and "norm.weight" in trainable
    assert any(n.startswith("transformer.blocks.1.") for n in trainable)
    assert not any(n.startswith("transformer.blocks.0.") for n in trainable)
    assert "pos_embed" not in trainable


def test_lock_resnet_freezes_batch_norm_stats():
    model = CLIP(get_architecture("tiny-resnet"))
    model.lock_image_tower(freeze_bn_stats=True)
    model.train()
    bn = model.visual.bn1
    before = bn.running_mean.clone()
    model.encode_image(torch.randn(2, 3, 64, 64))
    assert not bn.training and torch.equal(before, bn.running_mean)
    assert set(model.state_dict()) == set(CLIP(get_architecture("tiny-resnet")).state_dict())
    with pytest.raises(ValueError, match="partial locking"):
        model.lock_image_tower(unlocked_groups=1)


def test_lock_text_tower():
    model = CLIP(get_architecture("tiny-vit"))
    model.lock_text_tower(unlocked_layers=1)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert trainable == {"proj.weight"}
    with pytest.raises(ValueError, match="freeze_layer_norm"):
        model.lock_text_tower(freeze_layer_norm=False)


def test_patch_dropout_only_in_training():
    config = apply_overrides(get_architecture("tiny-vit"), {"vision.patch_dropout": 0.5})
    model = CLIP(config)
    images = torch.randn(2, 3, 32, 32)
    model.train()
    assert model.visual.embed(images).shape[1] == 1 + 8  # class token + half of 16 patches
    model.eval()
    assert model.visual.embed(images).shape[1] == 1 + 16
    torch.testing.assert_close(model.encode_image(images), model.encode_image(images))


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_image_size_override_resizes_pos_embed(name):
    config = get_architecture(name)
    trained = CLIP(config).eval()
    bigger = dataclasses.replace(config, vision=dataclasses.replace(config.vision,
                                                                    image_size=config.vision.image_size * 2))
    state_dict = convert_state_dict(trained.state_dict(), bigger)  # grid difference is allowed here
    model = CLIP(bigger).eval()
    model.load_state_dict(resize_state_dict_pos_embed(state_dict, bigger))
    key = "visual.pos_embed" if name == "tiny-vit" else "visual.attn_pool.pos_embed"
    assert torch.equal(model.state_dict()[key][0], trained.state_dict()[key][0])  # prefix token kept
    size = bigger.vision.image_size
    assert model.encode_image(torch.randn(1, 3, size, size)).shape == (1, config.embed_dim)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(dtype):
    config = get_architecture("tiny-vit")
    model = CLIP(config).eval()
    images, tokens = _batch(config)
    reference = model(images, tokens)
    half = model.to(dtype)(images.to(dtype), tokens)
    for ours, ref in zip(half[:2], reference[:2]):
        assert ours.dtype == dtype
        assert (ours.float() - ref).abs().max() < 3e-2


def test_resnet_folded_batch_norm_tracks_weight_changes():
    config = get_architecture("tiny-resnet")
    model = CLIP(config).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first = model.encode_image(images)
        model.visual.layer1[0].bn3.weight.add_(1.0)  # zero-init residual branch becomes active
        model.visual.bn1.running_var.mul_(4.0)
        cached = model.encode_image(images)
    fresh = CLIP(config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(first, cached, atol=1e-4)
        torch.testing.assert_close(cached, fresh.encode_image(images))
    # with autograd on, the fold is differentiable and matches the cached result
    with_grad = model.encode_image(images)
    with_grad.sum().backward()
    assert model.visual.bn1.weight.grad is not None
    torch.testing.assert_close(with_grad.detach(), cached)
    model.train()  # BatchNorm in training mode uses batch statistics, not the fold
    assert not torch.allclose(model.encode_image(images), cached, atol=1e-4)


def test_large_inference_batches_are_chunked_transparently(monkeypatch):
    import clipforge.models.clip as clip_module
    monkeypatch.setattr(clip_module, "INFERENCE_CHUNK", 3)
    config = get_architecture("tiny-vit")
    model = CLIP(config).eval()
    images, tokens = _batch(config, batch=7)
    calls = []
    model.visual.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        chunked_images, chunked_text = model.encode_image(images), model.encode_text(tokens)
    assert calls == [3, 3, 1]
    with torch.enable_grad():
        whole = model.encode_image(images)  # autograd on: one call, no chunking
    assert calls[-1] == 7
    torch.testing.assert_close(chunked_images, whole.detach())
    torch.testing.assert_close(chunked_text, torch.cat([model.encode_text(t) for t in tokens.split(1)]).detach())
