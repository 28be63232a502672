"""The training run, top to bottom: set up, resume, step loop with logging, evaluation and checkpoints.

``train(config)`` is what ``clipforge train`` and ``python -m clipforge.train`` (under torchrun) call, and what the
tests call. Phases: context -> model -> data -> loss/optimizer -> resume -> loop -> final checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as torch_dist

from clipforge import dist
from clipforge._atomic import write_text_atomic
from clipforge.losses.config import create_loss
from clipforge.models import convert
from clipforge.models.factory import create_model, tokenizer_for_config
from clipforge.training import checkpoint as ckpt
from clipforge.training.config import TrainConfig, config_to_json
from clipforge.training.data import create_train_loader
from clipforge.training.launch import RunContext, barrier, init_run, shutdown, wrap_model
from clipforge.training.logging import MetricsLogger
from clipforge.training.optim import create_optimizer, set_lr
from clipforge.training.step import train_step, unwrap
from clipforge.transforms import create_train_transform


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


def validate(cfg: TrainConfig) -> None:
    """Every input problem that can be seen from the config alone, before any model or data is touched."""
    from clipforge.models.factory import parse_model_spec
    from clipforge.models.registry import get_model_config

    spec = parse_model_spec(cfg.model.name, cfg.model.pretrained)
    arch = get_model_config(spec.arch) if spec.arch is not None else None  # unknown name: lists close ones
    cfg.data.check_ready()
    if cfg.data.batch_size % cfg.optim.accum_steps:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by optim.accum_steps="
                         f"{cfg.optim.accum_steps}; pick a batch size that is a multiple of it")
    if cfg.loss.kind == "siglip" and arch is not None and arch.init_logit_bias is None \
            and "init_logit_bias" not in cfg.model.overrides:
        raise ValueError(f"loss.kind=siglip needs a model with a learned logit bias, and {spec.arch} has none: use "
                         "a SigLIP architecture or set model.overrides={'init_logit_bias': -10.0}")
    if (cfg.loss.kind == "distill") != (cfg.model.teacher is not None):
        raise ValueError("loss.kind=distill and model.teacher go together: set both (e.g. model.teacher="
                         "'ViT-L-14::openai') or neither")
    if cfg.schedule.steps < 1:
        raise ValueError(f"schedule.steps must be >= 1, got {cfg.schedule.steps}")


def build_teacher(cfg: TrainConfig, ctx: RunContext, student_image_size: int) -> Optional[torch.nn.Module]:
    if cfg.model.teacher is None:
        return None
    teacher = create_model(cfg.model.teacher).to(ctx.device).eval().requires_grad_(False)
    if teacher.config.vision.image_size != student_image_size:
        raise ValueError(f"the teacher {cfg.model.teacher} takes {teacher.config.vision.image_size}px images but the "
                         f"student takes {student_image_size}px; both see the same batch, so pick matching sizes "
                         "(model.image_size)")
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
    return model.to(ctx.device)


def _meta(state: RunState, cfg: TrainConfig) -> dict[str, Any]:
    """What every checkpoint holds besides weights and optimizer: position, RNG of every rank, config."""
    return {"epoch": state.epoch, "run_state": dataclasses.asdict(state), "rng": all_rng_states(),
            "config": json.loads(config_to_json(cfg))}


def _checkpoint_payload(model, optimizer, scaler, state: RunState, cfg: TrainConfig) -> dict[str, Any]:
    inner = unwrap(model)
    try:  # open_clip's key layout when the architecture has one, so its tools read our checkpoints too
        weights = convert.to_open_clip_state_dict(inner.state_dict(), inner.config)
    except convert.ConversionError:
        weights = inner.state_dict()
    return {"state_dict": weights, "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, **_meta(state, cfg)}


def all_rng_states() -> list[dict[str, Any]]:
    """The RNG state of every rank (ranks draw different dropout masks, so each must get its own back)."""
    states = [ckpt.rng_state()]
    if dist.is_initialized():
        states = [None] * dist.get_world_size()
        torch_dist.all_gather_object(states, ckpt.rng_state())
    return states


def _sharded(model) -> bool:
    return hasattr(model, "replicated_params")  # set by launch.wrap_model for FSDP2


def _shard_templates(model, optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def _resume(cfg: TrainConfig, ctx: RunContext, model, optimizer, scaler) -> RunState:
    target = cfg.checkpoint.resume
    if target is None:
        return RunState()
    path = ckpt.latest_checkpoint(ctx.workdir / "checkpoints") if target == "auto" else Path(target)
    if path is None:
        return RunState()
    if path.is_dir():
        if not _sharded(model):
            raise ValueError(f"{path} is a sharded (FSDP2) checkpoint; resume it with dist.strategy=fsdp2")
        from torch.distributed.checkpoint.state_dict import set_state_dict

        shards = _shard_templates(model, optimizer)
        payload = ckpt.load_sharded(path, shards)
        set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    else:
        payload = ckpt.load_checkpoint(path)
        inner = unwrap(model)
        inner.load_state_dict(convert.convert_state_dict(payload["state_dict"], inner.config), strict=True)
        optimizer.load_state_dict(payload["optimizer"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
    rngs = payload["rng"]
    if len(rngs) != ctx.world_size:
        raise ValueError(f"{path} was written by {len(rngs)} ranks and this run has {ctx.world_size}: exact resume "
                         "needs the same world size")
    ckpt.set_rng_state(rngs[ctx.rank])
    state = RunState(**payload["run_state"])
    state.nonfinite_in_row = 0
    return state


def _save(ctx, cfg, model, optimizer, scaler, state) -> Optional[Path]:
    directory = ctx.workdir / "checkpoints"
    if _sharded(model):
        return ckpt.save_sharded(directory, state.step, _shard_templates(model, optimizer), _meta(state, cfg),
                                 is_main=ctx.is_main, keep_last=cfg.checkpoint.keep_last, barrier=barrier)
    payload = _checkpoint_payload(model, optimizer, scaler, state, cfg)  # collective: every rank takes part
    path = None
    if ctx.is_main:
        path = ckpt.save_checkpoint(directory, state.step, payload, cfg.checkpoint.keep_last)
    barrier()
    return path


def _batches(cfg, ctx, state: RunState, transform, tokenizer):
    """Endless stream of (images, tokens), epoch after epoch, starting at the saved data position."""
    while True:
        loader = create_train_loader(cfg.data, image_transform=transform, tokenize=tokenizer, rank=ctx.rank,
                                     world_size=ctx.world_size, epoch=state.epoch, start_batch=state.batch_in_epoch)
        for images, tokens in loader:
            yield images.to(ctx.device, non_blocking=True), tokens.to(ctx.device, non_blocking=True)
        state.epoch += 1
        state.batch_in_epoch = 0


def _on_skipped_step(state: RunState, cfg: TrainConfig, ctx: RunContext, logger: MetricsLogger) -> None:
    """Count a step skipped for a non-finite loss; too many in a row stop the run (last checkpoint kept)."""
    state.nonfinite_in_row += 1
    state.nonfinite_total += 1
    logger.warn(f"step {state.step}: non-finite loss, update skipped "
                f"({state.nonfinite_in_row} in a row, {state.nonfinite_total} in total)")
    if state.nonfinite_in_row >= cfg.checkpoint.max_nonfinite:
        raise NonFiniteLossError(
            f"{state.nonfinite_in_row} non-finite losses in a row at step {state.step}: stopping. The last good "
            f"checkpoint is in {ctx.workdir / 'checkpoints'}; lower optim.lr, enable optim.grad_clip or use "
            "optim.precision=bf16/fp32, then resume.")


def train(cfg: TrainConfig, evaluate=None, stop_at_step: Optional[int] = None) -> RunResult:
    """Run (or continue) the training run described by ``cfg``.

    ``evaluate(model, step) -> dict`` is called every ``eval.every_steps`` steps and at the end (main rank only).
    ``stop_at_step`` ends this process early with a checkpoint (a time-limited job slice); the schedule still
    spans ``schedule.steps``, and the next call continues from there.
    """
    validate(cfg)
    ctx = init_run(cfg.dist, cfg.workdir)
    torch.manual_seed(cfg.seed + ctx.rank)
    model = build_model(cfg, ctx)
    teacher = build_teacher(cfg, ctx, model.config.vision.image_size)
    tokenizer = tokenizer_for_config(model.config, cfg.tokenize.context_length, reduction=cfg.tokenize.reduction)
    transform = create_train_transform(unwrap(model).preprocess_config, cfg.augment)
    loss_fn = create_loss(cfg.loss, rank=ctx.rank, world_size=ctx.world_size)
    model = wrap_model(model, ctx, cfg.dist)
    if cfg.model.compile:
        model = torch.compile(model)
    optimizer = create_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(ctx.device.type) if cfg.optim.precision == "fp16" else None
    state = _resume(cfg, ctx, model, optimizer, scaler)
    if ctx.is_main:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(ctx.workdir / "config.json", config_to_json(cfg))
    logger = MetricsLogger(ctx.workdir, cfg.log, enabled=ctx.is_main, total_steps=cfg.schedule.steps,
                           start_step=state.step)
    batches = _batches(cfg, ctx, state, transform, tokenizer)
    # FSDP2 gathers parameters collectively, so every rank runs the evaluation; otherwise the main rank alone
    evaluates_here = ctx.is_main or _sharded(model)
    out, metrics, path, saved_at = None, {}, None, None
    last_step = min(cfg.schedule.steps, stop_at_step or cfg.schedule.steps)
    while state.step < last_step:
        images, tokens = next(batches)
        lr = set_lr(optimizer, cfg.optim.lr, state.step, cfg.schedule)
        start = time.perf_counter()
        out = train_step(model, images, tokens, loss_fn, optimizer, accum_steps=cfg.optim.accum_steps,
                         precision=cfg.optim.precision, scaler=scaler, grad_clip=cfg.optim.grad_clip,
                         teacher=teacher)
        state.batch_in_epoch += 1
        if out.skipped:
            _on_skipped_step(state, cfg, ctx, logger)
            continue
        state.nonfinite_in_row = 0
        state.step += 1
        samples = images.shape[0] * ctx.world_size
        logger.step(state.step, {"loss": out.loss, **out.parts, "lr": lr,
                                 "logit_scale": float(unwrap(model).logit_scale.detach().exp()),
                                 "samples_per_s": samples / max(1e-9, time.perf_counter() - start)})
        if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
            path, saved_at = _save(ctx, cfg, model, optimizer, scaler, state), state.step
        if evaluate and cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and evaluates_here:
            metrics = evaluate(unwrap(model), state.step)
            logger.step(state.step, {f"eval/{k}": v for k, v in metrics.items()})
    if saved_at != state.step:
        path = _save(ctx, cfg, model, optimizer, scaler, state)
    if evaluate and evaluates_here and state.step == cfg.schedule.steps:
        metrics = evaluate(unwrap(model), state.step)
        logger.step(state.step, {f"eval/{k}": v for k, v in metrics.items()})
    logger.close()
    final_loss = out.loss if out is not None else math.nan
    shutdown()
    return RunResult(workdir=ctx.workdir, checkpoint=path, steps=state.step, final_loss=final_loss,
                     metrics=metrics)
