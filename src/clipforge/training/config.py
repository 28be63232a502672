"""The training run configuration: one typed section per module that reads it.

Sections owned elsewhere are imported from their owners (``DataConfig`` from ``training.data``, ``LossConfig``
from ``losses``, ``AugmentConfig`` from ``transforms``); this module only composes them. Run configs live in
``configs/*.py`` as ``get_config(arg) -> TrainConfig``; the command line changes fields by dotted path.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Literal, Optional

from clipforge.config import ConfigError, apply_overrides, from_dict, to_dict
from clipforge.losses.config import LossConfig
from clipforge.training.data import DataConfig
from clipforge.transforms import AugmentConfig


@dataclasses.dataclass(frozen=True)
class ModelSection:
    name: str = "tiny-vit"                    # architecture name or ARCH::TAG
    pretrained: Optional[str] = None          # tag, file, hf-hub:org/repo, directory, or an open_clip train checkpoint
    overrides: dict = dataclasses.field(default_factory=dict)  # dotted architecture overrides
    image_size: Optional[int] = None
    grad_checkpointing: bool = False
    compile: bool = False                     # torch.compile the model
    lock_image: bool = False                  # LiT: freeze the image tower ...
    lock_image_unlocked_groups: int = 0       # ... except its last N groups
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    teacher: Optional[str] = None             # frozen teacher for loss.kind=distill, e.g. "ViT-L-14::openai"


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """Training-time text handling (evaluation always uses the plain tokenizer)."""
    context_length: Optional[int] = None      # None: the model's full context
    reduction: Optional[Literal["simple", "random", "shuffle", "syntax"]] = None  # shorten long captions


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98                       # CLIP's ViT setting; 0.999 suits ResNets
    eps: float = 1e-6
    grad_clip: Optional[float] = None         # max global grad norm
    accum_steps: int = 1                      # exact large-batch gradient via cached features
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"   # autocast dtype; fp16 adds a grad scaler


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    kind: Literal["cosine", "const", "linear"] = "cosine"
    steps: int = 100                          # total optimizer steps
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 100
    keep_last: int = 2
    resume: Optional[str] = "auto"            # "auto": latest in workdir; a path; None: start fresh
    max_nonfinite: int = 5                    # consecutive non-finite losses before the run stops


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 0                      # 0: only at the end
    zeroshot_data: Optional[str] = None       # WebDataset spec with cls labels (e.g. the quickstart's val shards)
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ("a photo of a {}.",)
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = False
    wandb: bool = False
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class DistConfig:
    strategy: Literal["ddp", "fsdp2"] = "ddp"
    backend: Optional[Literal["nccl", "gloo"]] = None   # None: nccl on CUDA, gloo otherwise


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    workdir: str = "runs/default"
    seed: int = 0
    model: ModelSection = ModelSection()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    dist: DistConfig = DistConfig()


def load_config(spec: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """``configs/tiny.py`` or ``configs/clip.py:arg`` (a Python file with ``get_config(arg)``), a resolved
    ``config.json`` from a run folder, or None for the defaults; then dotted ``overrides``."""
    config = TrainConfig()
    if spec:
        path, _, arg = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"config file '{path}' not found (give a configs/*.py file or a run's config.json)")
        if file.suffix == ".json":
            config = from_dict(TrainConfig, json.loads(file.read_text()))
        else:
            config = _run_config_file(file, arg or None)
    return apply_overrides(config, overrides or [])


def _run_config_file(file: Path, arg: str | None) -> TrainConfig:
    module_spec = importlib.util.spec_from_file_location(f"clipforge_run_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{file} must define get_config(arg) -> TrainConfig")
    config = module.get_config(arg)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"{file}: get_config must return a TrainConfig, got {type(config).__name__}")
    return config


def config_to_json(config: TrainConfig) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, data)
