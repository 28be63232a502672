"""``generate``: captions for images from a CoCa model, by greedy decoding, beam search or sampling."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import torch

from clipforge.captioning.beam import beam_search
from clipforge.captioning.config import GenerationConfig
from clipforge.captioning.sampling import decode_stepwise
from clipforge.config import ConfigError


class NotACaptioner(ValueError):
    """The model has no caption decoder."""


def check_captioner(model) -> None:
    """Raise ``NotACaptioner`` unless ``model`` can caption (a CoCa: ``encode_image_tokens``, ``next_token_logits``)."""
    if not (hasattr(model, "encode_image_tokens") and hasattr(model, "next_token_logits")):
        arch = getattr(getattr(model, "info", None), "arch", None) or type(model).__name__
        raise NotACaptioner(f"model '{arch}' has no caption decoder; use a CoCa model, e.g. coca_ViT-B-32 "
                            "(`clipforge models` lists them)")


def _as_config(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    config = config or GenerationConfig()
    try:
        return dataclasses.replace(config, **overrides)
    except TypeError as e:
        raise ConfigError(f"generate: {e}; options are {[f.name for f in dataclasses.fields(config)]}") from None


def _pixels(model, images) -> torch.Tensor:
    """A (B, 3, H, W) tensor as given, or PIL images / paths preprocessed with the model's eval transform."""
    if isinstance(images, torch.Tensor):
        return images if images.ndim == 4 else images[None]
    from clipforge.data.images import read_image
    from clipforge.transforms import create_eval_transform

    transform = create_eval_transform(model.preprocess_config)
    loaded = [read_image(item) if isinstance(item, (str, os.PathLike)) else item for item in images]
    return torch.stack([transform(image) for image in loaded])


def _special_ids(model, tokenizer) -> tuple[int, tuple[int, ...]]:
    if hasattr(model.text, "caption_ids"):  # a Hugging Face text tower: its encoder's ids; the tokenizer only decodes
        return model.text.caption_ids()
    start, end = getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None)
    if start is None or end is None:
        raise ValueError("captioning needs a tokenizer with start and end tokens (sot_token_id, eot_token_id)")
    return start, (end, model.config.text.pad_id)


def generate_tokens(model, images, config: GenerationConfig | None = None, *, tokenizer=None,
                    **overrides) -> list[list[int]]:
    """Token ids of one caption per image (start and end tokens removed). See ``generate``."""
    check_captioner(model)
    config = _as_config(config, overrides)
    if not isinstance(images, torch.Tensor) and len(images) == 0:
        return []
    limit = model.config.decoder.context_length
    if config.max_length > limit:
        raise ConfigError(f"max_length {config.max_length} is more than this model reads ({limit} tokens)")
    tokenizer = tokenizer or _tokenizer(model)
    start, end_ids = _special_ids(model, tokenizer)
    param = next(model.parameters())
    pixels = _pixels(model, images).to(device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _, image_tokens = model.encode_image_tokens(pixels)
            search = beam_search if config.method == "beam" and config.num_beams > 1 else decode_stepwise
            if search is decode_stepwise and config.method == "beam":
                config = dataclasses.replace(config, method="greedy")  # one beam is greedy decoding
            return search(model, image_tokens, config, start, end_ids)
    finally:
        model.train(was_training)


def _tokenizer(model):
    from clipforge.models.factory import tokenizer_for_config

    return tokenizer_for_config(model.config)


def generate(model, images: torch.Tensor | Sequence, config: GenerationConfig | None = None, *, tokenizer=None,
             **overrides) -> list[str]:
    """One caption per image.

    model: a CoCa (``create_model("coca_ViT-B-32", ...)``). images: a preprocessed (B, 3, H, W) tensor, or PIL
    images / image paths (preprocessed with the model's eval transform). config: a ``GenerationConfig``; keyword
    arguments override its fields, e.g. ``generate(model, images, method="top_p", top_p=0.8, seed=0)``.
    """
    check_captioner(model)
    tokenizer = tokenizer or _tokenizer(model)
    ids = generate_tokens(model, images, config, tokenizer=tokenizer, **overrides)
    return [tokenizer.decode(row) for row in ids]
