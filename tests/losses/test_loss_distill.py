import pytest
from references import require
import torch
import torch.nn.functional as F

from clipforge.losses import TeacherOutputs, clip_distill_loss, clip_loss, soft_cross_entropy

from _naive import naive_soft_ce


def _features(n, d=8):
    return F.normalize(torch.randn(n, d), dim=-1), F.normalize(torch.randn(n, d), dim=-1)


def test_soft_cross_entropy_matches_naive_loop():
    student, teacher = torch.randn(5, 7) * 3, torch.randn(5, 7) * 3
    assert soft_cross_entropy(student, teacher).item() == pytest.approx(naive_soft_ce(student, teacher), rel=1e-5)


def test_distill_loss_terms():
    images, texts = _features(6)
    t_images, t_texts = _features(6, 12)  # the teacher may have another embedding width
    contrastive, distill = clip_distill_loss(images, texts, 20.0, TeacherOutputs(t_images, t_texts, 50.0))
    assert torch.allclose(contrastive, clip_loss(images, texts, 20.0))
    per_image, per_text = 20.0 * images @ texts.T, 20.0 * texts @ images.T
    t_per_image, t_per_text = 50.0 * t_images @ t_texts.T, 50.0 * t_texts @ t_images.T
    expected = (naive_soft_ce(per_image, t_per_image) + naive_soft_ce(per_text, t_per_text)) / 2
    assert distill.item() == pytest.approx(expected, rel=1e-5)


def test_distill_matches_open_clip():
    open_clip_loss = require("open_clip.loss")
    images, texts = _features(8)
    t_images, t_texts = _features(8)
    ref = open_clip_loss.DistillClipLoss()(images, texts, 20.0, t_images, t_texts, 40.0, output_dict=True)
    contrastive, distill = clip_distill_loss(images, texts, 20.0, (t_images, t_texts, 40.0))
    assert torch.allclose(contrastive, ref["contrastive_loss"], rtol=1e-6)
    assert torch.allclose(distill, ref["distill_loss"], rtol=1e-6)


def test_teacher_gets_no_gradient_and_student_does():
    images, texts = (t.requires_grad_() for t in _features(4))
    t_images, t_texts = (t.requires_grad_() for t in _features(4))
    _, distill = clip_distill_loss(images, texts, 10.0, TeacherOutputs(t_images, t_texts, 10.0))
    distill.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert t_images.grad is None


def test_distill_bad_teacher():
    images, texts = _features(4)
    with pytest.raises(ValueError, match="teacher"):
        clip_distill_loss(images, texts, 10.0, None)
    with pytest.raises(ValueError, match="same batch"):
        clip_distill_loss(images, texts, 10.0, TeacherOutputs(*_features(3), 10.0))
