"""Export to ONNX: ``export_onnx(MODEL, OUT)`` writes a bundle (two graphs, a manifest, the tokenizer's files)
that ``clipforge.runtime.OnnxEncoder`` runs without torch; fp16 and int8 variants are measured, never assumed.

Level 4 (docs/architecture.md): it proves parity through ``clipforge.runtime`` and measures int8 accuracy with
``clipforge.evaluation``, both level 3.
"""
from clipforge.export.graphs import ExportFailed
from clipforge.export.onnx import ExportReport, OnnxExportConfig, export_onnx

__all__ = ["export_onnx", "OnnxExportConfig", "ExportReport", "ExportFailed"]
