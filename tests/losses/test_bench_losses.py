"""The benchmark script's pieces run (in-process, tiny sizes): same loss values as open_clip, sane memory laws."""
import importlib.util
import pathlib

import pytest
from references import require

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_losses.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_losses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_child_measures_and_matches_open_clip(bench):
    require("open_clip")
    for ours, theirs in (("clipforge.tiled_clip", "open_clip.ClipLoss"),
                         ("clipforge.tiled_siglip", "open_clip.SigLipLoss")):
        a, b = bench.child(ours, 600, 16, 256), bench.child(theirs, 600, 16, None)
        assert a["value"] == pytest.approx(b["value"], rel=1e-5)
        assert a["loss_bytes"] >= 0 and a["seconds"] > 0


def test_budget_laws(bench):
    dense = [{"batch": 1000, "loss_bytes": 4 * 1000**2 * 4}]
    assert bench._max_batch("open_clip.ClipLoss", dense, 4 * 2000**2 * 4) == 2000
    tiled = [{"batch": 1000, "loss_bytes": 10_000 + 1000 * 100}, {"batch": 2000, "loss_bytes": 10_000 + 2000 * 100}]
    assert bench._max_batch("clipforge.tiled_clip", tiled, 10_000 + 5000 * 100) == 5000
