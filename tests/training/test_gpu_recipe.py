"""The GPU recipe's switches, each checked on CPU for the results it must keep: one ``train_step`` with the switch
against the same step without it, from the same weights and batch.

bf16 autocast changes the arithmetic, so it is held to bf16's precision; the others (fused AdamW, SDPA, gradient
checkpointing, channels_last, torch.compile) compute the same numbers and are held to float32 rounding.
"""
import copy

import pytest
import torch

from clipforge.layers import attention
from clipforge.losses.config import LossConfig, create_loss
from clipforge.models.clip import CLIP
from clipforge.models.registry import get_architecture
from clipforge.training.config import OptimConfig
from clipforge.training.optim import create_optimizer
from clipforge.training.step import train_step


def _setup(name="tiny-vit", seed=0):
    torch.manual_seed(seed)
    config = get_architecture(name)
    model = CLIP(config)
    size = config.vision.image_size
    images = torch.randn(8, 3, size, size)
    tokens = torch.randint(1, config.text.vocab_size - 1, (8, config.text.context_length))
    return model, images, tokens


def _step(model, images, tokens, precision="fp32", fused=None):
    """(loss, gradients) of one train_step; the gradients are kept on the parameters after the update."""
    optimizer = create_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1, fused=fused))
    out = train_step(model, images, tokens, create_loss(LossConfig(kind="clip")), optimizer, precision=precision)
    return out.loss, {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _close(a, b, atol):
    """Every tensor of ``a`` within ``atol`` of ``b``, relative to the largest magnitude in ``b``."""
    assert a.keys() == b.keys() and a
    scale = max(1.0, max(t.abs().max().item() for t in b.values()))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol * scale, f"largest difference {worst:.2e} > {atol:.0e} x {scale:.2f}"


def test_bf16_autocast_stays_within_bf16_precision():
    model, images, tokens = _setup()
    loss32, grads32 = _step(copy.deepcopy(model), images, tokens)
    bf16_model = copy.deepcopy(model)
    loss16, grads16 = _step(bf16_model, images, tokens, precision="amp_bf16")
    assert abs(loss16 - loss32) < 0.02 * abs(loss32)
    _close(grads16, grads32, atol=0.03)  # bf16 keeps 8 bits of mantissa: about 2 decimal digits
    flat16, flat32 = (torch.cat([g.flatten() for g in grads.values()]) for grads in (grads16, grads32))
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.999
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())  # autocast: the weights stay float32


def test_fused_adamw_equals_the_plain_update():
    model, images, tokens = _setup()
    fused, plain = copy.deepcopy(model), copy.deepcopy(model)
    _step(fused, images, tokens, fused=True)
    _step(plain, images, tokens, fused=False)
    _close(_weights(fused), _weights(plain), atol=1e-6)


def test_sdpa_equals_the_softmax_formula_in_training():
    model, images, tokens = _setup()
    _, with_sdpa = _step(copy.deepcopy(model), images, tokens)
    eager = copy.deepcopy(model)
    switched = 0
    for module in eager.modules():
        if isinstance(module, attention.Attention):
            module.use_sdpa, switched = False, switched + 1
    assert switched > 0
    _, without = _step(eager, images, tokens)
    _close(with_sdpa, without, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_grad_checkpointing_equals_the_plain_step(name):
    model, images, tokens = _setup(name)
    _, plain = _step(copy.deepcopy(model), images, tokens)
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    _, after = _step(checkpointed, images, tokens)
    _close(after, plain, atol=1e-6)


def test_channels_last_equals_the_plain_step():
    model, images, tokens = _setup("tiny-resnet")
    _, plain = _step(copy.deepcopy(model), images, tokens)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert nhwc.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _, grads = _step(nhwc, images.contiguous(memory_format=torch.channels_last), tokens)
    _close(grads, plain, atol=1e-5)


def test_compiled_model_equals_the_eager_step():
    """torch.compile's graph capture and autograd (``aot_eager``: the same graphs without C++ code generation,
    which the CPU machines here would spend minutes on) give the eager step's update."""
    model, images, tokens = _setup()
    _, eager = _step(copy.deepcopy(model), images, tokens)
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend="aot_eager")
    optimizer = create_optimizer(compiled_model, OptimConfig(lr=1e-3, weight_decay=0.1))
    train_step(compiled, images, tokens, create_loss(LossConfig(kind="clip")), optimizer)
    grads = {n: p.grad.detach() for n, p in compiled_model.named_parameters() if p.grad is not None}
    _close(grads, eager, atol=1e-5)


def test_channels_last_reaches_the_model_and_the_batches(tmp_path):
    from clipforge.training.config import ModelSection, TrainConfig
    from clipforge.training.loop import build_model
    from clipforge.training.launch import RunContext

    cfg = TrainConfig(model=ModelSection(name="tiny-resnet", channels_last=True))
    model = build_model(cfg, RunContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"),
                                        workdir=tmp_path))
    assert model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name, setting, expected", [("tiny-resnet", None, True), ("tiny-vit", None, False),
                                                     ("tiny-resnet", False, False), ("tiny-vit", True, True)])
def test_channels_last_is_on_for_convolutional_towers_unless_set(tmp_path, name, setting, expected):
    from clipforge.training.config import ModelSection, TrainConfig
    from clipforge.training.launch import RunContext
    from clipforge.training.loop import build_model, uses_channels_last

    cfg = TrainConfig(model=ModelSection(name=name, channels_last=setting))
    model = build_model(cfg, RunContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"),
                                        workdir=tmp_path))
    assert uses_channels_last(cfg, model) is expected
    conv = next(m for m in model.visual.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is expected


def test_a_resnet_trained_in_nhwc_exports_weights_that_load_anywhere(tmp_path):
    """The default ResNet run keeps NHWC weights: its exported model holds the checkpoint's weights, and an NHWC model
    saved directly in the hub layout loads into a plain (NCHW) model with the same weights and outputs."""
    from clipforge.config import apply_overrides
    from clipforge.models.convert import convert_state_dict
    from clipforge.models.factory import create_model, save_pretrained
    from clipforge.training.config import TrainConfig
    from clipforge.training.loop import train

    cfg = apply_overrides(TrainConfig(), {
        "workdir": str(tmp_path / "run"), "model.name": "tiny-resnet", "data.kind": "synthetic",
        "data.num_samples": 16, "data.batch_size": 8, "schedule.steps": 2, "schedule.warmup_steps": 1,
        "log.progress": False, "optim.lr": 1e-2})
    result = train(cfg)
    assert result.model_dir is not None
    exported = create_model("tiny-resnet", pretrained=str(result.model_dir)).eval()
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    weights = convert_state_dict(saved["state_dict"], exported.config)
    assert any(t.dim() == 4 and not t.is_contiguous() for t in weights.values())  # the run's weights were NHWC
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, weights[name], atol=0, rtol=0, msg=name)

    torch.manual_seed(3)
    nhwc = create_model("tiny-resnet").eval().to(memory_format=torch.channels_last)
    save_pretrained(nhwc, tmp_path / "nhwc")
    plain = create_model("tiny-resnet", pretrained=str(tmp_path / "nhwc")).eval()
    assert plain.visual.conv1.weight.is_contiguous()
    size = plain.config.vision.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        for name, value in plain.state_dict().items():
            torch.testing.assert_close(value, nhwc.state_dict()[name], atol=0, rtol=0, msg=name)
        torch.testing.assert_close(plain.encode_image(images), nhwc.encode_image(images), atol=1e-5, rtol=1e-4)


def test_fsdp2_runs_keep_contiguous_weights():
    from clipforge.config import ConfigError, apply_overrides
    from clipforge.models.factory import create_model
    from clipforge.training.config import DistConfig, ModelSection, TrainConfig
    from clipforge.training.loop import uses_channels_last, validate

    model = create_model("tiny-resnet")
    assert uses_channels_last(TrainConfig(model=ModelSection(name="tiny-resnet")), model)
    assert not uses_channels_last(TrainConfig(model=ModelSection(name="tiny-resnet"),
                                              dist=DistConfig(strategy="fsdp2")), model)
    with pytest.raises(ConfigError, match="FSDP2 shards only contiguous"):
        validate(apply_overrides(TrainConfig(), {"model.name": "tiny-resnet", "model.channels_last": True,
                                                 "dist.strategy": "fsdp2", "data.kind": "synthetic",
                                                 "data.num_samples": 8}))


def test_lora_on_a_vits_patch_embedding_keeps_it_nchw():
    """peft wraps an adapted convolution with two more: they do not make a ViT a convolutional tower."""
    from clipforge.models.adapters import LoraConfig, LoraTowerConfig, apply_lora
    from clipforge.models.factory import create_model
    from clipforge.training.config import ModelSection, TrainConfig
    from clipforge.training.loop import uses_channels_last

    model = create_model("tiny-vit")
    conv_name = next(n for n, m in model.visual.named_modules() if isinstance(m, torch.nn.Conv2d))
    apply_lora(model, LoraConfig(image=LoraTowerConfig(rank=2, targets=(conv_name.replace(".", "\\.") + "$",))))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.visual.modules()) == 3
    assert not uses_channels_last(TrainConfig(model=ModelSection(name="tiny-vit")), model)
