"""``export_onnx(MODEL, OUT)``: a clipforge model as an ONNX bundle (``clipforge.runtime.bundle``), with parity
proven and reduced-precision variants measured.

Steps, all inside a temporary folder renamed into place at the end (a failure leaves nothing half-written):

1. the tokenizer's files are copied into ``OUT/tokenizer``;
2. the image and text towers are exported (``export.graphs``) and checked;
3. parity: ONNX Runtime (CPU) against torch eager, the fused CPU path on as users run it, on random images and
   real captions at batch 1 and 7 (or the fixed batch); a difference over ``parity_atol`` (relative to the
   features' scale) fails the export;
4. variants: fp16, int8 dynamic, int8 static (calibrated on ``calibration``), each with its lowest cosine
   similarity to fp32 on the probe inputs;
5. with ``holdout`` datasets: zero-shot top-1 and recall@5 of fp32 and every variant; a variant whose metric drops
   by more than ``tolerance`` points is kept in the bundle but not made the default. Without a held-out set no
   variant is made the default (its accuracy is unknown);
6. the manifest.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipforge._version import __version__
from clipforge._atomic import atomic_directory, check_output_folder
from clipforge.config import ConfigError
from clipforge.data.images import read_image
from clipforge.export import accuracy, quantize
from clipforge.export.graphs import (DEFAULT_OPSET, EXPORTERS, EXTERNAL_DATA_BYTES, ExportFailed, TowerSpec,
                                     export_tower, save_graph)
from clipforge.models import convert_config
from clipforge.models.clip import CLIP
from clipforge.models.factory import create_model, tokenizer_for_config
from clipforge.models.fingerprint import weights_fingerprint
from clipforge.models.hub_layout import clipforge_section
from clipforge.runtime import Bundle, OnnxEncoder
from clipforge.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, file_record
from clipforge.tokenizer import ClipTokenizer, HFTokenizer
from clipforge.tokenizer.bpe import default_vocab_path
from clipforge.tokenizer.hf import resolve_files
from clipforge.transforms import create_eval_array_transform

log = logging.getLogger(__name__)

PROBE_BATCHES = (1, 7)
PROBE_CAPTIONS = ("a photo of a cat", "a diagram", "two dogs playing in the snow near a red house",
                  "", "ein Foto", "a " * 100, "1234 !?")


@dataclass(frozen=True)
class OnnxExportConfig:
    """How to export. ``batch`` None = dynamic; ``int8`` is a tuple of ``quantize.INT8_MODES``; ``tolerance`` is
    the largest accepted drop, in points, of any held-out metric; ``parity_atol`` the largest fp32 difference."""

    opset: int = DEFAULT_OPSET
    batch: int | None = None
    exporter: str = "auto"
    fp16: bool = False
    int8: tuple[str, ...] = ()
    calibration: str | None = None
    calibration_images: int = 128
    holdout: tuple[str, ...] = ()
    data_root: str = "data"
    tolerance: float = 0.5
    parity_atol: float = 1e-4
    external_data_bytes: int = EXTERNAL_DATA_BYTES

    def __post_init__(self):
        if not 9 <= self.opset <= 23:
            raise ConfigError(f"opset must be between 9 and 23 (18 is the default), got {self.opset}")
        if self.batch is not None and (isinstance(self.batch, bool) or not isinstance(self.batch, int)
                                       or self.batch < 1):
            raise ConfigError(f"batch must be 'dynamic' or a positive int, got {self.batch!r}")
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {self.exporter!r}")
        bad = [m for m in self.int8 if m not in quantize.INT8_MODES]
        if bad:
            raise ConfigError(f"int8 mode {bad[0]!r} is unknown: use {' or '.join(quantize.INT8_MODES)}")
        if "static" in self.int8 and not self.calibration:
            raise ConfigError("int8 static quantisation needs calibration images: pass --calibration DIR (a folder "
                              "of your images), or use --int8 dynamic")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0) or not self.parity_atol > 0:
            raise ConfigError("tolerance must be >= 0 points and parity_atol > 0")
        if self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be >= 1, got {self.calibration_images}")


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and measured (also in the manifest)."""

    out: Path
    exporter: dict[str, str]
    parity: dict[str, float]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_variant: str = "fp32"
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- tokenizer


def _tokenizer_section(model: CLIP, tmp: Path) -> tuple[dict[str, Any], Any]:
    """Copy the tokenizer's files into ``tmp/tokenizer``; the manifest section and the tokenizer itself."""
    tokenizer = tokenizer_for_config(model.config)
    folder = tmp / "tokenizer"
    folder.mkdir()
    if isinstance(tokenizer, ClipTokenizer):
        kind, sources = "clip", [Path(default_vocab_path())]
    elif isinstance(tokenizer, HFTokenizer):
        kind, sources = "hf", [Path(p) for p in resolve_files(model.config.tokenizer).values() if p]
    else:
        raise ExportFailed(f"tokenizer {type(tokenizer).__name__} cannot be written into a bundle")
    for source in sources:
        shutil.copyfile(source, folder / source.name)
    section = {"kind": kind, "name": model.config.tokenizer, "folder": "tokenizer",
               "context_length": model.context_length, "clean": tokenizer.clean_mode,
               "strip_sep_token": bool(getattr(tokenizer, "strip_sep_token", False)),
               "files": [file_record(tmp, f"tokenizer/{s.name}") for s in sources]}
    return section, tokenizer


# ---------------------------------------------------------------- graphs and parity


def _probe_inputs(model: CLIP, tokenizer, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised-range images and real caption ids, ``batch`` of each."""
    height, width = model.preprocess_config.size_hw
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    captions = [PROBE_CAPTIONS[i % len(PROBE_CAPTIONS)] for i in range(batch)]
    return images, tokenizer(captions)


def _export_fp32(model: CLIP, tokenizer, tmp: Path, config: OnnxExportConfig) -> tuple[dict, dict[str, str]]:
    images, tokens = _probe_inputs(model, tokenizer, config.batch or 2)
    towers = [TowerSpec("image", model.visual, images, "images", "image_features", config.batch),
              TowerSpec("text", model.text, tokens, "tokens", "text_features", config.batch)]
    graphs, used = {}, {}
    for spec in towers:
        name = f"{spec.name}.onnx"
        used[spec.name], external = export_tower(spec, tmp / name, config.opset, config.exporter,
                                                 config.external_data_bytes)
        graphs[spec.name] = _graph_record(tmp, name, external, spec, spec.example)
    return graphs, used


def _graph_record(tmp: Path, name: str, external: list[str], spec: TowerSpec, example: torch.Tensor) -> dict:
    return {"model": file_record(tmp, name), "external_data": [file_record(tmp, e) for e in external],
            "input": spec.input_name, "output": spec.output_name, "batch": spec.batch,
            "input_shape": [spec.batch] + list(example.shape[1:]), "input_dtype": str(example.dtype).split(".")[-1]}


def _eager(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return model.encode_image(images).numpy(), model.encode_text(tokens).numpy()


def _parity(model: CLIP, tokenizer, tmp: Path, manifest: dict, config: OnnxExportConfig) -> dict[str, float]:
    """Largest difference, relative to the features' scale, between ONNX Runtime and eager; fails over the limit."""
    encoder = OnnxEncoder(Bundle(tmp, manifest), variant="fp32", providers=["cpu"])
    worst = {"image": 0.0, "text": 0.0}
    for batch in ([config.batch] if config.batch else PROBE_BATCHES):
        images, tokens = _probe_inputs(model, tokenizer, batch, seed=batch)
        eager_image, eager_text = _eager(model, images, tokens)
        for tower, eager, got in (("image", eager_image, encoder.encode_image(images.numpy())),
                                  ("text", eager_text, encoder.encode_text(tokens.numpy()))):
            scale = max(1.0, float(np.abs(eager).max()))
            worst[tower] = max(worst[tower], float(np.abs(got - eager).max()) / scale)
    for tower, error in worst.items():
        if not error <= config.parity_atol:
            raise ExportFailed(f"the exported {tower} graph differs from torch eager by {error:.2e} (relative), more "
                               f"than the {config.parity_atol:.0e} allowed: this architecture does not export "
                               "faithfully; please report it")
    return worst


# ---------------------------------------------------------------- variants


def _variant_graph(tmp: Path, fp32: dict, tower: str, name: str) -> dict:
    record = dict(fp32[tower])
    record.update(model=file_record(tmp, name), external_data=[])
    data = tmp / f"{name}.data"
    if data.exists():
        record["external_data"] = [file_record(tmp, data.name)]
    return record


def _make_variants(model: CLIP, tmp: Path, manifest: dict, config: OnnxExportConfig) -> dict[str, dict]:
    """Write the requested fp16 / int8 graphs; ``{variant: {"graphs": ...}}``."""
    fp32 = manifest["variants"]["fp32"]["graphs"]
    conv = model.config.vision.kind == "resnet"
    variants: dict[str, dict] = {}
    made: set[str] = set()  # graph files written, so a graph shared by two variants is made once

    def make(tower: str, name: str, build) -> dict:
        if name not in made:
            build(tmp / fp32[tower]["model"]["file"], tmp / name)
            made.add(name)
        return _variant_graph(tmp, fp32, tower, name)

    save = lambda proto, path: save_graph(proto, path, config.external_data_bytes)  # noqa: E731
    if config.fp16:
        variants["fp16"] = {"graphs": {t: make(t, f"{t}.fp16.onnx", lambda s, d: quantize.fp16_graph(s, d, save))
                                       for t in ("image", "text")}}
    dynamic = lambda s, d: quantize.quantize_dynamic_graph(s, d, conv)  # noqa: E731
    if "dynamic" in config.int8:
        variants["int8-dynamic"] = {"graphs": {t: make(t, f"{t}.int8.onnx", dynamic) for t in ("image", "text")}}
    if "static" in config.int8:
        files = quantize.calibration_files(config.calibration, config.calibration_images)
        preprocess = create_eval_array_transform(model.preprocess_config)
        static = lambda s, d: quantize.quantize_static_graph(  # noqa: E731
            s, d, files, preprocess, fp32["image"]["input"], config.batch)
        variants["int8-static"] = {"graphs": {"image": make("image", "image.int8-static.onnx", static),
                                              "text": make("text", "text.int8.onnx", dynamic)},
                                   "calibration_images": len(files)}
    return variants


@dataclass(frozen=True)
class _Probe:
    """Inputs on which each variant is compared with eager fp32, and eager's features, computed once."""

    images: np.ndarray
    tokens: np.ndarray
    image_features: np.ndarray
    text_features: np.ndarray


def _agreement_probe(model: CLIP, tokenizer, config: OnnxExportConfig) -> _Probe:
    """8 of the user's calibration images when given (else noise) and the probe captions."""
    images, tokens = _probe_inputs(model, tokenizer, 8, seed=1)
    if config.calibration:
        preprocess = create_eval_array_transform(model.preprocess_config)
        files = quantize.calibration_files(config.calibration, 8)
        images = torch.from_numpy(np.stack([preprocess(read_image(f)) for f in files]))
    image_features, text_features = _eager(model, images, tokens)
    return _Probe(images.numpy(), tokens.numpy(), image_features, text_features)


def _agreement(bundle: Bundle, variant: str, probe: _Probe) -> dict:
    """Lowest cosine similarity of the variant's features to eager fp32's, on the probe inputs."""
    encoder = OnnxEncoder(bundle, variant=variant, providers=["cpu"], verify=False)
    return {"image_cosine_min": round(quantize.cosine_agreement(probe.image_features,
                                                                encoder.encode_image(probe.images)), 5),
            "text_cosine_min": round(quantize.cosine_agreement(probe.text_features,
                                                               encoder.encode_text(probe.tokens)), 5)}


def _judge(report: ExportReport, config: OnnxExportConfig) -> None:
    """Accept each variant whose held-out metrics drop by at most ``tolerance`` points; pick the default."""
    if not report.accuracy:
        if report.variants:
            report.notes.append("no --holdout set was given, so the accuracy of "
                                f"{', '.join(report.variants)} is unknown: fp32 stays the default")
        return
    for name, info in report.variants.items():
        change = accuracy.changes(report.accuracy["fp32"], report.accuracy[name])
        info["accuracy_change_points"] = change
        info["accepted"] = all(c >= -config.tolerance for c in change.values())
        if not info["accepted"]:
            worst = min(change, key=change.get)
            report.notes.append(f"{name} loses {-change[worst]:.2f} points of {worst} (tolerance "
                                f"{config.tolerance}): kept in the bundle, fp32 stays the default for it")
    preference = ["int8-static", "int8-dynamic"]  # fp16 is never the default: it is for GPUs, chosen explicitly
    accepted = [n for n in preference if report.variants.get(n, {}).get("accepted")]
    report.default_variant = accepted[0] if accepted else "fp32"


# ---------------------------------------------------------------- the bundle


def _base_manifest(model: CLIP, spec: str, tokenizer_section: dict) -> dict[str, Any]:
    try:
        model_cfg = convert_config.config_to_open_clip(model.config)
    except ConfigError:
        model_cfg = None
    bias = model.logit_bias
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "clipforge_version": __version__,
            "architecture": model.info.arch or spec, "source": spec,
            "clipforge": clipforge_section(model.config, model.info.arch, model.info.overrides),
            "open_clip_model_cfg": model_cfg, "preprocess": model.preprocess_config.to_open_clip(),
            "tokenizer": tokenizer_section, "embed_dim": model.config.embed_dim, "outputs_normalized": False,
            "logit_scale": float(model.logit_scale.detach().float().exp()),
            "logit_bias": None if bias is None else float(bias.detach().float()),
            "weights_fingerprint": weights_fingerprint(model),  # lets an index made by the torch model accept it
            "default_variant": "fp32", "variants": {}}


def _load(model: str | CLIP) -> tuple[CLIP, str]:
    if isinstance(model, CLIP):
        return model, model.info.arch or "model"
    if not isinstance(model, str) or not model:
        raise TypeError(f"model must be a model name (as create_model takes) or a clipforge CLIP, got {model!r}")
    return create_model(model), model


def export_onnx(model: str | CLIP, out: str | Path, config: OnnxExportConfig | None = None,
                force: bool = False) -> ExportReport:
    """Export ``model`` (a name ``create_model`` takes, or a CLIP) as an ONNX bundle in ``out`` (see module doc).
    Long because it is the pipeline: each step is one call."""
    config = config or OnnxExportConfig()
    out = check_output_folder(out, force)
    model, spec = _load(model)
    if next(model.parameters()).dtype != torch.float32:
        model = copy.deepcopy(model).float()  # graphs are exported in float32; the caller's model is left as it is
    was_training = model.training
    model.eval()
    try:
        with atomic_directory(out) as tmp:
            section, tokenizer = _tokenizer_section(model, tmp)
            manifest = _base_manifest(model, spec, section)
            graphs, used = _export_fp32(model, tokenizer, tmp, config)
            manifest["variants"]["fp32"] = {"graphs": graphs}
            parity = _parity(model, tokenizer, tmp, manifest, config)
            manifest["variants"]["fp32"]["parity_max_relative_error"] = parity
            report = ExportReport(out, used, parity)
            variants = _make_variants(model, tmp, manifest, config)
            probe = _agreement_probe(model, tokenizer, config) if variants else None
            for name, info in variants.items():
                manifest["variants"][name] = info
                info.update(_agreement(Bundle(tmp, manifest), name, probe))
                report.variants[name] = info
            if config.holdout and report.variants:
                report.accuracy = accuracy.measure(Bundle(tmp, manifest), ["fp32", *report.variants],
                                                   config.holdout, config.data_root)
            _judge(report, config)
            manifest.update(default_variant=report.default_variant, exporter=used, opset=config.opset,
                            holdout_metrics=report.accuracy, tolerance_points=config.tolerance)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    finally:
        model.train(was_training)
    for note in report.notes:
        log.warning(note)
    return report
