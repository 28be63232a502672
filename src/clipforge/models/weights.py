"""The table of published weights: which (architecture, tag) pairs exist, where each downloads from, and the
preprocessing and architecture changes each needs.

The table (``pretrained.json``) is data generated from open_clip's published list by
``tools/make_pretrained_table.py``. Tags that need QuickGELU declare it as config overrides; open_clip's
``<arch>-quickgelu`` names are accepted as aliases of those tags. Resolving a tag to a file is ``models.resolve``.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from dataclasses import dataclass, field
from importlib import resources

from clipforge.models.registry import QUICK_GELU_OVERRIDES
from clipforge.transforms import PreprocessConfig

__all__ = [
    "WeightEntry", "list_pretrained", "list_pretrained_tags", "list_pretrained_tags_by_model",
    "list_pretrained_models_by_tag", "get_weight_entry", "has_tag", "split_model_tag", "format_pretrained_table",
    "QUICK_GELU_OVERRIDES", "PREPROCESS_KEYS",
]

QUICKGELU_SUFFIX = "-quickgelu"
PREPROCESS_KEYS = ("image_size", "mean", "std", "interpolation", "resize_mode")  # stored per tag


@dataclass(frozen=True)
class WeightEntry:
    """One published set of weights for one architecture."""

    arch: str
    tag: str
    hf_hub_id: str | None
    hf_filename: str | None
    url: str | None
    sha256: str | None  # of the URL file; may be only a prefix, see sha256_is_full
    sha256_is_full: bool
    preprocess: dict  # exactly PREPROCESS_KEYS
    arch_overrides: dict = field(default_factory=dict)  # dotted config overrides, e.g. {"vision.act": "quick_gelu"}
    license: str | None = None
    notes: str = ""

    @property
    def name(self) -> str:
        return f"{self.arch}::{self.tag}"

    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(**self.preprocess)


# ---------------------------------------------------------------------------------------------- the tag table


def clean_tag(tag: str) -> str:
    """open_clip spells tags with '_' but some tables write '-': compare them in one spelling."""
    return tag.strip().lower().replace("-", "_")


@functools.lru_cache(maxsize=1)
def _table() -> tuple[WeightEntry, ...]:
    raw = json.loads(resources.files("clipforge.models").joinpath("pretrained.json").read_text())
    return tuple(WeightEntry(**item) for item in raw["entries"])


@functools.lru_cache(maxsize=1)
def _by_arch() -> dict[str, dict[str, WeightEntry]]:
    """arch name as listed -> {clean tag: entry}, open_clip's '-quickgelu' aliases included (listed last)."""
    out: dict[str, dict[str, WeightEntry]] = {}
    for entry in _table():
        out.setdefault(entry.arch, {})[clean_tag(entry.tag)] = entry
    aliases = {}
    for arch, tags in out.items():
        quick = {t: e for t, e in tags.items() if e.arch_overrides == QUICK_GELU_OVERRIDES}
        if quick:
            aliases[arch + QUICKGELU_SUFFIX] = quick
    out.update(aliases)
    return out


def _canonical_arch(arch: str) -> str | None:
    table = _by_arch()
    if arch in table:
        return arch
    folded = {name.lower(): name for name in table}
    return folded.get(arch.strip().lower())


def list_pretrained(as_str: bool = False) -> list:
    """All ``(arch, tag)`` pairs (``"arch::tag"`` strings with ``as_str``), in open_clip's order."""
    pairs = [(arch, entry.tag) for arch, tags in _by_arch().items() for entry in tags.values()]
    return [f"{a}::{t}" for a, t in pairs] if as_str else pairs


def has_tag(arch: str, tag: str) -> bool:
    """True when ``tag`` is published for ``arch`` (no error for unknown names)."""
    name = _canonical_arch(arch)
    return name is not None and clean_tag(tag) in _by_arch()[name]


def list_pretrained_tags(arch: str) -> list[str]:
    """Tags published for ``arch`` (empty if none)."""
    name = _canonical_arch(arch)
    return [entry.tag for entry in _by_arch()[name].values()] if name else []


def list_pretrained_models_by_tag(tag: str) -> list[str]:
    """Architectures (open_clip's ``-quickgelu`` names included) that publish ``tag``."""
    wanted = clean_tag(tag)
    return [arch for arch, tags in _by_arch().items() if wanted in tags]


# open_clip's name for list_pretrained_tags, so that code written against open_clip keeps working
list_pretrained_tags_by_model = list_pretrained_tags


def get_weight_entry(arch: str, tag: str) -> WeightEntry:
    """The entry for ``tag`` of ``arch``; a ValueError lists the tags (or close architecture names) otherwise."""
    name = _canonical_arch(arch)
    if name is None:
        close = difflib.get_close_matches(arch, list(_by_arch()), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"no pretrained weights are published for architecture '{arch}'.{hint} "
                         f"See list_pretrained() or `clipforge models`.")
    tags = _by_arch()[name]
    entry = tags.get(clean_tag(tag))
    if entry is None:
        listed = ", ".join(e.tag for e in tags.values())
        raise ValueError(f"unknown pretrained tag '{tag}' for {name}. Its tags: {listed}. "
                         f"pretrained= also accepts a file path, a directory or 'hf-hub:org/repo'.")
    # copies of the dict fields, so that a caller editing them cannot change the shared table
    return dataclasses.replace(entry, preprocess=dict(entry.preprocess), arch_overrides=dict(entry.arch_overrides))


def split_model_tag(name: str) -> tuple[str, str | None]:
    """``"ViT-B-32::laion2b_s34b_b79k"`` -> ``("ViT-B-32", "laion2b_s34b_b79k")``; no ``::`` -> ``(name, None)``."""
    arch, sep, tag = name.partition("::")
    if sep and (not arch.strip() or not tag.strip()):
        raise ValueError(f"'{name}' must look like ARCH::TAG, e.g. ViT-B-32::laion2b_s34b_b79k")
    return arch.strip(), (tag.strip() if sep else None)


def format_pretrained_table(arch: str | None = None) -> str:
    """A plain-text table of the tags (all, or one architecture's) for ``clipforge models``: where each downloads
    from (hub repo and file, or URL) and the sha256 of the URL file (the fallback download) as far as it is
    published (a prefix is marked ``...``); the hub checks its own files."""
    rows = [("architecture", "tag", "image", "source", "file", "url-sha256", "needs")]
    for name, tags in _by_arch().items():
        if arch is not None and name != _canonical_arch(arch):
            continue
        for entry in tags.values():
            source = f"hf-hub:{entry.hf_hub_id}" if entry.hf_hub_id else (entry.url or "")
            sha256 = (entry.sha256 or "-") + ("" if entry.sha256_is_full or not entry.sha256 else "...")
            needs = ", ".join(f"{k}={v}" for k, v in entry.arch_overrides.items())
            rows.append((name, entry.tag, str(entry.preprocess["image_size"]), source,
                         entry.hf_filename if entry.hf_hub_id else "-", sha256, needs))
    if len(rows) == 1:
        raise ValueError(f"no pretrained weights are published for architecture '{arch}'")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
