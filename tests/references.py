"""Test-only reference packages (open_clip, transformers, timm, clip_benchmark, ...).

``require(name)`` imports one or fails the test: the test command (``bash scripts/test.sh``, also CI) installs
them through ``clipforge[dev]``, so a missing reference means a broken install, never a reason to skip a parity test.
"""
import importlib

import pytest


def require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"test-only reference '{module}' is not installed ({e}); run `bash scripts/test.sh`, which "
                    "installs clipforge[dev]", pytrace=False)
