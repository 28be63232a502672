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

from clipforge.config import ConfigError, apply_overrides, dotted_differences, from_dict, to_dict
from clipforge.losses.config import LossConfig
from clipforge.models.adapters import LoraConfig
from clipforge.precision import get_precision
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
    channels_last: Optional[bool] = None      # NHWC weights and images; None: on for convolutional image towers
                                              # (ResNets), whose oneDNN / cuDNN kernels run NHWC natively;
                                              # never under FSDP2 (contiguous weights only)
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


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98                       # CLIP's ViT setting; 0.999 suits ResNets
    eps: float = 1e-6
    grad_clip: Optional[float] = None         # max global grad norm
    accum_steps: int = 1                      # exact large-batch gradient via cached features
    layer_decay: float = 1.0                  # layer-wise lr decay for fine-tuning (e.g. 0.75); 1.0 = off
    fused: Optional[bool] = None              # torch's fused AdamW kernel; None: used where it applies
    # a clipforge.precision name: fp32, amp (fp16 autocast + grad scaler), amp_bf16 (bf16 autocast), bf16 (weights)
    precision: str = "fp32"

    def __post_init__(self):
        _check([(self.lr > 0, f"optim.lr must be positive, got {self.lr}"),
                (self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}"),
                (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
                 f"optim.beta1 and optim.beta2 must be in [0, 1), got {self.beta1}, {self.beta2}"),
                (self.eps > 0, f"optim.eps must be positive, got {self.eps}"),
                (self.grad_clip is None or self.grad_clip > 0,
                 f"optim.grad_clip must be positive or null, got {self.grad_clip}"),
                (0 < self.layer_decay <= 1, f"optim.layer_decay must be in (0, 1] (1 = off), got {self.layer_decay}"),
                (self.accum_steps >= 1, f"optim.accum_steps must be >= 1 (1 = no accumulation), got "
                                        f"{self.accum_steps}")])
        try:
            precision = get_precision(self.precision)
        except ValueError as e:
            raise ConfigError(f"optim.precision: {e}") from None
        if precision.name == "fp16":
            raise ConfigError("optim.precision='fp16' (float16 weights) cannot train: float16 gradients underflow "
                              "and the grad scaler refuses them. Use 'amp' (float16 autocast with a scaler) or "
                              "'amp_bf16'")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    kind: Literal["cosine", "const", "linear"] = "cosine"
    steps: int = 100                          # total optimizer steps
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        _check([(self.steps >= 1, f"schedule.steps must be >= 1, got {self.steps}"),
                (0 <= self.warmup_steps <= self.steps,
                 f"schedule.warmup_steps={self.warmup_steps} must be in [0, schedule.steps={self.steps}]"),
                (0 <= self.min_lr_ratio <= 1, f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")])


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 100                    # 0: only at the end
    keep_last: int = 2
    resume: Optional[str] = "auto"            # "auto": latest in workdir; a path; None: start fresh
    max_nonfinite: int = 5                    # consecutive non-finite losses before the run stops
    allow_config_change: bool = False         # resume although fields that change the run differ (recorded)
    export_model: bool = True                 # write WORKDIR/model (hub layout) at the end of the run

    def __post_init__(self):
        _check([(self.every_steps >= 0, f"checkpoint.every_steps must be >= 0, got {self.every_steps}"),
                (self.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {self.keep_last}"),
                (self.max_nonfinite >= 1, f"checkpoint.max_nonfinite must be >= 1, got {self.max_nonfinite}")])


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Zero-shot evaluation during and after training, on datasets given as ``clipforge benchmark`` takes them:
    shipped names under ``data_root`` (``cifar10``), or ``folder:``, ``wds:``, ``captions:`` paths, optionally
    labelled (``val=wds:data/val-{000000..000001}.tar``). Metrics are logged as ``eval/<dataset>/<metric>``."""
    datasets: tuple[str, ...] = ()
    data_root: str = "data"
    every_steps: int = 0                      # 0: only at the end
    # image_caption_selection: SugarCrepe / Winoground datasets (sugar_crepe/<task>, winoground)
    tasks: tuple[str, ...] = ("zeroshot_classification", "zeroshot_retrieval", "image_caption_selection")
    templates: str = ""                       # a shipped template set for every dataset (else each dataset's own)
    ties: Literal["reference", "pessimistic"] = "reference"
    batch_size: int = 64
    workers: int = 0

    def __post_init__(self):
        allowed = ("zeroshot_classification", "zeroshot_retrieval", "image_caption_selection")
        _check([(self.every_steps >= 0, f"eval.every_steps must be >= 0, got {self.every_steps}"),
                (self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}"),
                (self.workers >= 0, f"eval.workers must be >= 0, got {self.workers}"),
                (all(t in allowed for t in self.tasks), f"eval.tasks must be among {list(allowed)}, got "
                                                        f"{list(self.tasks)}")])


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
    threads: Optional[int] = None             # CPU threads for torch; None: auto (1 when the CPUs are already busy)
    keep_freed_memory: bool = True            # CPU runs: malloc keeps freed blocks mapped for the next step
    model: ModelSection = ModelSection()
    lora: LoraConfig = LoraConfig()           # LoRA adapters per tower (peft); the base weights stay frozen
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

    def __post_init__(self):
        _check([(self.threads is None or self.threads >= 1,
                 f"threads must be >= 1 (or null for automatic), got {self.threads}")])


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


# Fields a resumed run may change without changing what it computes; others need checkpoint.allow_config_change.
# (data.workers is not one: WebDataset shards are split over workers, so another count changes the sample order)
# memory layouts and thread counts change the order of float additions, not what is computed
RESUMABLE_CHANGES = ("workdir", "threads", "model.channels_last", "schedule.steps", "checkpoint.", "log.", "eval.")


def changed_fields(old: dict, new: dict) -> list[str]:
    """Dotted paths where two config dicts differ."""
    return list(dotted_differences(old, new))


def config_to_json(config: TrainConfig) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, data)
