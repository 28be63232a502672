"""Contrastive losses in memory linear in the batch: logits are built one tile at a time and never stored.

Same results as the dense losses (contrastive.py, sigmoid.py) to float rounding; the approach is Inf-CL's
("Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss", 2024).

- CLIP softmax: each logit tile updates the running log-sum-exp of its rows (image-to-text) and of its columns
  (text-to-image), merged with logaddexp from minus infinity. Only the two (B,) log-sum-exp vectors are kept for
  backward, which recomputes each tile and turns it into gradients of both feature sets and of the scale.
- SigLIP: pairs are independent, so a tile's loss is a plain sum and its gradient needs no normaliser. In one
  process the gradient is computed in the same pass as the value (it is linear in the output gradient); across
  ranks backward recomputes the tiles.

Both write the positive pairs' term (O(B D)) into the same gradient buffers, so the loss allocates one (B, D)
gradient per feature set plus two tiles. Logits are accumulated in fp32 (fp64 for fp64 features).

Distributed form: each rank keeps its image features and passes its text features round a ring of ranks, one
block per step; every rank computes the tiles of its images against the visiting block. For the softmax loss the
block carries the running column log-sum-exp of its texts, so each logit is computed once over the whole ring.
In backward the blocks travel again, carrying the gradient of their texts, and arrive home with it complete. A
block's texts are sent on while the rank computes with them, so the larger transfer overlaps the work. No rank ever
holds more than one tile of logits. Each rank returns the loss of its own rows, like the dense forms;
the scale (and bias) gradient is split differently between ranks, but its sum over ranks, which DDP uses, is exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipforge.dist import Collective, is_distributed, ring_pass, start_ring_pass
from clipforge.losses._checks import check_inputs, logits_dtype

_SINGLE = Collective()


def default_tile_size(device: torch.device | str) -> int:
    """Tile side: large enough for efficient matmuls, small enough that a few fp32 tiles stay cheap."""
    return 8192 if torch.device(device).type == "cuda" else 2048


def _spans(total: int, tile: int):
    return [(start, min(start + tile, total)) for start in range(0, total, tile)]


def _tile_logits(scaled_rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return (scaled_rows @ cols.T).to(logits_dtype(cols))  # (tile_rows, tile_cols)


def _scaled(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # The scale is folded into a row tile: a (tile, D) multiply instead of a (tile, tile) one, made once per row
    # tile so that no scaled copy of the whole batch is kept.
    return (rows.to(scale.dtype) * scale).to(rows.dtype)


# ---- CLIP softmax -------------------------------------------------------------------------------------------------

def _tile_lse(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row lse, column lse) of one tile with a single exp pass over it."""
    row_max = logits.amax(dim=1)
    probs = logits.sub(row_max[:, None]).exp_()  # exp(z_ij - max_i)
    row_lse = probs.sum(dim=1).log_().add_(row_max)
    top = row_max.max()
    col_sum = (row_max - top).exp_() @ probs  # sum_i exp(z_ij - top)
    col_lse = col_sum.log().add_(top)
    # A column whose largest logit lies far below the tile's maximum loses precision in that shared-shift sum
    # (subnormal terms): recompute those columns with their own maximum. Rare: needs a logit range above ~70.
    finfo = torch.finfo(logits.dtype)
    low = col_sum < finfo.tiny / finfo.eps
    if bool(low.any()):
        col_lse = torch.where(low, torch.logsumexp(logits, dim=0), col_lse)
    return row_lse, col_lse


def _lse_block(images, texts, scale, tile, row_lse, col_lse):
    """Merge the log-sum-exp of every tile of images x texts into ``row_lse`` (images) and ``col_lse`` (texts)."""
    for r0, r1 in _spans(images.shape[0], tile):
        scaled_rows = _scaled(images[r0:r1], scale)
        for c0, c1 in _spans(texts.shape[0], tile):
            tile_rows, tile_cols = _tile_lse(_tile_logits(scaled_rows, texts[c0:c1]))
            row_lse[r0:r1] = torch.logaddexp(row_lse[r0:r1], tile_rows)
            col_lse[c0:c1] = torch.logaddexp(col_lse[c0:c1], tile_cols)


def _accumulate(grad, images, scaled_images, texts, scale, d_images, d_texts):
    """Add s * grad @ texts to ``d_images`` and s * grad.T @ images to ``d_texts``; return d loss / d scale."""
    grad = grad.to(texts.dtype)
    grad_texts = (grad @ texts).to(d_images.dtype)  # (tile_rows, D)
    d_images += grad_texts * scale
    d_texts += (grad.T @ scaled_images).to(d_texts.dtype)
    # sum_ij grad_ij <image_i, text_j> = sum_i <image_i, (grad @ texts)_i>
    return (images.to(grad_texts.dtype) * grad_texts).sum()


def _softmax_grad_block(images, texts, scale, row_lse, col_lse, row_coef, col_coef, tile, d_images, d_texts):
    """Add this block's gradients to ``d_images``/``d_texts`` and return its scale gradient."""
    d_scale = torch.zeros((), dtype=logits_dtype(images), device=images.device)
    for r0, r1 in _spans(images.shape[0], tile):
        scaled_rows = _scaled(images[r0:r1], scale)
        for c0, c1 in _spans(texts.shape[0], tile):
            logits = _tile_logits(scaled_rows, texts[c0:c1])
            # d loss / d logits: softmax over the row (image-to-text) plus softmax over the column (text-to-image)
            grad = logits.sub(row_lse[r0:r1, None]).exp_().mul_(row_coef)
            grad.addcmul_(logits.sub_(col_lse[None, c0:c1]).exp_(), col_coef)
            del logits
            d_scale += _accumulate(grad, images[r0:r1], scaled_rows, texts[c0:c1], scale,
                                   d_images[r0:r1], d_texts[c0:c1])
    return d_scale


def _softmax_lse_ring(images, texts, scale, tile, collective):
    n = images.shape[0]
    row_lse = torch.full((n,), float("-inf"), dtype=logits_dtype(images), device=images.device)
    block, block_lse = texts, torch.full_like(row_lse, float("-inf"))
    for step in range(collective.world_size):
        # the texts travel while this rank computes on them; their lse can only leave once updated
        pending = start_ring_pass([block], collective) if step < collective.world_size - 1 else None
        _lse_block(images, block, scale, tile, row_lse, block_lse)
        if pending is not None:
            (block_lse,) = ring_pass([block_lse], collective)
            (block,) = pending.wait()
    if collective.is_distributed:
        # the visiting block is the right neighbour's: one more hop takes its finished column lse home
        (block_lse,) = ring_pass([block_lse], collective)
    return row_lse, block_lse


def _softmax_grad_ring(images, texts, scale, row_lse, col_lse, grad_out, tile, collective):
    n = images.shape[0]
    coef = (grad_out.to(logits_dtype(images)) / (2 * n)).reshape(1)
    d_images = torch.zeros(images.shape, dtype=logits_dtype(images), device=images.device)
    d_scale = torch.zeros((), dtype=logits_dtype(images), device=images.device)
    # a block carries its texts, their column lse, its owner's output gradient and the texts' gradient so far
    block, block_lse, block_coef = texts, col_lse, coef
    d_block = torch.zeros(texts.shape, dtype=logits_dtype(texts), device=texts.device)
    for step in range(collective.world_size):
        is_last = step == collective.world_size - 1
        pending = None if is_last else start_ring_pass([block, block_lse, block_coef], collective)
        d_scale += _softmax_grad_block(images, block, scale, row_lse, block_lse, coef, block_coef, tile,
                                       d_images, d_block)
        if not is_last:
            (d_block,) = ring_pass([d_block], collective)
            block, block_lse, block_coef = pending.wait()
    if collective.is_distributed:
        (d_block,) = ring_pass([d_block], collective)
    return d_images, d_block, d_scale


def _positive_dots(image_features, text_features):
    acc = logits_dtype(image_features)
    return (image_features.to(acc) * text_features.to(acc)).sum(dim=1)  # (B,): <image_i, text_i>


def _add_positive_grads(d_images, d_texts, images, texts, factor):
    """Gradient of ``factor * sum_i <image_i, text_i>``, added in place (no (B, D) temporaries)."""
    d_images.addcmul_(texts.to(d_images.dtype), factor)
    d_texts.addcmul_(images.to(d_texts.dtype), factor)


class _TiledSoftmaxLoss(torch.autograd.Function):
    """(sum of row lse + sum of column lse) / (2 B) - scale * mean_i <image_i, text_i>, tile by tile.

    The positive pairs' term lives here too, so that backward writes all feature gradients into one buffer each.
    """

    @staticmethod
    def forward(ctx, images, texts, scale, tile, collective):
        scale_value = scale.detach().to(logits_dtype(images))
        row_lse, col_lse = _softmax_lse_ring(images, texts, scale_value, tile, collective)
        mean_positive = _positive_dots(images, texts).mean()
        ctx.save_for_backward(images, texts, scale, row_lse, col_lse, mean_positive)
        ctx.tile, ctx.collective = tile, collective
        return (row_lse.sum() + col_lse.sum()) / (2 * images.shape[0]) - scale_value * mean_positive

    @staticmethod
    def backward(ctx, grad_out):
        images, texts, scale, row_lse, col_lse, mean_positive = ctx.saved_tensors
        scale_value = scale.detach().to(logits_dtype(images))
        d_images, d_texts, d_scale = _softmax_grad_ring(images, texts, scale_value, row_lse, col_lse, grad_out,
                                                        ctx.tile, ctx.collective)
        grad_out = grad_out.to(d_scale.dtype)
        _add_positive_grads(d_images, d_texts, images, texts, -grad_out * scale_value / images.shape[0])
        d_scale -= grad_out * mean_positive
        return d_images.to(images.dtype), d_texts.to(texts.dtype), d_scale.to(scale.dtype), None, None


def _resolve(tile_size, collective, like):
    tile = default_tile_size(like.device) if tile_size is None else int(tile_size)
    if tile < 1:
        raise ValueError(f"tile_size must be a positive integer (or None for the device default), got {tile_size}")
    return tile, (collective if is_distributed(collective) else _SINGLE)


def tiled_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, *,
                    tile_size: int | None = None, collective: Collective | None = None) -> torch.Tensor:
    """``clip_loss`` computed tile by tile: memory O(B D + tile^2) instead of O(B^2).

    tile_size: side of a logit tile (None: ``default_tile_size`` of the features' device); any value works,
    it needs not divide the batch. collective: ranks to pass text blocks round (None: this process only).
    """
    scale, _ = check_inputs(image_features, text_features, logit_scale)
    tile, collective = _resolve(tile_size, collective, image_features)
    return _TiledSoftmaxLoss.apply(image_features, text_features, scale, tile, collective)


# ---- SigLIP sigmoid -----------------------------------------------------------------------------------------------

def _softplus_block(images, texts, scale, bias, tile):
    total = torch.zeros((), dtype=logits_dtype(texts), device=texts.device)
    for r0, r1 in _spans(images.shape[0], tile):
        scaled_rows = _scaled(images[r0:r1], scale)
        for c0, c1 in _spans(texts.shape[0], tile):
            total += F.softplus(_tile_logits(scaled_rows, texts[c0:c1]).add_(bias)).sum()
    return total


def _sigmoid_grad_block(images, texts, scale, bias, coef, tile, d_images, d_texts, with_value):
    """Add this block's gradients to ``d_images``/``d_texts``; return (scale grad, bias grad, sum of softplus).

    The softplus sum (the loss value) is only computed ``with_value``: backward does not need it.
    """
    d_scale = torch.zeros((), dtype=logits_dtype(images), device=images.device)
    d_bias = torch.zeros_like(d_scale)
    total = torch.zeros_like(d_scale)
    for r0, r1 in _spans(images.shape[0], tile):
        scaled_rows = _scaled(images[r0:r1], scale)
        for c0, c1 in _spans(texts.shape[0], tile):
            logits = _tile_logits(scaled_rows, texts[c0:c1]).add_(bias)
            if with_value:
                total += F.softplus(logits).sum()
            grad = logits.sigmoid_().mul_(coef)  # d softplus(logit) / d logit = sigmoid(logit)
            d_bias += grad.sum()
            d_scale += _accumulate(grad, images[r0:r1], scaled_rows, texts[c0:c1], scale,
                                   d_images[r0:r1], d_texts[c0:c1])
    return d_scale, d_bias, total


def _sigmoid_grad_ring(images, texts, scale, bias, grad_out, tile, collective, with_value):
    coef = grad_out.to(logits_dtype(images)) / images.shape[0]
    d_images = torch.zeros(images.shape, dtype=logits_dtype(images), device=images.device)
    d_scale = torch.zeros((), dtype=logits_dtype(images), device=images.device)
    d_bias = torch.zeros((), dtype=logits_dtype(images), device=images.device)
    total = torch.zeros((), dtype=logits_dtype(images), device=images.device)
    block, d_block = texts, torch.zeros(texts.shape, dtype=logits_dtype(texts), device=texts.device)
    for step in range(collective.world_size):
        is_last = step == collective.world_size - 1
        pending = None if is_last else start_ring_pass([block], collective)
        block_scale, block_bias, block_total = _sigmoid_grad_block(images, block, scale, bias, coef, tile,
                                                                   d_images, d_block, with_value)
        if not is_last:
            (d_block,) = ring_pass([d_block], collective)
            (block,) = pending.wait()
        d_scale += block_scale
        d_bias += block_bias
        total += block_total
    if collective.is_distributed:
        (d_block,) = ring_pass([d_block], collective)
    return d_images, d_block, d_scale, d_bias, total


def _softplus_ring(images, texts, scale, bias, tile, collective):
    total = torch.zeros((), dtype=logits_dtype(images), device=images.device)
    block = texts
    for step in range(collective.world_size):
        pending = start_ring_pass([block], collective) if step < collective.world_size - 1 else None
        total += _softplus_block(images, block, scale, bias, tile)
        if pending is not None:
            (block,) = pending.wait()
    return total


def _sigmoid_grads(images, texts, scale, bias, grad_out, mean_positive, tile, collective, with_value=False):
    """Gradients of the tiled SigLIP loss for output gradient ``grad_out``, and the softplus sum ``with_value``."""
    d_images, d_texts, d_scale, d_bias, total = _sigmoid_grad_ring(images, texts, scale, bias, grad_out, tile,
                                                                   collective, with_value)
    _add_positive_grads(d_images, d_texts, images, texts, -grad_out * scale / images.shape[0])
    return (d_images, d_texts, d_scale - grad_out * mean_positive, d_bias - grad_out), total


class _TiledSigmoidLoss(torch.autograd.Function):
    """sum over pairs of softplus(logit) / B - mean over positives of (logit), tile by tile.

    In one process the gradient is linear in the output gradient, so forward computes it alongside the value
    (three matmuls per tile, like the dense loss) and backward only scales it. Across ranks the remote
    contributions must be weighted by each rank's own output gradient, so backward recomputes round the ring.
    """

    @staticmethod
    def forward(ctx, images, texts, scale, bias, tile, collective):
        acc = logits_dtype(images)
        s, b = scale.detach().to(acc), bias.detach().to(acc)
        mean_positive = _positive_dots(images, texts).mean()
        ctx.tile, ctx.collective = tile, collective
        ctx.dtypes = (images.dtype, texts.dtype, scale.dtype, bias.dtype)
        ctx.precomputed = not collective.is_distributed and any(ctx.needs_input_grad[:4])
        if ctx.precomputed:
            one = torch.ones((), dtype=acc, device=images.device)
            grads, total = _sigmoid_grads(images, texts, s, b, one, mean_positive, tile, collective, with_value=True)
            ctx.save_for_backward(*grads)
        else:
            total = _softplus_ring(images, texts, s, b, tile, collective)
            ctx.save_for_backward(images, texts, scale, bias, mean_positive)
        return total / images.shape[0] - s * mean_positive - b

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.precomputed:
            grads = ctx.saved_tensors
        else:
            images, texts, scale, bias, mean_positive = ctx.saved_tensors
            acc = logits_dtype(images)
            grads, _ = _sigmoid_grads(images, texts, scale.detach().to(acc), bias.detach().to(acc),
                                      grad_out.to(acc), mean_positive, ctx.tile, ctx.collective)
            grad_out = 1.0
        return (*[(g * grad_out).to(dtype) for g, dtype in zip(grads, ctx.dtypes)], None, None)


def tiled_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, logit_bias=None, *,
                      tile_size: int | None = None, collective: Collective | None = None) -> torch.Tensor:
    """``siglip_loss`` computed tile by tile, with exact gradients for the scale and the bias.

    Uses -log sigmoid(-x) = softplus(x) for negatives and -log sigmoid(x) = softplus(x) - x for positives.
    """
    scale, bias = check_inputs(image_features, text_features, logit_scale, logit_bias)
    tile, collective = _resolve(tile_size, collective, image_features)
    if bias is None:
        bias = torch.zeros((), dtype=logits_dtype(image_features), device=image_features.device)
    return _TiledSigmoidLoss.apply(image_features, text_features, scale, bias, tile, collective)
