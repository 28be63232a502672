"""Metrics on constructed scores where the right answer is known, and against clip_benchmark's own functions."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.evaluation.metrics import (accuracy, average_precision_per_class, classification_metrics,
                                          mean_per_class_recall)
from clipforge.evaluation.retrieval import recall_at_k
from eval_fixtures import patch_clip_benchmark_float


def test_perfect_classifier_scores_one():
    targets = torch.arange(10).repeat(3)
    logits = F.one_hot(targets, 10).float() * 5 + torch.rand(30, 10)  # true class always far ahead
    m = classification_metrics(logits, targets, 10)
    assert m == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}


def test_adversarial_classifier_ranks_true_class_last():
    targets = torch.arange(8).repeat(2)
    logits = -F.one_hot(targets, 8).float() + 0.01 * torch.rand(16, 8)  # true class always lowest
    assert accuracy(logits, targets, (1, 5, 7, 8)) == [0.0, 0.0, 0.0, 1.0]


def test_hand_computed_topk_and_per_class_recall():
    logits = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # class 0, rank 0
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],   # class 5, rank 5
                           [0.1, 0.9, 0.8, 0.0, 0.0, 0.0],   # class 2, rank 1
                           [0.0, 0.2, 0.1, 0.0, 0.0, 0.0]])  # class 1, rank 0
    targets = torch.tensor([0, 5, 2, 1])
    assert accuracy(logits, targets, (1, 2, 5, 6)) == [0.5, 0.75, 0.75, 1.0]
    # classes 0 and 1 fully right, 2 and 5 wrong: mean over the 4 present classes
    assert mean_per_class_recall(logits, targets) == pytest.approx(0.5)


def test_pessimistic_ties_give_no_credit():
    """With the pessimistic rule a collapsed model (all logits equal) scores 0, not what index order gives."""
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    logits = torch.zeros(6, 6)
    m = classification_metrics(logits, targets, 6, ties="pessimistic")
    assert m["acc1"] == 0.0 and m["acc5"] == 0.0 and m["mean_per_class_recall"] == 0.0
    assert accuracy(logits, targets, (6,), ties="pessimistic") == [1.0]


def test_reference_ties_follow_clip_benchmark(monkeypatch):
    """The default rule is clip_benchmark's own top-k / argmax, ties included (comparable with published tables)."""
    from clip_benchmark.metrics import zeroshot_classification as zc
    from sklearn.metrics import balanced_accuracy_score
    patch_clip_benchmark_float(monkeypatch)
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    logits = torch.zeros(8, 6)
    logits[6:, :3] = 1.0  # ties between three classes
    m = classification_metrics(logits, targets, 6)
    ref1, ref5 = zc.accuracy(logits, targets, topk=(1, 5))
    assert m["acc1"] == pytest.approx(ref1) and m["acc5"] == pytest.approx(ref5)
    assert m["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(targets, logits.argmax(1)))
    assert m["acc5"] > classification_metrics(logits, targets, 6, ties="pessimistic")["acc5"]
    with pytest.raises(ValueError, match="unknown tie rule"):
        classification_metrics(logits, targets, 6, ties="random")


def test_random_scores_are_at_chance():
    torch.manual_seed(0)
    targets = torch.randint(0, 10, (20000,))
    m = classification_metrics(torch.randn(20000, 10), targets, 10)
    assert abs(m["acc1"] - 0.1) < 0.01 and abs(m["acc5"] - 0.5) < 0.015
    assert abs(m["mean_per_class_recall"] - 0.1) < 0.01


def test_acc5_is_nan_below_five_classes():
    m = classification_metrics(torch.eye(3), torch.arange(3), 3)
    assert m["acc1"] == 1.0 and math.isnan(m["acc5"])


def test_non_finite_scores_are_an_error():
    logits = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(logits, torch.tensor([0, 1]), 2)


def test_labels_beyond_classnames_are_an_error():
    with pytest.raises(ValueError, match="classnames file does not match"):
        classification_metrics(torch.rand(3, 4), torch.tensor([0, 1, 7]), 4)


def test_average_precision_hand_computed():
    # class 0: ranking = [pos, neg, pos] -> (1/1 + 2/3) / 2 ; class 1: no positive -> 0 (as clip_benchmark)
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 0]])
    ap = average_precision_per_class(scores, targets)
    assert ap.tolist() == pytest.approx([(1 + 2 / 3) / 2, 0.0])


def test_retrieval_hand_computed():
    # 3 images, captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2 (unit vectors on axes)
    images = torch.eye(3)
    texts = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.0, 0.1, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.9]]), dim=-1)
    index = torch.tensor([0, 0, 1, 2])
    m = recall_at_k(images, texts, index, ks=(1, 2))
    # text->image: caption 0 right; caption 1 prefers image 2 (rank 2); caption 2 right; caption 3 prefers image 0
    assert m["image_retrieval_recall@1"] == 0.5
    assert m["image_retrieval_recall@2"] == 0.75
    # image->text: image 0 best caption 0 or 3 -> caption 0 (a positive) wins; image 1 -> caption 2 wins;
    # image 2 -> caption 1 (score 0.995) beats its own caption 3
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@2"] == 1.0


def test_retrieval_perfect_and_collapsed():
    images = torch.eye(4)
    texts = torch.eye(4).repeat_interleave(2, dim=0)  # two exact captions per image
    index = torch.arange(4).repeat_interleave(2)
    perfect = recall_at_k(images, texts, index, ks=(1,))
    assert perfect == {"image_retrieval_recall@1": 1.0, "text_retrieval_recall@1": 1.0}
    collapsed = recall_at_k(torch.ones(4, 3), torch.ones(8, 3), index, ks=(1, 3), ties="pessimistic")
    assert collapsed["image_retrieval_recall@1"] == 0.0 and collapsed["text_retrieval_recall@1"] == 0.0
    assert collapsed["image_retrieval_recall@3"] == 0.0
    reference = recall_at_k(torch.ones(4, 3), torch.ones(8, 3), index, ks=(1, 3))
    assert reference["image_retrieval_recall@3"] > 0  # top-k picks some of the tied items, as clip_benchmark


def test_metrics_equal_clip_benchmark_functions(monkeypatch):
    from clip_benchmark.metrics import zeroshot_classification as zc
    from clip_benchmark.metrics import zeroshot_retrieval as zr
    from sklearn.metrics import balanced_accuracy_score
    patch_clip_benchmark_float(monkeypatch)
    torch.manual_seed(1)
    logits, targets = torch.randn(500, 12), torch.randint(0, 12, (500,))
    ours = classification_metrics(logits, targets, 12)
    ref1, ref5 = zc.accuracy(logits, targets, topk=(1, 5))
    assert ours["acc1"] == pytest.approx(ref1, abs=1e-7) and ours["acc5"] == pytest.approx(ref5, abs=1e-7)
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(targets, logits.argmax(1)))
    multi = (torch.rand(200, 7) < 0.3).float()
    assert average_precision_per_class(logits[:200, :7], multi).tolist() == pytest.approx(
        zc.average_precision_per_class(logits[:200, :7], multi).tolist(), abs=1e-6)
    images, texts = F.normalize(torch.randn(40, 8), dim=-1), F.normalize(torch.randn(120, 8), dim=-1)
    index = torch.arange(40).repeat_interleave(3)
    scores = texts @ images.t()
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(120), index] = True
    ours = recall_at_k(images, texts, index, ks=(1, 5, 10), chunk=7)
    for k in (1, 5, 10):
        ref_i = (zr.recall_at_k(scores, positives, k) > 0).float().mean().item()
        ref_t = (zr.recall_at_k(scores.T, positives.T, k) > 0).float().mean().item()
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(ref_i)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(ref_t)


def test_duplicate_captions_rank_as_clip_benchmark_ranks_them():
    """Exact duplicate captions (COCO has them) tie exactly: the default rule picks the same top k as
    clip_benchmark's recall_at_k on the same embeddings; the pessimistic rule counts the ties as misses."""
    from clip_benchmark.metrics import zeroshot_retrieval as zr
    torch.manual_seed(2)
    images = F.normalize(torch.randn(30, 8), dim=-1)
    distinct = F.normalize(torch.randn(5, 8), dim=-1)
    texts = distinct[torch.arange(90) % 5]  # 90 captions, only 5 different ones: everything ties
    index = torch.arange(30).repeat_interleave(3)
    scores = texts @ images.t()
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(90), index] = True
    ours = recall_at_k(images, texts, index, ks=(1, 5, 10))
    strict = recall_at_k(images, texts, index, ks=(1, 5, 10), ties="pessimistic")
    for k in (1, 5, 10):
        ref_t = (zr.recall_at_k(scores.T, positives.T, k) > 0).float().mean().item()
        ref_i = (zr.recall_at_k(scores, positives, k) > 0).float().mean().item()
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(ref_t)
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(ref_i)
    assert strict["text_retrieval_recall@5"] < ours["text_retrieval_recall@5"]
