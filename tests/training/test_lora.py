"""LoRA through peft: merged weights = the adapted model, fast inference paths see the adapters, training touches
only adapters, resume is exact, adapters reload onto their base model only, bad configs are one-line errors."""
import json

import pytest
import torch

from clipforge.config import ConfigError, apply_overrides
from clipforge.models import adapters
from clipforge.models.adapters import AdapterError, LoraConfig, LoraTowerConfig
from clipforge.models.factory import create_model
from clipforge.training.config import TrainConfig
from clipforge.training.loop import train

LORA = LoraConfig(image=LoraTowerConfig(rank=4, alpha=8, targets=(r"attn\.qkv", r"attn\.proj", r"mlp\.fc1")),
                  text=LoraTowerConfig(rank=2, targets=(r"attn\.qkv",)))


def _inputs(model, n=3):
    gen = torch.Generator().manual_seed(3)
    size = model.config.vision.image_size
    return (torch.randn(n, 3, size, size, generator=gen),
            torch.randint(1, 400, (n, model.context_length), generator=gen))


def _randomise_updates(model):
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _encode(model, images, tokens, grad=False):
    with torch.set_grad_enabled(grad):
        return model.encode_image(images).detach(), model.encode_text(tokens).detach()


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-resnet", "tiny-siglip"])
def test_merged_weights_equal_the_adapted_model(arch):
    torch.manual_seed(0)
    config = LORA if arch != "tiny-resnet" else LoraConfig(
        image=LoraTowerConfig(rank=4, targets=(r"layer\d\.\d\.conv2", r"attn_pool\.(q|kv|proj)")), text=LORA.text)
    model = create_model(arch).eval()
    images, tokens = _inputs(model)
    _encode(model, images, tokens)  # inference first: fills caches of the plain layers (ResNet folded convs)
    adapters.apply_lora(model, config)
    _randomise_updates(model)
    reference = _encode(model, images, tokens, grad=True)  # autograd path: no fused kernels, no weight reads
    fast = _encode(model, images, tokens)                   # inference path (fused oneDNN, single-token last block)
    plain = create_model(arch).eval()
    plain.load_state_dict(adapters.merged_state_dict(model), strict=True)
    merged = _encode(plain, images, tokens)
    for got in (fast, merged, _encode(adapters.merge_lora(model), images, tokens)):
        for a, b in zip(got, reference):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the updates are not negligible: without them the features differ
    torch.manual_seed(0)
    untouched = _encode(create_model(arch).eval(), images, tokens)
    assert (untouched[0] - reference[0]).abs().max() > 1e-3 and (untouched[1] - reference[1]).abs().max() > 1e-3
    assert not adapters.has_adapters(model)  # merge_lora put the plain layers back


def test_only_adapters_and_temperature_train():
    model = adapters.apply_lora(create_model("tiny-vit"), LORA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n == "logit_scale" for n in trainable)
    count, total = adapters.trainable_parameters(model)
    assert 0 < count < total / 10


def _tiny(tmp_path, name, **over):
    base = {"workdir": str(tmp_path / name), "model.name": "tiny-vit", "data.kind": "synthetic",
            "data.num_samples": 48, "data.batch_size": 8, "schedule.steps": 6, "schedule.warmup_steps": 1,
            "checkpoint.every_steps": 3, "log.every_steps": 1, "log.progress": False, "optim.lr": 1e-2,
            "lora.image.rank": 4, "lora.text.rank": 2, "lora.image.targets": ["attn\\.qkv", "mlp\\.fc2"]}
    base.update(over)
    return apply_overrides(TrainConfig(), base)


class _Stop(Exception):
    pass


def _losses(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_lora_run_resumes_exactly_and_exports_merged_model_and_adapters(tmp_path):
    full = train(_tiny(tmp_path, "full"))

    def crash(model, step):
        raise _Stop

    with pytest.raises(_Stop):
        train(_tiny(tmp_path, "resumed", **{"eval.every_steps": 3}), evaluate=crash)
    train(_tiny(tmp_path, "resumed"))
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step

    # the exported model folder holds merged plain weights; the adapters folder reloads onto the base model
    exported = create_model(f"local-dir:{full.model_dir}").eval()
    torch.manual_seed(0)
    base = create_model("tiny-vit").eval()
    images, tokens = _inputs(base)
    before = _encode(base, images, tokens)
    adapted = adapters.load_adapters(base, full.workdir / "adapters")
    assert adapters.has_adapters(adapted)
    for x, y in zip(_encode(adapted, images, tokens), _encode(exported, images, tokens)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    assert (before[0] - _encode(exported, images, tokens)[0]).abs().max() > 1e-4  # training changed the model
    frozen = torch.load(full.checkpoint, weights_only=True)
    assert any(".lora_" in k for k in frozen["adapters"])


def test_adapters_refuse_another_base_model(tmp_path):
    torch.manual_seed(0)
    model = adapters.apply_lora(create_model("tiny-vit"), LORA)
    adapters.save_adapters(adapters.adapter_weights(model), LORA, model.lora_base_fingerprint, tmp_path / "ad",
                           model.lora_base_description)
    torch.manual_seed(0)
    adapters.load_adapters(create_model("tiny-vit"), tmp_path / "ad")  # the same base: accepted
    torch.manual_seed(1)
    with pytest.raises(AdapterError, match="another base model.*expect architecture tiny-vit, weights random init, "
                                           "image size 32, dtype float32; this model is architecture tiny-vit"):
        adapters.load_adapters(create_model("tiny-vit"), tmp_path / "ad")
    with pytest.raises(FileNotFoundError, match="holds no adapters"):
        adapters.load_adapters(create_model("tiny-vit"), tmp_path)


def test_resume_with_another_lora_config_is_refused(tmp_path):
    train(_tiny(tmp_path, "run", **{"schedule.steps": 3}))
    with pytest.raises(ConfigError, match="lora.image.rank"):
        train(_tiny(tmp_path, "run", **{"schedule.steps": 6, "lora.image.rank": 8}))


@pytest.mark.parametrize("over, message", [
    ({"lora.image.targets": ["attn\\.nothing"]}, "matches no layer of the image tower"),
    ({"lora.text.targets": ["blocks\\.0\\.attn"]}, "which LoRA cannot adapt"),
    ({"lora.image.targets": ["attn\\.(qkv"]}, "is not a regular expression"),
    ({"lora.image.rank": -1}, "rank must be >= 0"),
])
def test_bad_lora_configs_fail_in_one_line(tmp_path, over, message):
    with pytest.raises((ConfigError, AdapterError), match=message) as info:
        train(_tiny(tmp_path, "bad", **over))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bad" / "config.json").exists()


def test_lora_without_peft_names_the_extra(tmp_path, monkeypatch, capsys):
    from clipforge.cli.main import main

    monkeypatch.setitem(__import__("sys").modules, "peft", None)
    code = main(["train", "--set", "model.name=tiny-vit", "data.kind=synthetic", "data.num_samples=16",
                 "data.batch_size=8", "lora.image.rank=4", f"workdir={str(tmp_path / 'r')!r}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "pip install 'clipforge[lora]'" in err[-1]
    assert not (tmp_path / "r" / "config.json").exists()
