"""int8 and fp16 variants of exported fp32 graphs, with ONNX Runtime's own tools.

- ``dynamic``: weights of MatMul/Gemm (and Conv) stored as int8, activations quantised on the fly per batch
  (``onnxruntime.quantization.quantize_dynamic``). Needs no data.
- ``static``: weights and activations int8 with scales calibrated on the user's images
  (``quantize_static``, QDQ format, per-channel weights). Only the image graph is calibrated this way (the text
  graph gets the dynamic treatment: calibrating it would need the user's texts, and text features are usually
  computed once per label set).
- ``fp16``: every float tensor in half precision, inputs and outputs kept float32
  (``onnxruntime.transformers.float16``); meant for GPUs, where it halves memory and bandwidth.

Whether a variant is good enough is measured by the caller (``export.accuracy``), never assumed.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from clipforge.data.images import ImageReadError, read_image
from clipforge.runtime.encoder import l2_normalize

INT8_MODES = ("dynamic", "static")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_LINEAR_OPS = ["MatMul", "Gemm"]


class _DropPreprocessAdvice(logging.Filter):
    """onnxruntime's quantiser advises, on the root logger, a pre-processing step clipforge's graphs do not need
    (they are exported already optimised); the advice would only confuse users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet():
    root, advice = logging.getLogger(), _DropPreprocessAdvice()
    root.addFilter(advice)  # a logger's own filters see every record logged on it
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize_dynamic_graph(source: Path, target: Path, conv: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = _LINEAR_OPS + (["Conv"] if conv else [])
    with _quiet():
            quantize_dynamic(str(source), str(target), op_types_to_quantize=ops, weight_type=QuantType.QInt8,
                         per_channel=False, extra_options={"MatMulConstBOnly": True})


def calibration_files(folder: str | Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files under ``folder`` (recursively), spread evenly over the sorted list."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder {folder} does not exist: pass a folder of your images "
                                "(--calibration DIR)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


class _ImageReader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed images, a batch at a time."""

    def __init__(self, files: Sequence[Path], preprocess: Callable, input_name: str, batch: int):
        self.files, self.preprocess, self.input_name, self.batch = list(files), preprocess, input_name, batch
        self._batches: Iterator | None = None

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        usable = 0
        for start in range(0, len(self.files), self.batch):
            arrays = []
            for path in self.files[start:start + self.batch]:
                try:
                    arrays.append(self.preprocess(read_image(path)))
                except ImageReadError:
                    continue  # an unreadable file does not stop the calibration
            if arrays:
                usable += len(arrays)
                yield {self.input_name: np.stack(arrays)}
        if usable == 0:
            raise ValueError("no calibration image could be decoded: check the files of --calibration")

    def get_next(self):
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


def quantize_static_graph(source: Path, target: Path, files: Sequence[Path], preprocess: Callable,
                          input_name: str, batch: int | None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = _ImageReader(files, preprocess, input_name, batch or 8)  # a CalibrationDataReader by its get_next
    with _quiet():
        quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=_LINEAR_OPS + ["Conv"], per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "MatMulConstBOnly": True})


def fp16_graph(source: Path, target: Path, save: Callable) -> list[str]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    return save(model, target)


def cosine_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """The lowest cosine similarity between matching rows of two feature matrices."""
    return float((l2_normalize(reference) * l2_normalize(other)).sum(axis=1).min())


__all__ = ["INT8_MODES", "quantize_dynamic_graph", "quantize_static_graph", "fp16_graph", "calibration_files",
           "cosine_agreement"]
