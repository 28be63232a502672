"""``OnnxEncoder``: a bundle run by ONNX Runtime, with the surface of a clipforge model and no torch.

    enc = OnnxEncoder("bundle/")                       # providers="auto": TensorRT, CUDA, then CPU, as installed
    image_features = enc.encode_image([Image.open("cat.jpg")], normalize=True)   # (1, D) float32
    text_features = enc.encode_text(["a photo of a cat"], normalize=True)
    probs = softmax(enc.logit_scale * image_features @ text_features.T)

Images may be PIL images (preprocessed exactly as ``create_eval_transform`` does, in numpy) or an already
preprocessed float32 ``(B, 3, H, W)`` array; texts may be strings (tokenized with the bundle's own tokenizer files)
or an int ``(B, L)`` id array. Graphs exported with a fixed batch take any number of inputs: they are run in
chunks of that size, the last one padded.

Providers: ``"auto"`` takes TensorRT, CUDA and CPU in that order among those this onnxruntime build offers
(``onnxruntime-gpu`` brings CUDA and TensorRT). A list chooses explicitly; each item is a name (``"cpu"``,
``"cuda"``, ``"tensorrt"`` or onnxruntime's full name) or ``(name, options)``, e.g.
``[("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
"trt_engine_cache_path": "trt_cache"}), ("CUDAExecutionProvider", {"device_id": 0}), "cpu"]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from clipforge._optional import require
from clipforge.runtime.bundle import Bundle, BundleError, read_bundle
from clipforge.tokenizer import ClipTokenizer, HFTokenizer
from clipforge.transforms import PreprocessConfig, create_eval_array_transform

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_SHORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}


def import_onnxruntime():
    return require("onnxruntime", hint="the ONNX runtime needs onnxruntime: pip install 'clipforge[runtime]' "
                                       "(or onnxruntime-gpu for CUDA and TensorRT)")


def choose_providers(requested: str | Sequence[Any] | None = "auto") -> list:
    """onnxruntime's provider list for ``requested`` (see the module doc); unknown or absent providers raise."""
    available = import_onnxruntime().get_available_providers()
    if requested in (None, "auto"):
        return [name for name in PROVIDER_ORDER if name in available]
    items = [requested] if isinstance(requested, (str, tuple)) else list(requested)
    chosen = []
    for item in items:
        name, options = item if isinstance(item, tuple) else (item, None)
        full = _SHORT_NAMES.get(str(name).lower(), name)
        if full not in available:
            raise ValueError(f"execution provider {name!r} is not available in this onnxruntime build; available: "
                             f"{', '.join(available)} (CUDA and TensorRT come with onnxruntime-gpu)")
        chosen.append((full, options) if options else full)
    return chosen


def _load_tokenizer(bundle: Bundle):
    spec = bundle.manifest["tokenizer"]
    common = dict(context_length=spec["context_length"], max_context_length=spec["context_length"],
                  clean=spec["clean"])
    if spec["kind"] == "clip":
        return ClipTokenizer(str(bundle.path(spec["files"][0]["file"])), **common)
    return HFTokenizer(str(bundle.path(spec["folder"])), strip_sep_token=spec.get("strip_sep_token", False),
                       **common)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (the numpy twin of ``F.normalize(x, dim=-1)``)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class OnnxEncoder:
    """Encode images and texts with a bundle's graphs (see the module doc)."""

    def __init__(self, bundle: str | Path | Bundle, variant: str | None = None,
                 providers: str | Sequence[Any] | None = "auto", threads: int | None = None, verify: bool = True):
        self.bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle, verify=verify)
        self.variant = variant or self.bundle.default_variant
        self.bundle.graph(self.variant, "image")  # an unknown variant is refused here, not at the first call
        self.providers = choose_providers(providers)
        self.threads = threads
        manifest = self.bundle.manifest
        self.preprocess_config = PreprocessConfig.from_open_clip(manifest["preprocess"])
        self.preprocess = create_eval_array_transform(self.preprocess_config)
        self.tokenizer = _load_tokenizer(self.bundle)
        self.context_length = manifest["tokenizer"]["context_length"]
        self.embed_dim = manifest["embed_dim"]
        self.logit_scale = float(manifest["logit_scale"])
        self.logit_bias = manifest.get("logit_bias")
        self._sessions: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"OnnxEncoder({str(self.bundle.directory)!r}, variant={self.variant!r}, "
                f"architecture={self.bundle.manifest['architecture']!r})")

    def session(self, tower: str):
        """The onnxruntime session of one tower ("image" or "text"), created on first use."""
        if tower not in self._sessions:
            ort = import_onnxruntime()
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.threads:
                options.intra_op_num_threads = int(self.threads)
            path = self.bundle.path(self.bundle.graph(self.variant, tower)["model"]["file"])
            self._sessions[tower] = ort.InferenceSession(str(path), options, providers=self.providers)
        return self._sessions[tower]

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        return self.tokenizer.numpy(texts)

    def _run(self, tower: str, inputs: np.ndarray) -> np.ndarray:
        graph = self.bundle.graph(self.variant, tower)
        session = self.session(tower)
        batch = graph.get("batch")
        if not batch or len(inputs) == batch:
            return session.run([graph["output"]], {graph["input"]: inputs})[0]
        outputs = []
        for start in range(0, len(inputs), batch):
            chunk = inputs[start:start + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            outputs.append(session.run([graph["output"]], {graph["input"]: padded})[0][:len(chunk)])
        return np.concatenate(outputs)

    def _image_array(self, images) -> np.ndarray:
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, np.ndarray):
            height, width = self.preprocess_config.size_hw
            if images.ndim != 4 or images.shape[1:] != (3, height, width):
                raise ValueError(f"an image array must be preprocessed (B, 3, {height}, {width}) float32, got shape "
                                 f"{images.shape}; pass PIL images to have them preprocessed")
            return np.ascontiguousarray(images, dtype=np.float32)
        arrays = [self.preprocess(image) for image in images]
        if not arrays:
            raise ValueError("no images given")
        return np.stack(arrays)

    def encode_image(self, images, normalize: bool = False) -> np.ndarray:
        """(B, embed_dim) float32 features of PIL images or a preprocessed (B, 3, H, W) array."""
        features = self._run("image", self._image_array(images)).astype(np.float32, copy=False)
        return l2_normalize(features) if normalize else features

    def encode_text(self, texts, normalize: bool = False) -> np.ndarray:
        """(B, embed_dim) float32 features of strings or an int (B, context_length) id array."""
        if isinstance(texts, np.ndarray):
            if texts.ndim != 2 or texts.shape[1] != self.context_length or texts.dtype.kind not in "iu":
                raise ValueError(f"token ids must be an int (B, {self.context_length}) array, got {texts.dtype} "
                                 f"{texts.shape}; pass strings to have them tokenized")
            ids = texts.astype(np.int64, copy=False)
        else:
            ids = self.tokenize(texts)
        features = self._run("text", ids).astype(np.float32, copy=False)
        return l2_normalize(features) if normalize else features


__all__ = ["OnnxEncoder", "BundleError", "choose_providers", "PROVIDER_ORDER"]
