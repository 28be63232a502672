"""The dependency rules of docs/architecture.md, checked on the source: every package has a level, and a module may
import only from lower levels (and its own package). Packages the roadmap adds have their level already, so the
rule holds the day they appear."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "src" / "clipforge"

LEVELS = {
    # 0: no clipforge imports at all
    "_atomic": 0, "_optional": 0, "_version": 0, "config": 0, "precision": 0, "progress": 0, "cpu": 0, "allocator": 0,
    "dist": 0,
    # 1: building blocks over tensors, text, images and files
    "data": 1, "layers": 1, "tokenizer": 1, "transforms": 1, "losses": 1,
    # 2: the model zoo
    "models": 2,
    # 3: what is done with a model, each on its own (none imports another of this level)
    "evaluation": 3, "runtime": 3, "curation": 3, "captioning": 3,
    # 4: long-running jobs and products built from level 3
    "training": 4, "export": 4, "search": 4,
    # 5: the service, 6: the command line and its entry points
    "serving": 5,
    "cli": 6, "__init__": 6,
    # 7: the entry points that only call the command line
    "train": 7, "__main__": 7,
}


def _unit(path: pathlib.Path) -> str:
    relative = path.relative_to(PKG)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "clipforge":  # `from clipforge import x`: the package's own names count too
                yield from (f"clipforge.{alias.name}" for alias in node.names)
            else:
                yield node.module


def _target(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "clipforge" and len(parts) > 1 else None


def test_every_module_has_a_level():
    units = {_unit(p) for p in PKG.rglob("*.py")}
    assert not units - set(LEVELS), f"give these a level in LEVELS (and docs/architecture.md): {units - set(LEVELS)}"


def test_nothing_imports_upward_or_sideways():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        unit = _unit(path)
        for module in _imports(path):
            target = _target(module)
            if target is None or target == unit:
                continue
            if LEVELS.get(target, 99) >= LEVELS[unit]:
                bad.append(f"{path.relative_to(PKG)} (level {LEVELS[unit]}) imports {module} "
                           f"(level {LEVELS.get(target)})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", ["_atomic.py", "_version.py", "config.py", "precision.py", "progress.py", "cpu.py", "dist.py"])
def test_bottom_modules_import_no_clipforge(module):
    bad = [m for m in _imports(PKG / module) if m.startswith("clipforge")]
    assert not bad, f"{module} must stay at the bottom of the layering: imports {bad}"


def test_argparse_only_in_cli():
    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                 if "cli" not in p.relative_to(PKG).parts and "argparse" in set(_imports(p))]
    assert not offenders, f"argparse outside cli/: {offenders}"


def test_private_onednn_ops_only_behind_the_fused_switch():
    """torch.ops.mkldnn is called in layers/fused.py only: one switch, one fallback."""
    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                 if "ops.mkldnn" in p.read_text() and p.relative_to(PKG).as_posix() != "layers/fused.py"]
    assert not offenders, f"private oneDNN ops outside layers/fused.py: {offenders}"


def test_import_stays_light():
    """`import clipforge` and the model factory pull in none of the heavy packages (open_clip pulls in timm and
    transformers even for a plain ViT; torchvision costs about a second through torch._dynamo)."""
    import subprocess
    import sys

    code = ("import sys, clipforge, clipforge.models.factory, clipforge.tokenizer; "
            "print(sorted(m for m in ('torchvision', 'timm', 'transformers', 'open_clip', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(PKG.parent)})
    assert out.stdout.strip() == "[]", out.stdout
