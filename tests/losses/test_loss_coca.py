"""CoCa loss: the same value as open_clip's CoCaLoss on the same inputs, padding ignored, and the training step
trains a CoCa model with it."""
import pytest
from references import require
import torch
import torch.nn.functional as F

from clipforge.config import ConfigError, from_dict
from clipforge.losses import LossConfig, caption_loss, clip_loss, create_loss


def _inputs(batch=6, length=9, vocab=50, dim=16):
    gen = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    texts = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    logits = torch.randn(batch, length, vocab, generator=gen) * 3
    labels = torch.randint(1, vocab, (batch, length), generator=gen)
    labels[:, -3:] = 0  # padding
    labels[0, 2:] = 0
    return images, texts, logits, labels


@pytest.mark.parametrize("weights", [(2.0, 1.0), (1.0, 0.0), (0.5, 3.0)])
def test_matches_open_clip_coca_loss(weights):
    open_clip = require("open_clip")
    caption_weight, clip_weight = weights
    images, texts, logits, labels = _inputs()
    scale = torch.tensor(14.3)
    theirs = open_clip.loss.CoCaLoss(caption_loss_weight=caption_weight, clip_loss_weight=clip_weight)(
        images, texts, logits, labels, scale, output_dict=True)
    loss = create_loss(LossConfig(kind="coca", caption_weight=caption_weight, contrastive_weight=clip_weight,
                                  tiled=False))
    ours = loss(images, texts, scale, captions=(logits, labels))
    assert ours["loss"].item() == pytest.approx(sum(v.item() for v in theirs.values()), rel=1e-6)
    assert (caption_weight * ours["caption"]).item() == pytest.approx(theirs["caption_loss"].item(), rel=1e-6)
    assert set(ours) == {"loss", "contrastive", "caption"}


def test_padding_is_ignored_and_tiled_clip_part_agrees():
    images, texts, logits, labels = _inputs()
    changed = logits.clone()
    changed[labels == 0] = torch.randn_like(changed[labels == 0])  # logits at padded positions do not matter
    assert caption_loss(changed, labels).item() == pytest.approx(caption_loss(logits, labels).item(), rel=1e-6)
    dense = create_loss(LossConfig(kind="coca", tiled=False))(images, texts, 10.0, captions=(logits, labels))
    tiled = create_loss(LossConfig(kind="coca", tiled=True, tile_size=4))(images, texts, 10.0,
                                                                          captions=(logits, labels))
    assert torch.allclose(dense["loss"], tiled["loss"], rtol=1e-5)
    assert torch.allclose(dense["contrastive"], clip_loss(images, texts, 10.0))


def test_bad_uses():
    images, texts, logits, labels = _inputs()
    with pytest.raises(ValueError, match="needs the caption decoder's logits"):
        create_loss(LossConfig(kind="coca"))(images, texts, 10.0)
    with pytest.raises(ValueError, match="do not match"):
        caption_loss(logits, labels[:, :-1])
    with pytest.raises(ConfigError, match="caption_weight"):
        from_dict(LossConfig, {"kind": "coca", "caption_weight": -1.0})
    assert create_loss(LossConfig(kind="coca")).needs_captions and not create_loss(LossConfig()).needs_captions


def test_train_step_trains_a_coca_model():
    from clipforge.models.factory import create_model
    from clipforge.training.step import train_step

    torch.manual_seed(0)
    model = create_model("tiny-coca")
    images = torch.randn(4, 3, 32, 32)
    tokens = torch.randint(1, 1000, (4, 16))
    tokens[:, 0], tokens[:, 8], tokens[:, 9:] = 49406, 49407, 0
    loss_fn = create_loss(LossConfig(kind="coca"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = train_step(model, images, tokens, loss_fn, optimizer)
    for _ in range(5):
        last = train_step(model, images, tokens, loss_fn, optimizer, grad_clip=1.0)
    assert set(first.parts) == {"loss", "contrastive", "caption"}
    assert last.loss < first.loss and not last.skipped
    with pytest.raises(ValueError, match="accum_steps=1"):
        train_step(model, images, tokens, loss_fn, optimizer, accum_steps=2)
    with pytest.raises(ValueError, match="needs a CoCa model"):
        train_step(create_model("tiny-vit"), images, tokens, loss_fn, optimizer)
