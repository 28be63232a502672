"""The ONNX bundle: a folder that alone describes an exported model.

``clipforge export`` writes it; ``OnnxEncoder`` reads it. Layout::

    DIR/clipforge_onnx.json     the manifest (below)
    DIR/image.onnx, text.onnx   fp32 graphs (plus image.onnx.data / text.onnx.data for graphs over 2 GB)
    DIR/image.int8.onnx ...     other variants, when asked for (fp16, int8 dynamic / static)
    DIR/tokenizer/...           the tokenizer's files (CLIP's BPE vocabulary, or a hub tokenizer.json)

The manifest (JSON) holds: the format and its version, the clipforge version, the architecture (name and full
config, plus open_clip's ``model_cfg`` when it can express it), the preprocessing, the tokenizer (kind, files,
context length, cleaning), the embedding size, whether graph outputs are normalised (they are not: the runtime
normalises on request, as ``encode_image(normalize=True)`` does), ``logit_scale`` / ``logit_bias``, and for every
variant each graph's file, input and output names, batch size (``null`` for dynamic), and the sha256 and size of
each file it needs. Reading a bundle checks every hash, so a missing, truncated or altered graph is refused by name.

No torch here: the runtime reads bundles with numpy, Pillow and onnxruntime only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

MANIFEST = "clipforge_onnx.json"
FORMAT = "clipforge-onnx"
FORMAT_VERSION = 1
GRAPHS = ("image", "text")


class BundleError(ValueError):
    """A bundle that cannot be used as it is (the message names the file and what to do)."""


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(directory: Path, name: str) -> dict[str, Any]:
    """``{"file", "sha256", "bytes"}`` of one file of the bundle."""
    path = directory / name
    return {"file": name, "sha256": sha256_of(path), "bytes": path.stat().st_size}


@dataclass(frozen=True)
class Bundle:
    """A read (and verified) bundle: its folder and manifest."""

    directory: Path
    manifest: Mapping[str, Any]

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.manifest["variants"])

    @property
    def default_variant(self) -> str:
        return self.manifest["default_variant"]

    def graph(self, variant: str, tower: str) -> Mapping[str, Any]:
        if variant not in self.manifest["variants"]:
            raise BundleError(f"{self.directory} has no variant {variant!r}; it has: {', '.join(self.variants)}")
        return self.manifest["variants"][variant]["graphs"][tower]

    def path(self, name: str) -> Path:
        return self.directory / name


def _check_files(directory: Path, records: list[Mapping[str, Any]]) -> None:
    for record in records:
        path = directory / record["file"]
        if not path.is_file():
            raise BundleError(f"{path} is missing from the bundle: export the model again with clipforge export")
        if path.stat().st_size != record["bytes"] or sha256_of(path) != record["sha256"]:
            raise BundleError(f"{path} does not match the sha256 in {MANIFEST} (altered or truncated): export the "
                              "model again with clipforge export")


def bundle_files(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every file record the manifest lists: graphs, their external data, the tokenizer's files."""
    records = list(manifest["tokenizer"]["files"])
    for variant in manifest["variants"].values():
        for graph in variant["graphs"].values():
            records += [graph["model"], *graph.get("external_data", [])]
    return records


def read_bundle(directory: str | Path, verify: bool = True) -> Bundle:
    """Read ``DIR/clipforge_onnx.json``; with ``verify`` every listed file's size and sha256 are checked."""
    directory = Path(directory).expanduser()
    path = directory / MANIFEST
    if not directory.is_dir():
        raise BundleError(f"{directory} is not a folder: pass the folder clipforge export wrote")
    if not path.is_file():
        raise BundleError(f"{directory} holds no {MANIFEST}: it is not an ONNX bundle written by clipforge export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}): export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a clipforge ONNX manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{path} has format version {manifest['format_version']}, newer than this clipforge "
                          f"reads ({FORMAT_VERSION}): upgrade clipforge")
    if verify:
        _check_files(directory, bundle_files(manifest))
    return Bundle(directory, manifest)
