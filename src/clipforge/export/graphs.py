"""One tower of a clipforge model -> one ONNX graph file (fp32), checked by the ``onnx`` checker.

The graph is traced from the plain torch path: the fused CPU inference path (``layers/fused.py``) is switched off
while exporting (it also refuses itself while tracing), so no private oneDNN op reaches the graph; parity with
eager inference is then measured by the caller, with the fused path on, as users run it.

Exporters: ``dynamo`` (``torch.onnx.export(dynamo=True)``, torch.export + onnxscript; the default) and
``torchscript`` (the tracing exporter). ``auto`` tries dynamo and falls back to TorchScript, saying why.
Graphs whose weights pass ``EXTERNAL_DATA_BYTES`` (protobuf's 2 GB limit, minus a margin: ViT-H/g/bigG) keep their
weights in one ``<graph>.onnx.data`` file next to the graph.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from clipforge.layers.fused import fused_inference

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript")
DEFAULT_OPSET = 18
EXTERNAL_DATA_BYTES = 1_800_000_000


class ExportFailed(ValueError):
    """torch could not express the tower as an ONNX graph (the message names the exporter and the cause)."""


@dataclass(frozen=True)
class TowerSpec:
    """What to export: the tower, an example input, its names, and the batch (None = dynamic)."""

    name: str  # "image" or "text"
    module: nn.Module
    example: torch.Tensor
    input_name: str
    output_name: str
    batch: int | None


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'clipforge[onnx]'") from None
    return onnx


def _export_dynamo(spec: TowerSpec, path: Path, opset: int) -> None:
    dynamic = None if spec.batch else ({0: torch.export.Dim("batch", min=1, max=65536)},)
    torch.onnx.export(spec.module, (spec.example,), str(path), dynamo=True, input_names=[spec.input_name],
                      output_names=[spec.output_name], dynamic_shapes=dynamic, opset_version=max(opset, 18),
                      external_data=True, optimize=True, verbose=False)


def _export_torchscript(spec: TowerSpec, path: Path, opset: int) -> None:
    axes = None if spec.batch else {spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}}
    torch.onnx.export(spec.module, (spec.example,), str(path), dynamo=False, input_names=[spec.input_name],
                      output_names=[spec.output_name], dynamic_axes=axes, opset_version=opset,
                      do_constant_folding=True)


@contextlib.contextmanager
def _quiet_torch_onnx():
    """torch.onnx's progress chatter off while exporting; the logger's level is restored afterwards."""
    logger = logging.getLogger("torch.onnx")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _trace(spec: TowerSpec, path: Path, opset: int, exporter: str) -> str:
    """Write the graph to ``path`` (weights possibly beside it); returns the exporter that succeeded."""
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    failures = []
    for name in order:
        try:
            with fused_inference(False), torch.no_grad(), warnings.catch_warnings(), _quiet_torch_onnx():
                warnings.simplefilter("ignore")
                (_export_dynamo if name == "dynamo" else _export_torchscript)(spec, path, opset)
            if failures:
                log.warning("the %s tower was exported with %s: %s", spec.name, name, "; ".join(failures))
            return name
        except Exception as e:  # noqa: BLE001 - any exporter failure is reported with its cause below
            failures.append(f"{name} exporter failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})")
    raise ExportFailed(f"the {spec.name} tower cannot be exported to ONNX: " + "; ".join(failures))


def save_graph(model, path: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> list[str]:
    """Save an ``onnx.ModelProto`` at ``path``: weights inline, or in ``<name>.data`` when they pass the limit.
    Returns the external data file names (none or one)."""
    onnx = import_onnx()
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes < external_data_bytes:
        onnx.save_model(model, str(path))
        return []
    data_name = f"{path.name}.data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return [data_name]


def export_tower(spec: TowerSpec, path: Path, opset: int = DEFAULT_OPSET, exporter: str = "auto",
                 external_data_bytes: int = EXTERNAL_DATA_BYTES) -> tuple[str, list[str]]:
    """Export one tower to ``path`` and check it. Returns (exporter used, external data file names)."""
    onnx = import_onnx()
    with tempfile.TemporaryDirectory(prefix="clipforge-onnx-") as scratch:
        traced = Path(scratch) / path.name
        used = _trace(spec, traced, opset, exporter)
        model = onnx.load(str(traced), load_external_data=True)
    model.doc_string = f"clipforge {spec.name} encoder"
    external = save_graph(model, path, external_data_bytes)
    onnx.checker.check_model(str(path), full_check=True)
    return used, external
