"""Optional dependencies: imported where they are used, with the install hint when they are missing."""
from __future__ import annotations

import importlib
from types import ModuleType


def require(*modules: str, hint: str) -> ModuleType:
    """Import ``modules`` in order and return the first; a missing one raises ``ImportError(hint)``, one line that
    names the extra to install (e.g. ``pip install 'clipforge[search]'``)."""
    try:
        loaded = [importlib.import_module(name) for name in modules]
    except ImportError:
        raise ImportError(hint) from None
    return loaded[0]
