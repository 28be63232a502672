"""Linear probe: multinomial logistic regression on frozen image features.

The L2 strength is chosen on a validation split (given, or held out from the training features), then the probe
is refit on train+validation and scored on the test set. Training is full-batch L-BFGS in torch, so it runs on
whatever device the features are on and needs no extra dependency.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from clipforge.evaluation.features import EncodedImages, EncodeFn, Progress, encode_images
from clipforge.evaluation.metrics import accuracy, classification_metrics

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 200) -> torch.nn.Linear:
    """A (D -> C) linear layer minimising cross-entropy + weight_decay/2 * ||W||^2 over all samples."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(features.shape[1], num_classes).to(features.device)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    labels = labels.long()

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + 0.5 * weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe


def _holdout(features: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int):
    """Split off ``fraction`` of the samples (at least one) as a validation set, reproducibly."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(len(features) * fraction)))
    val, train = order[:n_val], order[n_val:]
    return features[train], labels[train], features[val], labels[val]


def choose_weight_decay(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                        num_classes: int, weight_decays: Sequence[float]) -> float:
    """The weight decay with the best validation top-1; ties go to the stronger regularisation."""
    best, best_acc = None, -1.0
    for wd in sorted(weight_decays, reverse=True):
        probe = fit_logistic(train[0], train[1], num_classes, wd)
        with torch.no_grad():
            (acc,) = accuracy(probe(val[0]), val[1], (1,))
        if acc > best_acc:
            best, best_acc = wd, acc
    return best


def probe_features(train: EncodedImages, test: EncodedImages, num_classes: int, val: EncodedImages | None = None,
                   weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS, val_fraction: float = 0.2,
                   seed: int = 0) -> dict[str, float]:
    """Linear-probe metrics from pre-encoded train/test (and optional validation) features."""
    if len(train.features) < 2:
        raise ValueError("the linear probe needs at least 2 training samples")
    x, y = train.features.float(), train.targets
    if val is None:
        x_fit, y_fit, x_val, y_val = _holdout(x, y, val_fraction, seed)
        x_all, y_all = x, y
    else:
        x_fit, y_fit, x_val, y_val = x, y, val.features.float(), val.targets
        x_all, y_all = torch.cat([x, x_val]), torch.cat([y, y_val])
    wd = choose_weight_decay((x_fit, y_fit), (x_val, y_val), num_classes, weight_decays)
    probe = fit_logistic(x_all, y_all, num_classes, wd)
    with torch.no_grad():
        logits = probe(test.features.float())
    metrics = classification_metrics(logits, test.targets, num_classes)
    skipped = train.skipped + test.skipped + (val.skipped if val is not None else 0)
    return {**metrics, "weight_decay": wd, "num_samples": len(test.features), "num_skipped": skipped}


def linear_probe(encode_image: EncodeFn, train_loader: Iterable, test_loader: Iterable, num_classes: int,
                 val_loader: Iterable | None = None, weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
                 progress: Progress | None = None) -> dict[str, float]:
    """Encode the loaders with the frozen image tower, then fit and score the probe."""
    train = encode_images(encode_image, train_loader, progress)
    test = encode_images(encode_image, test_loader, progress)
    val = encode_images(encode_image, val_loader, progress) if val_loader is not None else None
    return probe_features(train, test, num_classes, val, weight_decays)
