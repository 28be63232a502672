"""Reading and writing weight files safely: no pickled code is ever executed.

Formats read by ``read_state_dict``:
- safetensors (``safetensors.torch``);
- torch files (``torch.save``), through ``torch.load(weights_only=True)``; training checkpoints of the form
  ``{"state_dict": ...}`` are unwrapped and a DDP ``module.`` prefix is dropped;
- TorchScript archives (OpenAI's original ``.pt`` files), read by ``_SafeArchiveReader``: the pickle in the zip is
  replayed with a ``find_class`` that only hands out inert stand-ins, and tensors are rebuilt from the raw storages.
  The same reader is the fallback for torch zip checkpoints that ``weights_only`` refuses because they carry other
  objects (e.g. a saved argparse Namespace): those objects become inert too, and only tensors are kept;
- shard indexes (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``: what transformers'
  ``save_pretrained(max_shard_size=...)`` writes): every shard the index's ``weight_map`` names is read from the
  index's folder, and each must hold exactly the tensors the index places in it.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

FORMATS = ("safetensors", "torch", "torchscript", "sharded")
SHARD_INDEX_SUFFIX = ".index.json"  # transformers' shard index: {"metadata": ..., "weight_map": {tensor: shard file}}
# What torch.load raises for truncated or corrupt files (a zip cut short: RuntimeError from its stream reader).
DAMAGED_FILE_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                       zipfile.BadZipFile, pickle.UnpicklingError)
SECTION_KEY = "clipforge"  # the self-description training checkpoints carry (see models.hub_layout)
logger = logging.getLogger("clipforge")
_ZIP_MAGIC = b"PK\x03\x04"
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_DECLARED = re.compile(r"^\s*__(parameters|buffers)__\s*=\s*\[([^\]]*)\]", re.MULTILINE)
_CLASS = re.compile(r"^class\s+(\w+)\s*\(", re.MULTILINE)


class CheckpointFileError(ValueError):
    """A weight file cannot be read: truncated, corrupt, or of a kind clipforge refuses to open."""


def _corrupt(path: Path, why: str) -> CheckpointFileError:
    return CheckpointFileError(
        f"cannot read weights file {path}: {why}. The file is probably truncated or corrupt (an interrupted "
        f"download?): delete it and download it again.")


def detect_file_format(path: Path) -> str:
    """'safetensors', 'torch' or 'torchscript', from the file's first bytes and (for zips) its members; 'sharded'
    for a shard index (known by its name: ``*.index.json``)."""
    if Path(path).name.endswith(SHARD_INDEX_SUFFIX):
        return "sharded"
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise _corrupt(path, f"it is only {len(head)} bytes long")
    if head[:4] == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as e:
            raise _corrupt(path, f"broken zip archive ({e})") from None
        # torch.jit.save writes the module's TorchScript source under code/ next to data.pkl; torch.save never does.
        return "torchscript" if any("/code/" in name or name.endswith("/constants.pkl") for name in names) else "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header (a truncated file still has this)
    if head[8:9] == b"{":
        return "safetensors"
    return "torch"  # the legacy (pre zip) torch.save format starts with a pickle opcode


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What a weights file holds: the tensors, the ``clipforge`` section of a self-describing file (training
    checkpoints carry the architecture they were trained with), and the names of objects that were skipped because
    they cannot be read without running code (e.g. a saved ``argparse.Namespace``)."""

    tensors: dict[str, torch.Tensor]
    section: dict | None = None
    ignored: tuple[str, ...] = ()


def read_checkpoint(path: str | os.PathLike, format_hint: str | None = None) -> Checkpoint:
    """Read a weights file (see the module docstring for the formats).

    The format is read from the file's content; ``format_hint`` (one of FORMATS), when given, must agree with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if format_hint is not None and format_hint not in FORMATS:
        raise ValueError(f"unknown weights format '{format_hint}'; known: {', '.join(FORMATS)}")
    kind = detect_file_format(path)
    if format_hint is not None and format_hint != kind:
        raise CheckpointFileError(f"{path} was expected to be a {format_hint} file but its content is {kind}")
    section, ignored = None, ()
    if kind == "safetensors":
        tensors = _read_safetensors(path)
    elif kind == "sharded":
        tensors = _read_sharded(path)
    elif kind == "torchscript":
        tensors = _SafeArchiveReader(path).module_tensors()
    else:
        root = _read_torch(path)
        tensors, section, ignored = _unwrap(root, path), _section(root), _ignored_objects(root)
    if not tensors:
        raise CheckpointFileError(f"weights file {path} contains no tensors")
    if ignored:
        logger.warning("%s: ignored %s (objects that cannot be read without running code); the weights were read",
                       path, ", ".join(ignored))
    return Checkpoint(tensors, section, ignored)


def read_state_dict(path: str | os.PathLike, format_hint: str | None = None) -> dict[str, torch.Tensor]:
    """``name -> tensor`` of a weights file (``read_checkpoint(...).tensors``)."""
    return read_checkpoint(path, format_hint).tensors


def _section(root: Any) -> dict | None:
    section = root.get(SECTION_KEY) if isinstance(root, dict) else None
    return section if isinstance(section, dict) else None


def _ignored_objects(root: Any) -> tuple[str, ...]:
    if not isinstance(root, dict):
        return ()
    return tuple(f"'{k}' ({v.qualname})" for k, v in root.items() if isinstance(v, _Inert))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, f"invalid safetensors data ({e})") from None


def shard_files(index_path: str | os.PathLike) -> dict[str, list[str]]:
    """Shard file name -> the tensor names a shard index places in it (in the index's order).

    The index must be a JSON object with a non-empty ``weight_map`` of tensor name -> file name; a file name must be
    a plain name in the index's folder (no directories, so an index cannot reach outside its folder).
    """
    index_path = Path(index_path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFileError(f"cannot read shard index {index_path}: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFileError(f"shard index {index_path} has no 'weight_map' (tensor name -> shard file)")
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointFileError(f"shard index {index_path} places '{name}' in {shard!r}, which is not a file "
                                      f"name in the index's folder")
        shards.setdefault(shard, []).append(name)
    return shards


def _read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    """Every shard of a transformers shard index, each holding exactly the tensors the index places in it."""
    tensors: dict[str, torch.Tensor] = {}
    for shard, names in shard_files(index_path).items():
        path = index_path.parent / shard
        if not path.is_file():
            raise FileNotFoundError(f"shard {shard} named by {index_path.name} is missing from {index_path.parent}; "
                                    f"download the whole folder again")
        kind = detect_file_format(path)
        if kind not in ("safetensors", "torch"):
            raise CheckpointFileError(f"shard {path} of {index_path.name} is a {kind} file, not safetensors or torch")
        part = _read_safetensors(path) if kind == "safetensors" else _unwrap(_read_torch(path), path)
        missing, unlisted = sorted(set(names) - set(part)), sorted(set(part) - set(names))
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensors the index places there are absent ({', '.join(missing[:3])})")
        if unlisted:
            problems.append(f"{len(unlisted)} tensors are not listed there ({', '.join(unlisted[:3])})")
        if problems:
            raise CheckpointFileError(f"shard {path} does not match {index_path.name}: {'; '.join(problems)}")
        tensors.update(part)
    return tensors


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = "weights only" in str(e).lower().replace("_", " ")
        if refused and zipfile.is_zipfile(path):
            # weights_only refused an object that is not a tensor: read the tensors without running anything.
            return _SafeArchiveReader(path).root()
        if refused:
            raise CheckpointFileError(
                f"{path} is a legacy (pre torch 1.6) pickle holding objects other than tensors; clipforge does not "
                f"unpickle arbitrary objects. Re-save just the weights (torch.save(state_dict, ...)) or convert "
                f"them to safetensors.") from None
        raise _corrupt(path, f"invalid torch pickle ({str(e).splitlines()[0]})") from None
    except DAMAGED_FILE_ERRORS as e:  # what torch.load raises for a damaged file
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        raise _corrupt(path, f"torch.load failed ({first_line})") from None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Training checkpoints keep the weights under 'state_dict'; DDP adds 'module.' to every key."""
    if isinstance(obj, _Inert):
        obj = obj.attributes()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointFileError(f"weights file {path} holds a {type(obj).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


class _Inert:
    """Stands in for any class named in a pickle: it records its state and never runs foreign code."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self._args, self._state = args, None

    def __setstate__(self, state):
        self._state = state

    def attributes(self) -> dict:
        state = self._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots) form
            state = {**(state[0] or {}), **state[1]}
        return state if isinstance(state, dict) else {}


def _inert_class(qualname: str) -> type:
    return type("Inert", (_Inert,), {"qualname": qualname})


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    data, dtype = storage
    if not data.numel():
        return torch.empty(tuple(size), dtype=dtype)
    return data.as_strided(tuple(size), tuple(stride), offset)  # raises if the view runs past the storage


def _rebuild_parameter(data, *_ignored):
    return data


def _identity(value, *_ignored):
    return value


class _OrderedDict(dict):
    """``collections.OrderedDict`` read back as a plain dict. torch state dicts carry a ``_metadata`` attribute
    (pickled as BUILD state), which a ``dict`` instance could not take: this subclass has a ``__dict__`` for it."""


# The only callables a pickle may reach; everything else becomes an inert placeholder.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream, reader: "_SafeArchiveReader"):
        super().__init__(stream)
        self.reader = reader

    def find_class(self, module: str, name: str):
        return self.reader._find_class(module, name)

    def persistent_load(self, pid):
        return self.reader._persistent_load(pid)


class _SafeArchiveReader:
    """Replays the pickle of a torch zip archive (torch.save or torch.jit.save) without executing anything."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
            pickles = [n for n in self.zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        except zipfile.BadZipFile as e:
            raise _corrupt(path, f"broken zip archive ({e})") from None
        if len(pickles) != 1:
            raise _corrupt(path, f"expected one '<name>/data.pkl' in the archive, found {len(pickles)}")
        self.prefix = pickles[0][: -len("data.pkl")]
        byteorder = self._member("byteorder", required=False)
        if byteorder not in (None, b"little"):
            raise CheckpointFileError(f"{path} was written on a big-endian machine; clipforge reads little-endian")
        self._storages: dict[str, tuple[torch.Tensor, torch.dtype]] = {}

    def _member(self, name: str, required: bool = True) -> bytes | None:
        try:
            return self.zip.read(self.prefix + name)
        except KeyError:
            if required:
                raise _corrupt(self.path, f"archive member '{self.prefix + name}' is missing") from None
            return None
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise _corrupt(self.path, f"archive member '{self.prefix + name}' is damaged ({e})") from None

    def root(self) -> Any:
        unpickler = _RestrictedUnpickler(io.BytesIO(self._member("data.pkl")), self)
        try:
            return unpickler.load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, RuntimeError) as e:
            raise _corrupt(self.path, f"unreadable pickle data ({e})") from None

    def _find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return _inert_class(f"{module}.{name}")

    def _persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else None
        if dtype is None:
            raise pickle.UnpicklingError(f"unsupported storage type in {pid!r}")
        if key not in self._storages:
            raw = self._member(f"data/{key}")
            if len(raw) % dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} has {len(raw)} bytes, not a multiple of {dtype}")
            data = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self._storages[key] = (data, dtype)
        return self._storages[key]

    def module_tensors(self) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` of the scripted module: its declared parameters and buffers, recursively."""
        root = self.root()
        if not isinstance(root, _Inert):
            raise CheckpointFileError(f"{self.path} is a TorchScript archive without a module at its root")
        declared = self._declarations()
        tensors: dict[str, torch.Tensor] = {}
        for name, value in _walk_module(root, "", declared):
            tensors[name] = value
        return tensors

    def _declarations(self) -> dict[str, list[str]]:
        """Class qualname -> declared parameter and buffer names, read as text from the archive's code/ files."""
        declared: dict[str, list[str]] = {}
        for member in self.zip.namelist():
            if not (member.startswith(self.prefix + "code/") and member.endswith(".py")):
                continue
            module = member[len(self.prefix + "code/"): -len(".py")].replace("/", ".")
            text = self.zip.read(member).decode("utf-8", errors="replace")
            for cls_name, body in _class_bodies(text):
                names = [n.strip().strip("\"'") for kind, items in _DECLARED.findall(body) for n in items.split(",")]
                declared[f"{module}.{cls_name}"] = [n for n in names if n]
        return declared


def _class_bodies(text: str) -> Iterator[tuple[str, str]]:
    starts = list(_CLASS.finditer(text))
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        yield match.group(1), text[match.end(): end]


def _walk_module(obj: _Inert, prefix: str, declared: dict[str, list[str]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (dotted name, tensor) in state_dict order: own parameters and buffers, then submodules."""
    attrs = obj.attributes()
    own = declared.get(obj.qualname)
    # A class whose code we could not read: keep every tensor attribute rather than guess which are buffers.
    names = own if own is not None else [k for k, v in attrs.items() if isinstance(v, torch.Tensor)]
    for name in names:
        value = attrs.get(name)
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
    for name, value in attrs.items():
        if isinstance(value, _Inert):
            yield from _walk_module(value, f"{prefix}{name}.", declared)


