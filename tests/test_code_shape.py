"""The house rules that keep the code easy to change: short functions (a longer one says why in its docstring)."""
import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "src" / "clipforge"
MAX_LINES = 60


def test_functions_are_short_or_say_why():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                reason = "long because" in (ast.get_docstring(node) or "").lower()
                if lines > MAX_LINES and not reason:
                    long.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these, or say 'long because ...' in the docstring:\n" + "\n".join(long)
