"""The service's optional dependencies, with the install hint when one is missing."""
from __future__ import annotations

import importlib

HINT = "the service needs FastAPI, uvicorn, prometheus-client and python-multipart: pip install 'clipforge[serve]'"


def import_serving(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"{name} is missing: {HINT}") from None
