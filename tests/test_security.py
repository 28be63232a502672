"""No file a user downloads may execute code or write outside its folder: each reader is tested with a hostile
file, and the source tree is audited for the calls that could."""
import ast
import io
import pathlib
import pickle
import tarfile

import numpy as np
import pytest
import torch

from clipforge.data.pickles import UnsafePickleError, load_data_pickle
from clipforge.data.tar import index_samples, iter_samples, safe_extract
from clipforge.evaluation import datasets as ds

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "clipforge"


class _RunsCode:
    """Unpickling this calls os.system: what a hostile dataset pickle does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def _hostile_cifar(root, marker):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _RunsCode(marker), "labels": [0]}, f)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    """Regression: `clipforge benchmark` on a CIFAR folder ran the command hidden in test_batch."""
    marker = tmp_path / "pwned"
    _hostile_cifar(tmp_path / "data", marker)
    with pytest.raises(UnsafePickleError, match="refused to load 'posix.system'|refused to load 'os.system'"):
        ds.load_dataset(f"folder:{tmp_path / 'data'}")
    assert not marker.exists()


def test_cifar_arrays_still_load(tmp_path):
    data = {"data": np.arange(12, dtype=np.uint8).reshape(1, 12), "labels": [3], "batch_label": b"x"}
    with open(tmp_path / "batch", "wb") as f:
        pickle.dump(data, f)
    loaded = load_data_pickle(str(tmp_path / "batch"))
    assert loaded["labels"] == [3] and loaded["data"].tolist() == data["data"].tolist()


def test_cifar_cli_refuses_with_one_line(tmp_path, capsys):
    from clipforge.cli.main import main
    marker = tmp_path / "pwned"
    _hostile_cifar(tmp_path / "data", marker)
    code = main(["benchmark", "--model", "tiny-vit", "--datasets", f"folder:{tmp_path / 'data'}", "--output",
                 str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "refused to load" in err and "Traceback" not in err and not marker.exists()


def test_weight_pickles_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "evil": _RunsCode(marker)}, tmp_path / "w.pt")
    from clipforge.models._checkpoint_file import read_checkpoint
    checkpoint = read_checkpoint(tmp_path / "w.pt")
    assert list(checkpoint.tensors) == ["a"] and not marker.exists() and checkpoint.ignored


def _tar_with(path, name, data=b"x", kind=tarfile.REGTYPE, link=""):
    with tarfile.open(path, "w:gz" if str(path).endswith("gz") else "w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name, kind, link", [("../escape.txt", tarfile.REGTYPE, ""),
                                              ("/tmp/absolute.txt", tarfile.REGTYPE, ""),
                                              ("link", tarfile.SYMTYPE, "/etc/passwd")])
def test_downloaded_archives_cannot_write_outside(tmp_path, name, kind, link):
    _tar_with(tmp_path / "a.tar.gz", name, kind=kind, link=link)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="refusing to extract"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and list((tmp_path / "out").iterdir()) == []


def test_shard_member_names_are_only_keys(tmp_path):
    """A WebDataset member named ../../x.jpg is read as the key '../../x', never written anywhere."""
    _tar_with(tmp_path / "s.tar", "../../evil.jpg", b"bytes")
    counts = {"shard_errors": 0}
    with open(tmp_path / "s.tar", "rb") as f:
        streamed = list(iter_samples(f, "s.tar", counts))
    indexed = list(index_samples(tmp_path / "s.tar", counts))
    assert streamed[0]["__key__"] == indexed[0]["__key__"] == "../../evil" and streamed[0]["jpg"] == b"bytes"
    assert not (tmp_path.parent / "evil.jpg").exists() and counts["shard_errors"] == 0


# ------------------------------------------------------------------------------------------------ the audit

# (file, call) pairs that are safe, each with the reason
ALLOWED = {
    ("training/config.py", "exec_module"): "run configs are Python files the user writes (configs/*.py)",
    ("data/tar.py", "extractall"): "the fallback for Pythons without tar filters; every member vetted first",
}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            # bare calls have owner "", method calls on expressions (model.to(...).eval()) "<expr>"
            owner = (getattr(func.value, "id", "<expr>") or "<expr>") if isinstance(func, ast.Attribute) else ""
            yield node, owner, name


def _problem(node: ast.Call, owner: str, name: str) -> str | None:
    keywords = {k.arg: k.value for k in node.keywords}
    if owner == "pickle" and name in ("load", "loads"):
        return "pickle.load runs code: use a restricted Unpickler (clipforge.data.pickles)"
    if owner == "torch" and name == "load":
        flag = keywords.get("weights_only")
        if not (isinstance(flag, ast.Constant) and flag.value is True):
            return "torch.load without weights_only=True"
    if owner == "" and name in ("eval", "exec"):
        return f"{name}() on data"
    if owner == "yaml" and name == "load":
        return "yaml.load: use yaml.safe_load"
    if "shell" in keywords and isinstance(keywords["shell"], ast.Constant) and keywords["shell"].value:
        return "shell=True"
    if name in ("extractall", "extract") and "filter" not in keywords:
        return "tar extraction without a filter (use clipforge.data.tar.safe_extract)"
    if name == "exec_module" or (owner == "os" and name == "system"):
        return f"{owner}.{name} runs code"
    return None


def test_the_source_tree_has_no_unsafe_calls():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = str(path.relative_to(SRC))
        for node, owner, name in _calls(ast.parse(path.read_text())):
            problem = _problem(node, owner, name)
            if problem and (relative, name) not in ALLOWED:
                found.append(f"{relative}:{node.lineno}: {problem}")
    assert not found, "\n".join(found)
