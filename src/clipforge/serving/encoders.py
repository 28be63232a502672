"""The model behind the service, whatever runs it: ``load_model(config) -> ServingModel``.

A ``ServingModel`` turns a PIL image into a preprocessed array (in request threads, off the event loop), texts into
token ids with a flag for each text cut to the context length, and batches of either into float32 features (in the
batcher's worker thread). The torch runtime wraps ``create_model_and_transforms``; the onnx runtime wraps
``runtime.OnnxEncoder`` over an exported bundle (no torch needed to serve it).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clipforge.config import ConfigError
from clipforge.runtime.bundle import MANIFEST
from clipforge.serving.config import ServeConfig


@dataclasses.dataclass
class ServingModel:
    name: str
    runtime: str                       # "torch" | "onnx"
    embed_dim: int
    context_length: int
    logit_scale: float
    logit_bias: float | None
    preprocess: Callable[[Any], np.ndarray]           # PIL image -> (3, H, W) float32
    _tokenize: Callable[[list[str]], np.ndarray]      # texts -> (N, context_length) int64
    _count_tokens: Callable[[str], int]               # ids of one text without special tokens
    pad_id: int
    encode_images: Callable[[np.ndarray], np.ndarray]  # (B, 3, H, W) -> (B, D) float32, not normalised
    encode_texts: Callable[[np.ndarray], np.ndarray]   # (B, L) ids -> (B, D) float32, not normalised
    fingerprint: Callable[[], str | None]             # weights identity, for checking an index
    # Output sizes the model was trained to be cut to (Matryoshka-style). No CLIP checkpoint clipforge knows
    # declares any, so `dimensions` is accepted only when it equals embed_dim.
    dimensions: tuple[int, ...] = ()
    _specials: int | None = None

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Ids and, per text, whether tokens beyond the context length were cut."""
        ids = self._tokenize(list(texts))
        if self._specials is None:
            self._specials = int((self._tokenize([""])[0] != self.pad_id).sum())
        full = (ids != self.pad_id).sum(axis=1) >= self.context_length
        cut = [bool(f) and self._count_tokens(t) + self._specials > self.context_length for t, f in zip(texts, full)]
        return ids, cut


def is_bundle(spec: str) -> bool:
    return Path(spec, MANIFEST).is_file()


def load_model(config: ServeConfig) -> ServingModel:
    runtime = config.runtime
    if runtime == "auto":
        runtime = "onnx" if is_bundle(config.model) else "torch"
    if runtime == "onnx":
        if not is_bundle(config.model):
            raise ConfigError(f"--runtime onnx needs an ONNX bundle folder (written by `clipforge export`); "
                              f"{config.model!r} has no {MANIFEST}")
        return _onnx_model(config)
    if is_bundle(config.model):
        raise ConfigError(f"{config.model} is an ONNX bundle: serve it with --runtime onnx (or leave --runtime out)")
    return _torch_model(config)


def _onnx_model(config: ServeConfig) -> ServingModel:
    from clipforge.runtime import OnnxEncoder

    encoder = OnnxEncoder(config.model, variant=config.variant, threads=config.threads,
                          providers=config.device)
    tokenizer = encoder.tokenizer
    manifest = encoder.bundle.manifest
    return ServingModel(
        name=f"{manifest['architecture']} (onnx {encoder.variant})", runtime="onnx", embed_dim=encoder.embed_dim,
        context_length=encoder.context_length, logit_scale=encoder.logit_scale, logit_bias=encoder.logit_bias,
        preprocess=encoder.preprocess, _tokenize=encoder.tokenize, _count_tokens=lambda t: len(tokenizer.encode(t)),
        pad_id=int(getattr(tokenizer, "pad_token_id", 0) or 0),
        encode_images=encoder.encode_image, encode_texts=encoder.encode_text,
        fingerprint=lambda: manifest.get("weights_fingerprint"))


def _torch_model(config: ServeConfig) -> ServingModel:
    import torch

    from clipforge.models.factory import create_model_and_transforms, get_tokenizer
    from clipforge.models.fingerprint import weights_fingerprint
    from clipforge.precision import get_precision

    if config.variant is not None:
        raise ConfigError("--variant chooses an ONNX bundle's variant; the torch runtime takes --precision")
    if config.threads:
        torch.set_num_threads(config.threads)
    device_name = config.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, preprocess = create_model_and_transforms(config.model, device=device_name,
                                                       precision=config.precision)
    model.eval()
    tokenizer = get_tokenizer(config.model)
    cast = get_precision(config.precision)
    device = torch.device(device_name)
    dtype = next(model.parameters()).dtype

    def run(fn, array: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(array).to(device)
        if x.is_floating_point() and not cast.is_amp:
            x = x.to(dtype)
        with torch.inference_mode(), cast.autocast_context(device.type):
            return fn(x).float().cpu().numpy()

    bias = model.logit_bias

    @functools.lru_cache(maxsize=1)
    def fingerprint() -> str:  # hashing every weight takes a second or so: only when an index asks
        return weights_fingerprint(model)

    return ServingModel(
        name=config.model, runtime="torch", embed_dim=int(model.config.embed_dim),
        context_length=int(tokenizer.context_length),
        logit_scale=float(model.logit_scale.detach().float().exp()),
        logit_bias=None if bias is None else float(bias.detach().float()),
        preprocess=lambda image: preprocess(image).numpy(), _tokenize=tokenizer.numpy,
        _count_tokens=lambda t: len(tokenizer.encode(t)), pad_id=int(getattr(tokenizer, "pad_token_id", 0) or 0),
        encode_images=lambda batch: run(model.encode_image, batch),
        encode_texts=lambda ids: run(model.encode_text, ids),
        fingerprint=fingerprint)
