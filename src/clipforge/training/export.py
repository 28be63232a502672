"""A training checkpoint -> a model folder in the hub layout, ready for ``create_model``, open_clip and the hub.

``export_model(RUN or CHECKPOINT, OUT)`` reads a checkpoint (a file, or an FSDP2 sharded folder), rebuilds the
model from the architecture the checkpoint carries, and writes ``open_clip_config.json`` +
``open_clip_model.safetensors`` + a short ``README.md`` model card into ``OUT``, through a temporary folder renamed
into place (a crash leaves no half folder; an existing non-empty ``OUT`` is refused unless ``force``).
Share it with ``hf upload ORG/NAME OUT .`` (huggingface_hub's command line).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from clipforge._atomic import atomic_directory, check_output_folder
from clipforge.config import from_dict
from clipforge.models import adapters
from clipforge.models.clip import CLIP, ModelInfo
from clipforge.models.coca import build_model
from clipforge.models.factory import ModelLoadError, create_model, save_pretrained
from clipforge.models.hub_layout import declared_from_section
from clipforge.models.loading import load_weights
from clipforge.models.resolve import SECTION_KEY
from clipforge.training import checkpoint as ckpt


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked (the message says why and what to do)."""


def find_checkpoint(source: str | Path) -> Path:
    """A run folder -> its latest checkpoint; a checkpoint file or sharded folder -> itself."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a run folder or a checkpoint file")
    if path.is_dir() and (path / "checkpoints").is_dir():
        found = ckpt.latest_checkpoint(path / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"{path}/checkpoints holds no checkpoint (step_*.pt) yet")
        return found
    if path.is_file() or (path / "meta.pt").is_file():
        return path
    raise FileNotFoundError(f"{path} is neither a run folder (with checkpoints/) nor a checkpoint")


def _sharded_model(path: Path) -> CLIP:
    """Rebuild a model from an FSDP2 sharded checkpoint folder (torch.distributed.checkpoint), on one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    meta = ckpt.load_checkpoint(path / "meta.pt")
    section = meta.get(SECTION_KEY)
    if not isinstance(section, dict):
        raise ExportError(f"{path} does not carry its architecture (written by an older clipforge); export it "
                          "from a process that builds the model, or retrain")
    declared = declared_from_section(section, f"checkpoint {path}")
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(path), str(full))
        state = torch.load(full, map_location="cpu", weights_only=True)["model"]
    info = ModelInfo(preprocess=declared.preprocess, arch=declared.arch, overrides=dict(declared.overrides),
                     source=f"checkpoint {path}")
    model = build_model(declared.config, info)
    if any(".lora_" in k for k in state):  # a LoRA run: the shards hold base layers and adapters; merge them
        adapters.apply_lora(model, _lora_config(meta))
        model.load_state_dict(state, strict=True)
        return adapters.merge_lora(model).eval()
    load_weights(model, state, f"checkpoint {path}")
    return model.eval()


def _lora_config(meta: Mapping) -> adapters.LoraConfig:
    return from_dict(adapters.LoraConfig, (meta.get("config") or {}).get("lora") or {})


def _adapter_weights(path: Path) -> tuple[dict[str, torch.Tensor], Mapping]:
    """(adapter tensors, checkpoint meta) of a LoRA run's checkpoint file or sharded folder."""
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        meta = ckpt.load_checkpoint(path / "meta.pt")
        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(str(path), str(Path(tmp) / "full.pt"))
            state = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)["model"]
    else:
        meta = ckpt.load_checkpoint(path)
        state = meta.get("adapters") or {}
    return {k: v for k, v in state.items() if ".lora_" in k}, meta


def export_adapters(source: str | Path, out: str | Path) -> Path:
    """Write the LoRA adapters of a run (or checkpoint) alone into ``out``, with their config and the fingerprint of
    the base model (``model.name`` / ``model.pretrained`` of the run's config), for ``adapters.load_adapters``."""
    checkpoint = find_checkpoint(source)
    weights, meta = _adapter_weights(checkpoint)
    if not weights:
        raise ExportError(f"{checkpoint} holds no LoRA adapters (the run had lora rank 0 on both towers)")
    fingerprint = meta.get("lora_base_fingerprint")
    if not fingerprint:
        raise ExportError(f"{checkpoint} does not record the fingerprint of its base model; export the merged "
                          "model instead (clipforge export-model)")
    return adapters.save_adapters(weights, _lora_config(meta), fingerprint, out,
                                  meta.get("lora_base_description", ""))


def load_checkpoint_model(path: str | Path, arch: str | None = None) -> CLIP:
    """The model in a training checkpoint; ``arch`` is needed only for checkpoints that do not describe themselves
    (written before clipforge recorded the architecture)."""
    path = Path(path)
    if path.is_dir():
        return _sharded_model(path)
    try:
        return create_model(f"{arch}::{path}" if arch else str(path))
    except ModelLoadError as e:
        if arch is None and "does not describe itself" in str(e):
            raise ExportError(f"{path} does not carry its architecture (written by an older clipforge): pass the "
                              "architecture, e.g. --model ViT-B-32") from None
        raise


def _model_card(model: CLIP, checkpoint: Path, metrics: Mapping[str, float] | None) -> str:
    arch = model.info.arch or "custom"
    lines = [f"# {arch} trained with clipforge", "",
             f"Exported from `{checkpoint}`.", "",
             f"- architecture: `{arch}`" + (f" with changes `{json.dumps(dict(model.info.overrides))}`"
                                            if model.info.overrides else ""),
             f"- image size {model.config.vision.image_size}, context length {model.config.text.context_length}, "
             f"tokenizer `{model.config.tokenizer}`", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())] + [""]
    lines += ["```python", "import clipforge  # or: import open_clip; open_clip.create_model_and_transforms('local-dir:.')",
              "model, _, preprocess = clipforge.create_model_and_transforms('local-dir:THIS_FOLDER')", "```", "",
              "Share it: `hf upload ORG/NAME THIS_FOLDER .`", ""]
    return "\n".join(lines)


def export_model(source: str | Path, out: str | Path, *, force: bool = False, arch: str | None = None,
                 metrics: Mapping[str, float] | None = None) -> Path:
    """Write the model of ``source`` (a run folder or checkpoint) to ``out`` in the hub layout (see module doc)."""
    out = check_output_folder(out, force)
    checkpoint = find_checkpoint(source)
    resolved_out, resolved_source = out.resolve(), Path(source).expanduser().resolve()
    if resolved_out == resolved_source or resolved_out in resolved_source.parents:
        raise ExportError(f"--out {out} is the source or a folder holding it: choose another folder (the export "
                          "would replace the run it reads)")
    model = load_checkpoint_model(checkpoint, arch)
    with atomic_directory(out) as tmp:
        save_pretrained(model, tmp)
        (tmp / "README.md").write_text(_model_card(model, checkpoint, metrics), encoding="utf-8")
    return out
