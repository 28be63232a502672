"""Reading weight files safely: safetensors, torch pickles, training checkpoints, TorchScript archives, bad files."""
import argparse
import os
import warnings
import zipfile

import pytest
from references import require
import torch
from safetensors.torch import save_file

from clipforge._atomic import atomic_path
from clipforge.models._checkpoint_file import CheckpointFileError, detect_file_format, read_state_dict


def _random_state_dict():
    return {"visual.proj": torch.randn(4, 3), "text.ln.weight": torch.randn(3),
            "logit_scale": torch.tensor(4.6), "counts": torch.arange(5, dtype=torch.int64),
            "half": torch.randn(2, 2).half()}


def _assert_same(got, expected):
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def test_safetensors_round_trip(tmp_path):
    sd = _random_state_dict()
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    assert detect_file_format(path) == "safetensors"
    got = read_state_dict(path)
    assert set(got) == set(sd)
    for name in sd:
        assert torch.equal(got[name], sd[name])


def test_torch_state_dict(tmp_path):
    sd = _random_state_dict()
    torch.save(sd, tmp_path / "w.bin")
    assert detect_file_format(tmp_path / "w.bin") == "torch"
    _assert_same(read_state_dict(tmp_path / "w.bin", format_hint="torch"), sd)
    with pytest.raises(CheckpointFileError, match="expected to be a safetensors"):
        read_state_dict(tmp_path / "w.bin", format_hint="safetensors")
    with pytest.raises(ValueError, match="unknown weights format"):
        read_state_dict(tmp_path / "w.bin", format_hint="onnx")


def test_training_checkpoint_is_unwrapped_and_ddp_prefix_dropped(tmp_path):
    sd = _random_state_dict()
    ckpt = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"lr": 0.1}}
    torch.save(ckpt, tmp_path / "epoch_3.pt")
    _assert_same(read_state_dict(tmp_path / "epoch_3.pt"), sd)


def test_checkpoint_with_non_tensor_objects_is_read_without_unpickling_them(tmp_path):
    # weights_only refuses argparse.Namespace; the fallback keeps the tensors and never builds the Namespace.
    sd = _random_state_dict()
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1.0)}, tmp_path / "ckpt.pt")
    _assert_same(read_state_dict(tmp_path / "ckpt.pt"), sd)


def test_legacy_format(tmp_path):
    sd = _random_state_dict()
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    _assert_same(read_state_dict(tmp_path / "old.pt"), sd)
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1.0)}, tmp_path / "old-ckpt.pt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFileError, match="legacy"):
        read_state_dict(tmp_path / "old-ckpt.pt")


class _Exploit:
    """Pickles as a call to os.mkdir: loading it unsafely would create the marker directory."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    sd = _random_state_dict()
    torch.save({"state_dict": sd, "payload": _Exploit(str(marker))}, tmp_path / "evil.pt")
    got = read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    _assert_same(got, sd)


class _Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.in_proj_weight = torch.nn.Parameter(torch.randn(3 * width, width))
        self.out_proj = torch.nn.Linear(width, width)
        self.ln_1 = torch.nn.LayerNorm(width)

    def forward(self, x):
        return x + self.out_proj(self.ln_1(x) @ self.in_proj_weight[: x.shape[-1]])


class _OpenAILike(torch.nn.Module):
    """Same structure as OpenAI's CLIP archives: nested submodules, a Sequential, parameters, buffers, ints."""

    def __init__(self):
        super().__init__()
        self.transformer = torch.nn.Sequential(_Block(4), _Block(4))
        self.visual = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 2, bias=False), torch.nn.BatchNorm2d(4))
        self.positional_embedding = torch.nn.Parameter(torch.randn(5, 4))
        self.text_projection = torch.nn.Parameter(torch.randn(4, 6).half())
        self.register_buffer("attn_mask", torch.full((5, 5), float("-inf")).triu(1))
        self.not_state = torch.zeros(3)  # a plain tensor attribute: not in state_dict, so not read either
        self.input_resolution = 224

    def forward(self, x, image):
        pooled = self.visual(image).mean()
        return self.transformer(x + self.positional_embedding) + pooled + self.attn_mask.sum() + self.not_state.sum()


def test_torchscript_archive_is_read_without_running_it(tmp_path, monkeypatch):
    model = _OpenAILike()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(tmp_path / "ViT-T.pt"))
    expected = scripted.state_dict()

    def refuse(*args, **kwargs):
        raise AssertionError("TorchScript must not be loaded through torch.jit/torch.load")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert detect_file_format(tmp_path / "ViT-T.pt") == "torchscript"
    got = read_state_dict(tmp_path / "ViT-T.pt")
    _assert_same(got, expected)
    assert "not_state" not in got and "visual.1.running_mean" in got


def test_truncated_files_give_a_clear_error(tmp_path):
    sd = _random_state_dict()
    save_file(sd, str(tmp_path / "full.safetensors"))
    torch.save(sd, tmp_path / "full.bin")
    for name in ("full.safetensors", "full.bin"):
        data = (tmp_path / name).read_bytes()
        broken = tmp_path / f"cut-{name}"
        broken.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointFileError) as info:
            read_state_dict(broken)
        message = str(info.value)
        assert str(broken) in message and "delete it" in message


def test_garbage_and_tiny_files(tmp_path):
    (tmp_path / "garbage.bin").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointFileError, match="garbage.bin"):
        read_state_dict(tmp_path / "garbage.bin")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointFileError, match="0 bytes"):
        read_state_dict(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_state_dict(tmp_path / "missing.pt")


def test_torchscript_with_a_damaged_storage(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_OpenAILike()), str(tmp_path / "m.pt"))
    with zipfile.ZipFile(tmp_path / "m.pt") as src, zipfile.ZipFile(tmp_path / "bad.pt", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data/0"):
                data = data[:-2]  # no longer a whole number of elements
            dst.writestr(item, data)
    with pytest.raises(CheckpointFileError, match="bad.pt"):
        read_state_dict(tmp_path / "bad.pt")


def test_non_dict_payload_is_rejected(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointFileError, match="list"):
        read_state_dict(tmp_path / "list.pt")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list((tmp_path / "sub").iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and [p.name for p in (tmp_path / "sub").iterdir()] == ["out.bin"]


def test_scripted_open_clip_model_reads_like_torch_jit_load(tmp_path):
    """A TorchScript archive of a real CLIP (open_clip's, OpenAI layout): the names and values torch.jit.load gives."""
    require("open_clip")
    from open_clip.model import CLIP

    cfg = {"embed_dim": 16, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    model = CLIP(**cfg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(tmp_path / "clip.pt"))
        reference = torch.jit.load(str(tmp_path / "clip.pt")).state_dict()
    got = read_state_dict(tmp_path / "clip.pt")
    _assert_same(got, reference)
    # TorchScript keeps non-persistent buffers (attn_mask); without them the weights load strictly.
    persistent = {k: v for k, v in got.items() if k in model.state_dict()}
    assert set(got) - set(persistent) == {"attn_mask"}
    CLIP(**cfg).load_state_dict(persistent, strict=True)
