"""Distillation from a frozen teacher CLIP: the student's logits are trained towards the teacher's soft targets.

The distillation term is the cross-entropy between the teacher's softmax and the student's log-softmax, row-wise,
averaged over rows and over both directions (image-to-text and text-to-image), as open_clip's DistillClipLoss does.
The teacher's features are computed by the training step under ``torch.no_grad()``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from clipforge.dist import Collective, all_gather_no_grad, is_distributed
from clipforge.losses._checks import check_inputs, logits_dtype
from clipforge.losses.contrastive import clip_logits


class TeacherOutputs(NamedTuple):
    """What the frozen teacher produced for the batch: (B, D_t) features and its exponentiated scale."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor | float


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j softmax(teacher)_j * log_softmax(student)_j."""
    targets = teacher_logits.to(logits_dtype(teacher_logits)).softmax(dim=1)
    return -(targets * student_logits.to(logits_dtype(student_logits)).log_softmax(dim=1)).sum(dim=1).mean()


def _teacher_logits(teacher: TeacherOutputs, collective: Collective | None):
    images, texts = teacher.image_features.detach(), teacher.text_features.detach()
    scale, _ = check_inputs(images, texts, teacher.logit_scale)
    all_images, all_texts = images, texts
    if is_distributed(collective):
        all_images, all_texts = all_gather_no_grad(images, collective), all_gather_no_grad(texts, collective)
    scale = scale.detach()
    acc = logits_dtype(images)
    return scale * (images @ all_texts.T).to(acc), scale * (texts @ all_images.T).to(acc)


def clip_distill_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                      teacher: TeacherOutputs, *,
                      collective: Collective | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(contrastive, distill)``: the student's CLIP loss and its distillation term (same rows, same columns)."""
    if not isinstance(teacher, TeacherOutputs):
        if teacher is None or len(teacher) != 3:
            raise ValueError("distillation needs teacher=TeacherOutputs(image_features, text_features, "
                             "logit_scale) computed by the frozen teacher on the same batch")
        teacher = TeacherOutputs(*teacher)
    scale, _ = check_inputs(image_features, text_features, logit_scale)
    if teacher.image_features.shape[0] != image_features.shape[0]:
        raise ValueError(f"teacher features have batch {teacher.image_features.shape[0]} but the student's have "
                         f"{image_features.shape[0]}; run the teacher on the same batch")
    per_image, per_text, labels = clip_logits(image_features, text_features, scale, collective)
    teacher_per_image, teacher_per_text = _teacher_logits(teacher, collective)
    contrastive = (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
    distill = (soft_cross_entropy(per_image, teacher_per_image) + soft_cross_entropy(per_text, teacher_per_text)) / 2
    return contrastive, distill
