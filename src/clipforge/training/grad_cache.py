"""Gradient caching: train with a contrastive batch far larger than the encoders' activations allow.

The contrastive loss couples every pair in the batch, so the batch cannot simply be split into accumulation
steps. Instead (Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", 2021):

1. embed the whole batch chunk by chunk without a graph, recording the random state before each chunk;
2. compute the loss on the embeddings once and back-propagate it to the embeddings (and to whatever else the loss
   uses, such as the temperature);
3. re-run the encoders chunk by chunk with the recorded random state, so dropout and patch dropout draw the same
   masks, and back-propagate the cached embedding gradients through each chunk.

The encoder parameter gradients equal those of one forward/backward over the whole batch (for encoders whose output
for a sample does not depend on the rest of its chunk: no BatchNorm in training mode). The RNG state is left as the
first pass left it, so a step consumes randomness once.

Takes encode callables, not models: ``encode_image(images) -> (B, D)``, ``encode_text(tokens) -> (B, D)``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Mapping

import torch

Encoder = Callable[[torch.Tensor], torch.Tensor]


class _RngState:
    """CPU RNG state, plus the CUDA state of ``device`` when the inputs live on a GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _split(batch: torch.Tensor, chunk_size: int, name: str) -> tuple[torch.Tensor, ...]:
    if not isinstance(batch, torch.Tensor) or batch.ndim == 0:
        raise TypeError(f"{name} must be a batched tensor, got {type(batch).__name__}")
    return torch.split(batch, chunk_size)


def _embed_without_graph(encode: Encoder, chunks, name: str):
    features, states = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RngState(chunk.device))
            out = encode(chunk)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != chunk.shape[0]:
                raise ValueError(f"{name} must return (chunk, dim) features for a chunk of {chunk.shape[0]}, got "
                                 f"{getattr(out, 'shape', type(out).__name__)}")
            features.append(out)
    return torch.cat(features), states


def _loss_and_total(loss_fn, image_features, text_features) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out = loss_fn(image_features, text_features)
    if isinstance(out, torch.Tensor):
        out = {"loss": out}
    if not isinstance(out, Mapping) or "loss" not in out:
        raise ValueError("loss_fn must return a tensor or a dict with a 'loss' entry")
    return dict(out), out["loss"]


def _replay(encode: Encoder, chunks, states, grads, sync_context, is_last_encoder: bool) -> None:
    for index, (chunk, state, grad) in enumerate(zip(chunks, states, grads)):
        state.restore()
        is_last = is_last_encoder and index == len(chunks) - 1
        context = contextlib.nullcontext() if (sync_context is None or is_last) else sync_context()
        with context:
            encode(chunk).backward(grad.to(chunk.device))


def grad_cache_step(encode_image: Encoder, encode_text: Encoder, images: torch.Tensor, tokens: torch.Tensor,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any], *, chunk_size: int,
                    scaler: Any = None, no_sync: Callable[[], ContextManager] | None = None) -> dict[str, torch.Tensor]:
    """Accumulate into the encoders' ``.grad`` the gradient of ``loss_fn`` on the whole batch; return its outputs.

    loss_fn(image_features, text_features): a tensor or a dict with ``"loss"`` (what is back-propagated); it may
        use other parameters (the temperature), which receive their gradient directly.
    chunk_size: samples per encoder call; memory for activations scales with it, not with the batch.
    scaler: an AMP GradScaler; the loss is scaled before its backward (unscale before clipping, as usual).
    no_sync: under DDP, ``model.no_sync``: gradient all-reduce then runs once, with the last chunk.
    The optimizer step stays with the caller; returned tensors are detached.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if len(images) != len(tokens):
        raise ValueError(f"batch mismatch: {len(images)} images but {len(tokens)} token rows")
    image_chunks, text_chunks = _split(images, chunk_size, "images"), _split(tokens, chunk_size, "tokens")
    image_features, image_states = _embed_without_graph(encode_image, image_chunks, "encode_image")
    text_features, text_states = _embed_without_graph(encode_text, text_chunks, "encode_text")
    after_first_pass = _RngState(images.device)

    image_features.requires_grad_()
    text_features.requires_grad_()
    out, loss = _loss_and_total(loss_fn, image_features, text_features)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    image_grads = torch.split(image_features.grad, chunk_size)
    text_grads = torch.split(text_features.grad, chunk_size)

    _replay(encode_image, image_chunks, image_states, image_grads, no_sync, is_last_encoder=False)
    _replay(encode_text, text_chunks, text_states, text_grads, no_sync, is_last_encoder=True)
    after_first_pass.restore()
    return {key: value.detach() for key, value in out.items()}
