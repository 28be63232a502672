"""The README's two commands install what they must: the main job never pulls the test-only references."""
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCES = ("open_clip_torch", "clip-benchmark", "clip_benchmark", "transformers", "timm")


def _extras():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _expand(extras, names):
    out = []
    for name in names:
        for requirement in extras[name]:
            nested = re.match(r"clipforge\[(.+)\]", requirement)
            out += _expand(extras, nested.group(1).split(",")) if nested else [requirement]
    return out


def _setup_extras(script):
    match = re.search(r"scripts/setup\.sh\s+(\S+)", (ROOT / "scripts" / script).read_text())
    return match.group(1).split(",")


def test_the_main_job_installs_no_reference():
    extras = _extras()
    wanted = _setup_extras("quickstart.sh")
    assert set(wanted) == {"train", "eval"}
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = " ".join(core + _expand(extras, wanted))
    assert not [r for r in REFERENCES if r in installed]


def test_the_test_command_installs_every_reference():
    extras = _extras()
    assert _setup_extras("test.sh") == ["dev"]
    installed = " ".join(_expand(extras, ["dev"]))
    for reference in ("open_clip_torch", "clip-benchmark", "transformers", "timm", "matplotlib"):
        assert reference in installed
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
