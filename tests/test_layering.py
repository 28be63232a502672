"""The dependency rules of STYLE.md, checked on the source: nothing imports upward."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "src" / "clipforge"

# package -> packages it must never import
FORBIDDEN = {
    "layers": ["models", "training", "evaluation", "cli", "losses", "serving", "export"],
    "losses": ["models", "training", "evaluation", "cli", "serving", "export"],
    "transforms": ["models", "training", "evaluation", "cli", "serving", "export", "losses"],
    "tokenizer": ["models", "training", "evaluation", "cli"],
    "models": ["training", "evaluation", "cli", "serving"],
    "evaluation": ["training", "cli", "serving"],
    "export": ["training", "cli", "serving"],
}


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    root = PKG / package
    bad = []
    for path in sorted(root.rglob("*.py")) + ([PKG / f"{package}.py"] if (PKG / f"{package}.py").exists() else []):
        for name in _imports(path):
            for target in FORBIDDEN[package]:
                if name == f"clipforge.{target}" or name.startswith(f"clipforge.{target}."):
                    bad.append(f"{path.relative_to(PKG)} imports {name}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_bottom_modules_import_no_clipforge():
    for name in ("config.py", "_atomic.py"):
        bad = [m for m in _imports(PKG / name) if m.startswith("clipforge")]
        assert not bad, f"{name} must stay at the bottom of the layering: imports {bad}"


def test_argparse_only_in_cli():
    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                 if "cli" not in p.relative_to(PKG).parts and "argparse" in set(_imports(p))]
    assert not offenders, f"argparse outside cli/: {offenders}"


def test_import_stays_light():
    """`import clipforge` and the model factory pull in none of the heavy packages (open_clip pulls in timm and
    transformers even for a plain ViT; torchvision costs about a second through torch._dynamo)."""
    import subprocess
    import sys

    code = ("import sys, clipforge, clipforge.models.factory, clipforge.tokenizer; "
            "print(sorted(m for m in ('torchvision', 'timm', 'transformers', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(PKG.parent)})
    assert out.stdout.strip() == "[]", out.stdout
