"""Reading dataset pickles without running code.

Datasets such as CIFAR ship as Python pickles of dicts of numpy arrays, lists and bytes. ``pickle.load`` on such
a file runs whatever callable its author named (a reduce hook can start a shell command). ``load_data_pickle``
replays the pickle with a ``find_class`` that hands out only what numpy arrays need to be rebuilt; any other
global (``os.system``, ``builtins.eval``, ...) is refused with an error naming it.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

# (module, name) -> what a numpy-array pickle may reference; numpy moved its internals between versions
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"), ("codecs", "encode"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle references something other than arrays, numbers, strings and bytes."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load '{module}.{name}': dataset pickles may hold only arrays, numbers, "
                                "strings and bytes (this file would run code when unpickled)")


def load_data_pickle(path: str, encoding: str = "latin1") -> Any:
    """The object in a dataset pickle (CIFAR batches: ``encoding='latin1'`` as the CIFAR readers use)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a readable dataset pickle ({type(e).__name__}: {e})") from None


__all__ = ["load_data_pickle", "UnsafePickleError"]
