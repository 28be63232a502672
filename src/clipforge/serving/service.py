"""What the endpoints do, apart from HTTP: embed, rank, classify and search, through the batcher.

Inputs are ``Input(kind, value)``: a text, or an image as base64 / ``data:`` URI / URL text or uploaded bytes. Image
bytes are fetched, decoded and preprocessed in a worker thread (never on the event loop); features come back from
the batcher and are L2-normalised here, as every endpoint compares by cosine similarity.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from clipforge.serving import urls
from clipforge.serving.batching import Batcher
from clipforge.serving.config import ServeConfig
from clipforge.serving.encoders import ServingModel
from clipforge.serving.inputs import InputError, check_text, decode_base64, is_url, open_image
from clipforge.serving.metrics import Metrics


NO_INDEX = "no index is loaded: start the server with --index DIR"
INLINE_TEXT_CHARS = 4096  # texts up to this many characters in all are tokenized on the event loop (~50 us)


@dataclasses.dataclass(frozen=True)
class Input:
    kind: str            # "text" | "image"
    value: str | bytes


@dataclasses.dataclass
class Embedded:
    vectors: np.ndarray      # (N, D) float32, unit length
    truncated: list[bool]    # per input; False for images
    tokens: int              # text tokens used (the OpenAI `usage` count)


def l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


def _abandon(pending) -> None:
    """Futures of a request that failed part-way: cancelled (the batcher skips them) or their outcome taken."""
    for _, future in pending:
        if not future.cancel() and not future.cancelled():
            future.exception()  # done: marks an error as seen (no "never retrieved" warning)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Service:
    def __init__(self, config: ServeConfig, model: ServingModel, index=None, metrics: Metrics | None = None):
        self.config, self.model, self.index = config, model, index
        self.metrics = metrics or Metrics()
        self.batcher: Batcher | None = None
        self.ready = False
        self._classes: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
        self.thumbnails = None
        if index is not None:
            from clipforge.serving.thumbnails import Thumbnails

            self.thumbnails = Thumbnails(index, config)

    # -------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.batcher = Batcher({"image": self.model.encode_images, "text": self.model.encode_texts},
                               self.config.max_batch, self.config.max_wait_ms / 1000, self.config.max_queue,
                               self.metrics.observe_batch)
        self.ready = True

    def stop(self) -> None:
        """Graceful: no longer ready, queued batches finished."""
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()

    # ------------------------------------------------------------------------------------------------ inputs

    def _image_bytes(self, value: str | bytes, where: str) -> bytes:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if is_url(value):
            return urls.fetch(value, self.config.url_hosts, self.config.url_max_bytes, self.config.url_timeout_s)
        return decode_base64(value, self.config, where)

    def prepare_images(self, values: Sequence[str | bytes], where: Sequence[str]) -> np.ndarray:
        """(N, 3, H, W) float32: each image fetched or decoded, checked, preprocessed. Runs in a worker thread."""
        arrays = [self.model.preprocess(open_image(self._image_bytes(v, w), self.config, w))
                  for v, w in zip(values, where)]
        return np.stack(arrays).astype(np.float32, copy=False)

    # ------------------------------------------------------------------------------------------------- embed

    async def embed(self, inputs: Sequence[Input], where: str = "input", normalize: bool = True) -> Embedded:
        """Vectors (unit length unless ``normalize`` is False) of mixed texts and images, in the order given."""
        from starlette.concurrency import run_in_threadpool

        if not inputs:
            raise InputError(f"{where}: no inputs")
        if len(inputs) > self.config.max_inputs:
            raise InputError(f"{where}: {len(inputs)} inputs, more than the limit of {self.config.max_inputs}", 413)
        texts = [i for i, item in enumerate(inputs) if item.kind == "text"]
        images = [i for i, item in enumerate(inputs) if item.kind == "image"]
        out = np.zeros((len(inputs), self.model.embed_dim), dtype=np.float32)
        scale = l2 if normalize else (lambda x: x)
        truncated = [False] * len(inputs)
        tokens = 0
        strings = [check_text(inputs[i].value, self.config, f"{where}[{i}]") for i in texts]
        pending: list[tuple[list[int], object]] = []
        with self.batcher.preparing():  # the batcher waits for these inputs instead of running without them
            arrays = await run_in_threadpool(self.prepare_images, [inputs[i].value for i in images],
                                             [f"{where}[{i}]" for i in images]) if images else None
            if texts:
                if sum(map(len, strings)) <= INLINE_TEXT_CHARS:  # cheaper than the hop to a thread
                    ids, cut = self.model.tokenize(strings)
                else:
                    ids, cut = await run_in_threadpool(self.model.tokenize, strings)
                tokens = int((ids != self.model.pad_id).sum())
                for i, c in zip(texts, cut):
                    truncated[i] = c
            try:
                if texts:
                    pending.append((texts, self.batcher.submit("text", ids)))
                if images:
                    pending.append((images, self.batcher.submit("image", arrays)))
            except BaseException:
                _abandon(pending)
                raise
        try:
            for positions, future in pending:
                out[positions] = scale(await future)
        finally:
            _abandon(pending)
        return Embedded(out, truncated, tokens)

    # -------------------------------------------------------------------------------------------------- rank

    def _logits(self, scores: np.ndarray) -> np.ndarray:
        return self.model.logit_scale * scores + (self.model.logit_bias or 0.0)

    async def rank(self, query: Input, candidates: Sequence[Input]) -> dict:
        embedded = await self.embed([query, *candidates], "candidates")
        scores = embedded.vectors[1:] @ embedded.vectors[0]
        logits = self._logits(scores)
        result = {"scores": scores, "probabilities": softmax(logits), "truncated": embedded.truncated}
        if self.model.logit_bias is not None:  # sigmoid-trained: each pair's own probability is meaningful
            result["sigmoid"] = 1 / (1 + np.exp(-logits))
        return result

    # ---------------------------------------------------------------------------------------------- classify

    async def class_vectors(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """(C, D) zero-shot class vectors: each label's template embeddings averaged, then normalised."""
        key = (tuple(labels), tuple(templates))
        if key in self._classes:
            self._classes.move_to_end(key)
            return self._classes[key]
        for t in templates:
            if "{}" not in t:
                raise InputError(f"template {t!r} has no '{{}}' where the class name goes")
        prompts = [Input("text", t.replace("{}", label)) for label in labels for t in templates]
        vectors = []
        for start in range(0, len(prompts), self.config.max_inputs):
            vectors.append((await self.embed(prompts[start:start + self.config.max_inputs], "labels")).vectors)
        weights = l2(np.concatenate(vectors).reshape(len(labels), len(templates), -1).mean(axis=1))
        self._classes[key] = weights
        while len(self._classes) > 16:
            self._classes.popitem(last=False)
        return weights

    async def classify(self, images: Sequence[Input], labels: Sequence[str], templates: Sequence[str]):
        if len(labels) > self.config.max_labels:
            raise InputError(f"{len(labels)} labels, more than the limit of {self.config.max_labels}", 413)
        if len(labels) * len(templates) > 10 * self.config.max_labels:
            raise InputError(f"{len(labels)} labels x {len(templates)} templates is more than "
                             f"{10 * self.config.max_labels} prompts; use fewer templates", 413)
        if len(set(labels)) != len(labels):
            raise InputError("labels must be distinct")
        weights = await self.class_vectors(labels, templates)
        features = (await self.embed(images, "images")).vectors
        scores = features @ weights.T
        return scores, softmax(self.model.logit_scale * scores)

    # ------------------------------------------------------------------------------------------------ search

    async def search(self, query: Input | None, vector: Sequence[float] | None, k: int, prefix: str | None,
                     where: dict | None) -> tuple[list, bool]:
        from starlette.concurrency import run_in_threadpool

        if self.index is None:
            raise InputError(NO_INDEX, 404)
        if (query is None) == (vector is None):
            raise InputError("give a query (text or image) or a vector, exactly one")
        truncated = False
        if vector is not None:
            with np.errstate(over="ignore"):  # 1e300 becomes inf, refused below
                v = np.asarray(vector, dtype=np.float32)
            if v.shape != (self.model.embed_dim,) or not np.isfinite(v).all():
                raise InputError(f"vector must hold {self.model.embed_dim} finite numbers, got {len(vector)}")
        else:
            embedded = await self.embed([query], "query")
            v, truncated = embedded.vectors[0], embedded.truncated[0]
        try:
            hits = await run_in_threadpool(self.index.search_vector, v, k, where, prefix)
        except (KeyError, ValueError) as e:
            raise InputError(str(e.args[0]) if e.args else str(e)) from None
        return [(hit, self.index.position(hit.key)) for hit in hits], truncated
