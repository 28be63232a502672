"""The training run, top to bottom: check, set up, resume, step loop with logging, evaluation and checkpoints, export.

``train(config)`` is what ``clipforge train`` and ``python -m clipforge.train`` (under torchrun) call, and what the
tests call. Phases: validate -> context -> model -> data, evaluation sets -> resume (refusing a changed run) ->
write the run folder -> loop -> final checkpoint (first: an evaluation error loses no training), final evaluation
and model folder (``WORKDIR/model``).

Nothing is written to the run folder until every input has been checked (model, data, evaluation sets, resume).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as torch_dist

from clipforge import dist
from clipforge._atomic import write_text_atomic
from clipforge.allocator import keep_freed_memory, release_freed_memory
from clipforge.config import ConfigError, to_dict
from clipforge.cpu import set_threads
from clipforge.losses.config import create_loss
from clipforge.models import adapters, convert
from clipforge.models.factory import create_model, tokenizer_for_config
from clipforge.models.hub_layout import clipforge_section
from clipforge.models.resolve import SECTION_KEY
from clipforge.precision import get_precision
from clipforge.training import checkpoint as ckpt
from clipforge.training.config import RESUMABLE_CHANGES, TrainConfig, changed_fields, config_to_json
from clipforge.training.data import DataStats, create_train_loader
from clipforge.training.evaluate import create_evaluator
from clipforge.training.launch import DistributedModel, RunContext, barrier, distribute_model, init_run, shutdown
from clipforge.training.logging import METRICS_FILE, MetricsLogger, last_evaluation, last_value
from clipforge.training.optim import create_optimizer, match_state_layout, set_lr
from clipforge.training.step import train_step, unwrap
from clipforge.transforms import create_train_transform

logger = logging.getLogger("clipforge")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run stopped, the last good checkpoint is kept."""


@dataclasses.dataclass
class RunState:
    """What changes as the run goes: the position to resume from."""
    step: int = 0                # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0      # batches of `epoch` already consumed
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0


@dataclasses.dataclass(frozen=True)
class RunResult:
    workdir: Path
    checkpoint: Optional[Path]
    steps: int
    final_loss: float
    metrics: dict[str, float]
    model_dir: Optional[Path] = None
    already_complete: bool = False  # the run had finished before this call: nothing was trained


def validate(cfg: TrainConfig) -> None:
    """Every input problem that can be seen from the config alone, before any model or data is touched."""
    from clipforge.models.factory import parse_model_spec
    from clipforge.models.registry import get_architecture

    spec = parse_model_spec(cfg.model.name, cfg.model.pretrained)
    arch = get_architecture(spec.arch) if spec.arch is not None else None  # unknown name: lists close ones
    cfg.data.check_ready()
    if cfg.data.batch_size % cfg.optim.accum_steps:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by optim.accum_steps="
                          f"{cfg.optim.accum_steps}; pick a batch size that is a multiple of it")
    if cfg.loss.kind == "siglip" and arch is not None and arch.init_logit_bias is None \
            and "init_logit_bias" not in cfg.model.overrides:
        raise ConfigError(f"loss.kind=siglip needs a model with a learned logit bias, and {spec.arch} has none: use "
                          "a SigLIP architecture or set model.overrides={'init_logit_bias': -10.0}")
    if cfg.loss.kind == "coca" and arch is not None and arch.decoder is None:
        raise ConfigError(f"loss.kind=coca trains a caption decoder, and {spec.arch} has none: use a CoCa "
                          "architecture (coca_ViT-B-32, coca_ViT-L-14, tiny-coca) or another loss.kind")
    if cfg.loss.kind == "coca" and cfg.optim.accum_steps > 1:
        raise ConfigError("loss.kind=coca has no gradient-cached form yet: set optim.accum_steps=1 (and lower "
                          "data.batch_size if memory is short)")
    if cfg.model.channels_last and cfg.dist.strategy == "fsdp2":
        raise ConfigError("model.channels_last=true cannot go with dist.strategy=fsdp2: FSDP2 shards only contiguous "
                          "(NCHW) weights; leave model.channels_last unset or use dist.strategy=ddp")
    if (cfg.loss.kind == "distill") != (cfg.model.teacher is not None):
        raise ConfigError("loss.kind=distill and model.teacher go together: set both (e.g. model.teacher="
                          "'ViT-L-14::openai') or neither")


def build_teacher(cfg: TrainConfig, ctx: RunContext, student_image_size: int) -> Optional[torch.nn.Module]:
    if cfg.model.teacher is None:
        return None
    teacher = create_model(cfg.model.teacher).to(ctx.device).eval().requires_grad_(False)
    if teacher.config.vision.image_size != student_image_size:
        raise ConfigError(f"the teacher {cfg.model.teacher} takes {teacher.config.vision.image_size}px images but "
                          f"the student takes {student_image_size}px; both see the same batch, so pick matching "
                          "sizes (model.image_size)")
    return teacher


def build_model(cfg: TrainConfig, ctx: RunContext) -> torch.nn.Module:
    m = cfg.model
    model = create_model(m.name, m.pretrained, overrides=m.overrides or None, image_size=m.image_size)
    if m.lock_image:
        model.lock_image_tower(unlocked_groups=m.lock_image_unlocked_groups)
    if m.lock_text:
        model.lock_text_tower(unlocked_layers=m.lock_text_unlocked_layers)
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if getattr(model, "decoder", None) is not None and cfg.loss.kind != "coca":
        # only loss.kind=coca gives the caption decoder gradients; DDP needs every trainable parameter to get one
        model.decoder.requires_grad_(False)
        logger.info("the caption decoder is frozen: loss.kind=%s trains the contrastive towers only", cfg.loss.kind)
    adapters.apply_lora(model, cfg.lora)
    model = model.to(device=ctx.device, dtype=get_precision(cfg.optim.precision).weights)
    return model.to(memory_format=torch.channels_last) if uses_channels_last(cfg, model) else model


def uses_channels_last(cfg: TrainConfig, model: torch.nn.Module) -> bool:
    """``model.channels_last``, or when unset (None), whether the image tower is convolutional (more than a patch
    embedding's one convolution) and the run is not sharded by FSDP2 (which takes contiguous parameters only):
    oneDNN's and cuDNN's convolutions run natively on NHWC, and NCHW tensors are reordered around each of them
    (measured on CPU: an RN50 training step 6-17% faster in NHWC)."""
    if cfg.model.channels_last is not None:
        return cfg.model.channels_last
    if cfg.dist.strategy == "fsdp2":  # FSDP2 shards only contiguous parameters
        return False
    visual = getattr(unwrap(model), "visual", None)
    if visual is None:
        return False
    # a LoRA-wrapped convolution adds two small ones (lora_A / lora_B): count the model's own layers only
    own = [m for name, m in visual.named_modules() if isinstance(m, torch.nn.Conv2d) and ".lora_" not in f".{name}"]
    return len(own) > 1


def _model_section(model: torch.nn.Module) -> dict[str, Any]:
    """The architecture, overrides and preprocessing every checkpoint carries (see models.hub_layout)."""
    inner = unwrap(model)
    section = clipforge_section(inner.config, inner.info.arch, inner.info.overrides)
    section["preprocess"] = to_dict(inner.preprocess_config)
    return section


def _meta(state: RunState, cfg: TrainConfig, model, metrics: dict[str, float]) -> dict[str, Any]:
    """What every checkpoint holds besides weights and optimizer: position, RNG of every rank, config, the model's
    own description and the latest metrics."""
    inner = unwrap(model)
    fingerprint = getattr(inner, "lora_base_fingerprint", None)  # LoRA: the base the adapters belong to
    lora = {"lora_base_fingerprint": fingerprint,
            "lora_base_description": getattr(inner, "lora_base_description", "")} if fingerprint else {}
    return {"epoch": state.epoch, "run_state": dataclasses.asdict(state), "rng": all_rng_states(),
            "config": json.loads(config_to_json(cfg)), SECTION_KEY: _model_section(model), "metrics": dict(metrics),
            **lora}


def _checkpoint_payload(model, optimizer, scaler, state: RunState, cfg: TrainConfig, metrics) -> dict[str, Any]:
    inner = unwrap(model)
    # LoRA: the weights are stored merged (any reader gets the trained model) and the adapters beside them
    weights = adapters.merged_state_dict(inner)
    try:  # open_clip's key layout when the architecture has one, so its tools read our checkpoints too
        weights = convert.to_open_clip_state_dict(weights, inner.config)
    except convert.ConversionError:
        pass
    extra = {"adapters": adapters.adapter_state_dict(inner)} if adapters.has_adapters(inner) else {}
    return {"state_dict": weights, "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, **extra, **_meta(state, cfg, model, metrics)}


def all_rng_states() -> list[dict[str, Any]]:
    """The RNG state of every rank (ranks draw different dropout masks, so each must get its own back)."""
    states = [ckpt.rng_state()]
    if dist.is_initialized():
        states = [None] * dist.get_world_size()
        torch_dist.all_gather_object(states, ckpt.rng_state())
    return states


def _shard_templates(model, optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def _read_checkpoint(path: Path, wrapped: DistributedModel, optimizer) -> tuple[dict[str, Any], Any]:
    """(payload, shard templates or None) of one checkpoint; raises ValueError when it cannot be read."""
    if path.is_dir():
        if not wrapped.sharded:
            raise ConfigError(f"{path} is a sharded (FSDP2) checkpoint; resume it with dist.strategy=fsdp2")
        shards = _shard_templates(wrapped.module, optimizer)
        return ckpt.load_sharded(path, shards), shards
    return ckpt.load_checkpoint(path), None


def _load_resume_point(cfg: TrainConfig, ctx: RunContext, wrapped, optimizer) -> tuple[Optional[Path], Any, Any]:
    """The checkpoint to resume from with its payload; a damaged latest checkpoint falls back to the previous one."""
    target = cfg.checkpoint.resume
    if target is None:
        if ckpt.list_checkpoints(ctx.workdir / "checkpoints"):
            raise ConfigError(f"{ctx.workdir / 'checkpoints'} holds checkpoints of an earlier run and "
                              "checkpoint.resume is null (start fresh): use another workdir, move them away, or "
                              "resume with checkpoint.resume=auto")
        return None, None, None
    if target != "auto":
        path = Path(target)
        return (path, *_read_checkpoint(path, wrapped, optimizer))
    candidates = ckpt.list_checkpoints(ctx.workdir / "checkpoints")
    for path in reversed(candidates):
        try:
            return (path, *_read_checkpoint(path, wrapped, optimizer))
        except ConfigError:
            raise  # not damage: a checkpoint this run cannot take as it is configured
        except ValueError as e:
            logger.warning("checkpoint %s cannot be read (%s); falling back to the previous one", path,
                           str(e).splitlines()[0])
    if candidates:
        raise ValueError(f"no checkpoint in {ctx.workdir / 'checkpoints'} can be read; start a new run (another "
                         "workdir, or checkpoint.resume=null)")
    return None, None, None


def _check_config_change(cfg: TrainConfig, payload: dict, path: Path) -> list[str]:
    """The fields that differ from the checkpoint's config; raises for changes that alter the run unless allowed."""
    if SECTION_KEY not in payload and cfg.optim.precision in ("bf16", "fp16"):
        raise ConfigError(f"{path} was written by a clipforge in which optim.precision={cfg.optim.precision} meant "
                          f"{cfg.optim.precision} autocast; it now means {cfg.optim.precision} weights. Resume with "
                          f"--set optim.precision=amp_bf16 (or amp) and checkpoint.allow_config_change=true")
    changed = changed_fields(payload.get("config", {}), json.loads(config_to_json(cfg)))
    blocking = [f for f in changed if not any(f == p or (p.endswith(".") and f.startswith(p))
                                              for p in RESUMABLE_CHANGES)]
    if blocking and not cfg.checkpoint.allow_config_change:
        raise ConfigError(f"the run in {cfg.workdir} was started with a different config ({', '.join(blocking)} "
                          f"changed; resuming from {path.name}). Use a new workdir, or pass --set "
                          "checkpoint.allow_config_change=true to continue with the new values (recorded)")
    return changed


def _resume(cfg: TrainConfig, ctx: RunContext, wrapped: DistributedModel, optimizer, scaler):
    """(RunState, changed fields, checkpoint metrics) from the latest readable checkpoint, or a fresh state."""
    path, payload, shards = _load_resume_point(cfg, ctx, wrapped, optimizer)
    if path is None:
        return RunState(), [], {}
    changed = _check_config_change(cfg, payload, path)
    if shards is not None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(wrapped.module, optimizer, model_state_dict=shards["model"],
                       optim_state_dict=shards["optimizer"])
    else:
        inner = unwrap(wrapped.module)
        weights = convert.convert_state_dict(payload["state_dict"], inner.config)
        if adapters.has_adapters(inner) or "adapters" in payload:
            adapters.load_adapted_state(inner, weights, payload.get("adapters", {}))
        else:
            inner.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(payload["optimizer"])
        match_state_layout(optimizer)
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
    rngs = payload["rng"]
    if len(rngs) != ctx.world_size:
        raise ConfigError(f"{path} was written by {len(rngs)} ranks and this run has {ctx.world_size}: exact "
                          "resume needs the same world size")
    ckpt.set_rng_state(rngs[ctx.rank])
    state = RunState(**payload["run_state"])
    state.nonfinite_in_row = 0
    return state, changed, dict(payload.get("metrics") or {})


def _save(ctx, cfg, wrapped: DistributedModel, optimizer, scaler, state, metrics) -> Optional[Path]:
    directory = ctx.workdir / "checkpoints"
    if wrapped.sharded:
        return ckpt.save_sharded(directory, state.step, _shard_templates(wrapped.module, optimizer),
                                 _meta(state, cfg, wrapped.module, metrics), is_main=ctx.is_main,
                                 keep_last=cfg.checkpoint.keep_last, barrier=barrier)
    payload = _checkpoint_payload(wrapped.module, optimizer, scaler, state, cfg, metrics)  # collective
    path = None
    if ctx.is_main:
        path = ckpt.save_checkpoint(directory, state.step, payload, cfg.checkpoint.keep_last)
    barrier()
    return path


class _Batches:
    """Endless stream of (images, tokens), epoch after epoch, from the saved data position. The first loader is
    made at once, so a data problem fails the run before anything is written; ``stats()`` sums what the data
    pipeline skipped over every epoch so far, the current one included."""

    def __init__(self, cfg: TrainConfig, ctx: RunContext, state: RunState, transform, tokenizer,
                 channels_last: bool):
        self.cfg, self.ctx, self.state, self.transform, self.tokenizer = cfg, ctx, state, transform, tokenizer
        self.channels_last = channels_last
        self.done = DataStats()
        self.loader = self._loader()
        self._it = None

    def _loader(self):
        return create_train_loader(self.cfg.data, image_transform=self.transform, tokenize=self.tokenizer,
                                   rank=self.ctx.rank, world_size=self.ctx.world_size, epoch=self.state.epoch,
                                   start_batch=self.state.batch_in_epoch)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            batch = next(self._it, None)
            if batch is not None:
                images, tokens = batch
                images = images.to(self.ctx.device, non_blocking=True)
                if images.dtype == torch.uint8:  # data.uint8_images: normalised here, on the device
                    images = self.transform.batch_normalizer(images)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                return images, tokens.to(self.ctx.device, non_blocking=True)
            initial = self.loader.initial.as_dict()
            self.done.add({k: v - initial[k] for k, v in self.loader.stats.as_dict().items()})
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self.loader, self._it = self._loader(), None

    def stats(self) -> DataStats:
        """Skips of every epoch so far; what loading the source dropped (empty CSV rows) counts once."""
        total = DataStats()
        total.add(self.done.as_dict())
        total.add({k: v - self.loader.initial.as_dict()[k] for k, v in self.loader.stats.as_dict().items()})
        total.add(self.loader.initial.as_dict())
        return total


def _on_skipped_step(state: RunState, cfg: TrainConfig, ctx: RunContext, log: MetricsLogger) -> None:
    """Count a step skipped for a non-finite loss; too many in a row stop the run (last checkpoint kept)."""
    state.nonfinite_in_row += 1
    state.nonfinite_total += 1
    log.warn(f"step {state.step}: non-finite loss, update skipped "
             f"({state.nonfinite_in_row} in a row, {state.nonfinite_total} in total)")
    if state.nonfinite_in_row >= cfg.checkpoint.max_nonfinite:
        raise NonFiniteLossError(
            f"{state.nonfinite_in_row} non-finite losses in a row at step {state.step}: stopping. The last good "
            f"checkpoint is in {ctx.workdir / 'checkpoints'}; lower optim.lr, enable optim.grad_clip or use "
            "optim.precision=amp_bf16/fp32, then resume.")


@dataclasses.dataclass
class _Run:
    """Everything the step loop works with, built and checked before anything is written."""
    cfg: TrainConfig
    ctx: RunContext
    wrapped: DistributedModel
    optimizer: torch.optim.Optimizer
    scaler: Any
    loss_fn: Callable
    teacher: Any
    batches: Any
    evaluate: Any
    state: RunState
    changed: list[str]
    metrics: dict[str, float]


def _set_up(cfg: TrainConfig, evaluate) -> _Run:
    validate(cfg)
    ctx = init_run(cfg.dist, cfg.workdir)
    threads = set_threads(cfg.threads) if ctx.device.type == "cpu" else torch.get_num_threads()
    if ctx.device.type == "cpu" and cfg.keep_freed_memory and not keep_freed_memory():
        logger.info("keep_freed_memory: not glibc, malloc left as it is")
    torch.manual_seed(cfg.seed + ctx.rank)
    model = build_model(cfg, ctx)
    nhwc = uses_channels_last(cfg, model)  # as build_model decided
    teacher = build_teacher(cfg, ctx, model.config.vision.image_size)
    if teacher is not None and nhwc and uses_channels_last(cfg, teacher):
        teacher = teacher.to(memory_format=torch.channels_last)  # it sees the student's NHWC batches
    tokenizer = tokenizer_for_config(model.config, cfg.tokenize.context_length, reduction=cfg.tokenize.reduction)
    if evaluate is None:
        evaluate = create_evaluator(cfg.eval, tokenizer_for_config(model.config), model.preprocess_config,
                                    str(ctx.device))
    transform = create_train_transform(model.preprocess_config, cfg.augment, uint8=cfg.data.uint8_images)
    loss_fn = create_loss(cfg.loss, rank=ctx.rank, world_size=ctx.world_size)
    wrapped = distribute_model(model, ctx, cfg.dist)
    if cfg.model.compile:
        wrapped = dataclasses.replace(wrapped, module=torch.compile(wrapped.module))
    optimizer = create_optimizer(wrapped.module, cfg.optim)
    precision = get_precision(cfg.optim.precision)
    scaler = torch.amp.GradScaler(ctx.device.type) if precision.needs_grad_scaler else None
    state, changed, metrics = _resume(cfg, ctx, wrapped, optimizer, scaler)
    batches = _Batches(cfg, ctx, state, transform, tokenizer, nhwc)
    if ctx.device.type == "cpu" and ctx.is_main:
        logger.info("using %d CPU thread%s for torch", threads, "s" * (threads != 1))
    return _Run(cfg, ctx, wrapped, optimizer, scaler, loss_fn, teacher, batches, evaluate, state, changed, metrics)


def _write_run_folder(run: _Run, log: MetricsLogger) -> None:
    """config.json (and, on resume, a record of changed fields); the log keeps no step beyond the checkpoint."""
    if not run.ctx.is_main:
        return
    write_text_atomic(run.ctx.workdir / "config.json", config_to_json(run.cfg))
    if run.state.step:
        log.note(f"resuming from step {run.state.step}" + (f" with changed {', '.join(run.changed)}"
                                                            if run.changed else ""))


def _evaluate(run: _Run, log: MetricsLogger) -> None:
    # FSDP2 gathers parameters collectively, so every rank runs the evaluation; otherwise the main rank alone
    if run.evaluate is None or not (run.ctx.is_main or run.wrapped.sharded):
        return
    run.metrics = run.evaluate(unwrap(run.wrapped.module), run.state.step)
    log.step(run.state.step, {f"eval/{k}": v for k, v in run.metrics.items()}, force=True)


def _loop(run: _Run, log: MetricsLogger, last_step: int) -> tuple[Optional[Path], Optional[int], Any]:
    cfg, state = run.cfg, run.state
    out, path, saved_at = None, None, None
    while state.step < last_step:
        images, tokens = next(run.batches)
        lr = set_lr(run.optimizer, cfg.optim.lr, state.step, cfg.schedule)
        start = time.perf_counter()
        out = train_step(run.wrapped.module, images, tokens, run.loss_fn, run.optimizer,
                         accum_steps=cfg.optim.accum_steps, precision=cfg.optim.precision, scaler=run.scaler,
                         grad_clip=cfg.optim.grad_clip, teacher=run.teacher,
                         replicated_params=run.wrapped.replicated_params)
        state.batch_in_epoch += 1
        if out.skipped:
            _on_skipped_step(state, cfg, run.ctx, log)
            continue
        state.nonfinite_in_row = 0
        state.step += 1
        samples = images.shape[0] * run.ctx.world_size
        log.step(state.step, {"loss": out.loss, **{k: v for k, v in out.parts.items() if k != "loss"}, "lr": lr,
                              "logit_scale": out.logit_scale,
                              "samples_per_s": samples / max(1e-9, time.perf_counter() - start)})
        final = state.step == cfg.schedule.steps  # evaluated, then saved with its metrics, by _finish
        if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0 and not final:
            path, saved_at = _save(run.ctx, cfg, run.wrapped, run.optimizer, run.scaler, state, run.metrics), \
                state.step
        if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and not final:
            _evaluate(run, log)
    return path, saved_at, out


def _finish(run: _Run, log: MetricsLogger, path, saved_at) -> tuple[Optional[Path], Optional[Path]]:
    """Final evaluation, checkpoint and model folder: (checkpoint, model folder or None)."""
    complete = run.state.step == run.cfg.schedule.steps
    if saved_at != run.state.step:  # saved before the final evaluation: an evaluation error loses no training
        path = _save(run.ctx, run.cfg, run.wrapped, run.optimizer, run.scaler, run.state, run.metrics)
    if complete:
        _evaluate(run, log)
    stats = run.batches.stats()
    if stats.skipped or stats.shard_errors:
        log.warn(f"data skipped over the run: {stats.summary()}")
    if not (complete and run.cfg.checkpoint.export_model):
        return path, None
    barrier()
    model_dir = None
    if run.ctx.is_main:
        from clipforge.training.export import export_model

        model_dir = export_model(path, run.ctx.workdir / "model", force=True, metrics=run.metrics)
        if run.cfg.lora.enabled:
            from clipforge.training.export import export_adapters

            export_adapters(path, run.ctx.workdir / "adapters")
    barrier()
    return path, model_dir


def _already_complete(run: _Run) -> RunResult:
    path = ckpt.latest_checkpoint(run.ctx.workdir / "checkpoints")
    model_dir = run.ctx.workdir / "model"
    final = last_value(run.ctx.workdir / METRICS_FILE, "loss")
    run.metrics = last_evaluation(run.ctx.workdir / METRICS_FILE) or run.metrics
    if run.ctx.is_main:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(run.metrics.items())) or "no evaluation sets"
        logger.info("the run in %s is complete (%d steps); final metrics: %s", run.ctx.workdir, run.state.step, shown)
    shutdown()
    return RunResult(run.ctx.workdir, path, run.state.step, final, run.metrics,
                     model_dir if model_dir.is_dir() else None, already_complete=True)


def train(cfg: TrainConfig, evaluate=None, stop_at_step: Optional[int] = None) -> RunResult:
    """Run (or continue) the training run described by ``cfg``.

    ``evaluate(model, step) -> dict`` replaces the evaluation of the ``eval`` section (called every
    ``eval.every_steps`` steps and at the end). ``stop_at_step`` ends this process early with a checkpoint (a
    time-limited job slice); the schedule still spans ``schedule.steps``, and the next call continues from there.
    """
    try:
        return _train(_set_up(cfg, evaluate), cfg, stop_at_step)
    finally:
        release_freed_memory()  # the malloc setting of _set_up lasts for the run only


def _train(run: _Run, cfg: TrainConfig, stop_at_step: Optional[int]) -> RunResult:
    if run.state.step >= cfg.schedule.steps:
        return _already_complete(run)
    log = MetricsLogger(run.ctx.workdir, cfg.log, enabled=run.ctx.is_main, total_steps=cfg.schedule.steps,
                        start_step=run.state.step, samples_per_step=cfg.data.batch_size * run.ctx.world_size)
    _write_run_folder(run, log)
    last_step = min(cfg.schedule.steps, stop_at_step or cfg.schedule.steps)
    try:
        path, saved_at, out = _loop(run, log, last_step)
        path, model_dir = _finish(run, log, path, saved_at)
    finally:
        log.close()
    shutdown()
    final_loss = out.loss if out is not None else math.nan
    return RunResult(workdir=run.ctx.workdir, checkpoint=path, steps=run.state.step, final_loss=final_loss,
                     metrics=run.metrics, model_dir=model_dir)
