"""One-off generator of ``src/clipforge/models/pretrained.json`` (the pretrained weight tag table).

It reads the facts that open_clip 3.3.0 publishes (its pretrained tag table and its architecture JSON files, from
the installed package) and writes them in clipforge's own format: one entry per (architecture, tag) of the
architectures clipforge supports, with the download source, what is known of the file's sha256, the image
preprocessing, and the architecture changes the weights need as dotted config overrides.

Run from the repository root (open_clip must be importable; clipforge itself never imports it):

    python tools/make_pretrained_table.py            # writes the table
    python tools/make_pretrained_table.py --check    # exits 1 if the committed table is out of date
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from clipforge._atomic import write_text_atomic  # noqa: E402

TABLE_PATH = Path(__file__).resolve().parents[1] / "src" / "clipforge" / "models" / "pretrained.json"
FORMAT = "clipforge-pretrained/1"

# The architectures are those open_clip publishes weights for that have a clipforge preset (``presets/*.json``,
# written and checked by tools/make_zoo_table.py), in open_clip's table order. open_clip's `-quickgelu` twins are not
# separate entries here: a tag that needs QuickGELU declares it, and weights.py makes the `<arch>-quickgelu` names
# resolve to those tags.

QUICK_GELU_OVERRIDES = {"vision.act": "quick_gelu", "text.act": "quick_gelu"}
# open_clip's default file name inside a hub repo when its entry names only the repo (a trailing slash).
DEFAULT_HUB_FILENAME = "open_clip_pytorch_model.bin"
_OPENAI_URL = re.compile(r"/([0-9a-f]{64})/[^/]+$")  # OpenAI put the file's full sha256 in the URL path
_RELEASE_URL = re.compile(r"-([0-9a-f]{8,64})\.(?:pt|pth|bin)$")  # open_clip release files end in a sha256 prefix


def sha256_from_url(url: str) -> tuple[str | None, bool]:
    """(known sha256 or prefix, whether it is the full 64-digit hash) as embedded in a download URL."""
    if not url:
        return None, False
    match = _OPENAI_URL.search(url) or _RELEASE_URL.search(url)
    if not match:
        return None, False
    digest = match.group(1).lower()
    return digest, len(digest) == 64


def split_hub(hf_hub: str) -> tuple[str | None, str | None]:
    """open_clip writes 'org/repo/' (default file) or 'org/repo/file'; return (repo_id, filename)."""
    if not hf_hub:
        return None, None
    if hf_hub.endswith("/"):
        return hf_hub[:-1], DEFAULT_HUB_FILENAME
    repo_id, _, filename = hf_hub.rpartition("/")
    return repo_id, filename


def image_size_of(arch: str, configs_dir: Path) -> int | list[int]:
    data = json.loads((configs_dir / f"{arch}.json").read_text())
    return data["vision_cfg"]["image_size"]


def make_entry(arch: str, tag: str, cfg: dict, image_size) -> dict:
    hf_hub_id, hf_filename = split_hub(cfg.get("hf_hub", ""))
    url = cfg.get("url") or None
    sha256, is_full = sha256_from_url(url or "")
    preprocess = {
        "image_size": image_size,
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": cfg["interpolation"],
        "resize_mode": cfg["resize_mode"],
    }
    return {
        "arch": arch, "tag": tag,
        "hf_hub_id": hf_hub_id, "hf_filename": hf_filename,
        "url": url, "sha256": sha256, "sha256_is_full": is_full,
        "preprocess": preprocess,
        "arch_overrides": dict(QUICK_GELU_OVERRIDES) if cfg.get("quick_gelu") else {},
        "license": None, "notes": "",
    }


def supported_archs(pretrained: dict) -> list[str]:
    """open_clip's architectures with tags (its order) that clipforge has a preset for, by the same name."""
    from clipforge.models import registry

    presets = {name.lower() for name in registry.list_models()}
    return [arch for arch in pretrained if arch.lower() in presets]


def build_table() -> dict:
    import open_clip
    from open_clip.pretrained import _PRETRAINED  # the tag table itself; there is no public accessor for it

    configs_dir = Path(open_clip.__file__).parent / "model_configs"
    entries = []
    for arch in supported_archs(_PRETRAINED):
        tags = _PRETRAINED[arch]
        size = image_size_of(arch, configs_dir)
        entries.extend(make_entry(arch, tag, cfg, size) for tag, cfg in tags.items())
    return {"format": FORMAT, "generated_from": f"open_clip_torch {open_clip.__version__}", "entries": entries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed table instead of writing")
    args = parser.parse_args(argv)
    text = json.dumps(build_table(), indent=1) + "\n"
    if args.check:
        same = TABLE_PATH.exists() and TABLE_PATH.read_text() == text
        print("up to date" if same else f"{TABLE_PATH} differs from what open_clip lists; rerun without --check")
        return 0 if same else 1
    write_text_atomic(TABLE_PATH, text)
    print(f"wrote {TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
