"""Loop-by-loop references of the losses, written from the papers' formulas (O(B^2) Python loops, float64)."""
import math

import torch


def naive_clip(images, texts, scale):
    images, texts, scale = images.double(), texts.double(), float(scale)
    n = images.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(images[i] @ texts[j]) for j in range(n)]  # image i against every text
        col = [scale * float(texts[i] @ images[j]) for j in range(n)]  # text i against every image
        total += (math.log(sum(math.exp(v) for v in row)) - row[i]) + (math.log(sum(math.exp(v) for v in col)) - col[i])
    return total / (2 * n)


def naive_siglip(images, texts, scale, bias):
    images, texts = images.double(), texts.double()
    n = images.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            label = 1.0 if i == j else -1.0
            logit = float(scale) * float(images[i] @ texts[j]) + float(bias)
            total += math.log1p(math.exp(-label * logit))  # -log sigmoid(label * logit)
    return total / n


def naive_soft_ce(student, teacher):
    """Row-wise cross-entropy of softmax(teacher) against log_softmax(student), averaged."""
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist()):
        t_norm = math.log(sum(math.exp(v) for v in t_row))
        s_norm = math.log(sum(math.exp(v) for v in s_row))
        total -= sum(math.exp(t - t_norm) * (s - s_norm) for s, t in zip(s_row, t_row))
    return total / len(student)
