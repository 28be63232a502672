"""Generator of ``docs/zoo.md``: open_clip's whole model zoo against clipforge, names and shapes only.

For each architecture of open_clip's ``list_models()`` and each (architecture, tag) pair of its
``list_pretrained()`` the table says whether clipforge resolves the name, builds the architecture, and matches the
reference: the same architecture (``config_from_open_clip`` of open_clip's config equals clipforge's preset), the
same state-dict keys and shapes (open_clip's state dict through ``convert.convert_state_dict`` and back) and the same
parameter count. For a pair it also checks that the tag's source, preprocessing and architecture changes equal
open_clip's entry. Both sides are built on the meta device (no memory, no download, no weight init). A Hugging Face
text tower is built (by open_clip and by clipforge) from its encoder's config.json on the hub, which this tool never
fetches: while the table is built, both sides read it from ``tools/hf_stand_in_configs.json`` instead (reviewed
copies of the published values, with where each comes from), and those rows say so. clipforge itself never reads
that file. An encoder without a stand-in there is checked as a config only, and its row says that.

With ``--write-presets`` it first writes ``presets/<name>.json`` for every open_clip architecture that
``config_from_open_clip`` converts exactly and clipforge lacks (``-quickgelu`` twins resolve by suffix, no file).
New presets then need ``tools/make_pretrained_table.py`` (their weight tags) and a review of the diff.

Run from the repository root (open_clip and timm must be importable; clipforge itself never imports them):

    python tools/make_zoo_table.py                   # writes docs/zoo.md
    python tools/make_zoo_table.py --write-presets   # adds the presets clipforge can build, then writes docs/zoo.md
    python tools/make_zoo_table.py --check           # exits 1 if docs/zoo.md is out of date
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402

from clipforge._atomic import write_text_atomic  # noqa: E402
from clipforge.config import ConfigError, apply_overrides, to_dict  # noqa: E402
from clipforge.models import convert, registry, weights  # noqa: E402
from make_pretrained_table import sha256_from_url, split_hub  # noqa: E402

DOC_PATH = ROOT / "docs" / "zoo.md"
STAND_IN_PATH = ROOT / "tools" / "hf_stand_in_configs.json"
QUICKGELU = registry.QUICKGELU_SUFFIX

# (name pattern, family), first match wins: groups the rows and the "not yet covered" summary
FAMILIES = [
    (r"^coca_roberta", "CoCa with a Hugging Face text tower"), (r"^coca_", "CoCa"),
    (r"^RN\d", "ModifiedResNet"), (r"^convnext_", "ConvNeXt (timm)"), (r"^EVA", "EVA (timm)"),
    (r"^MobileCLIP", "MobileCLIP (timm FastViT / MCi)"), (r"^PE-Core", "Perception Encoder (timm)"),
    (r"^ViTamin", "ViTamin (timm)"), (r"^(swin_|vit_medium|vit_relpos)", "other timm trunks"),
    (r"^(mt5|nllb|roberta|xlm-roberta)", "Hugging Face text towers"), (r"-CLIPA", "CLIPA"),
    (r"SigLIP2", "SigLIP 2"), (r"SigLIP", "SigLIP"), (r"worldwide", "MetaCLIP 2 worldwide"),
    (r"^ViT-[SM]-", "ViT small / medium"), (r"^ViT-", "ViT"),
]
# What clipforge's model code would need for each family it does not cover yet (reviewed by hand).
NEEDS = {
    "Hugging Face text towers": "nothing in the model code (text.kind='hf'); not built here: the encoder's published "
                                "config.json is not among the stand-ins in tools/hf_stand_in_configs.json",
}


def family_of(name: str) -> str:
    return next(fam for pattern, fam in FAMILIES + [(r"", "other")] if re.search(pattern, name))


# ---------------------------------------------------------------- Hugging Face text towers: local stand-in configs
def load_stand_ins(path: Path = STAND_IN_PATH) -> dict[str, dict]:
    """hub model name -> its stand-in transformers config dict (``configs.<name>.config`` of the file)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: dict(entry["config"]) for name, entry in data["configs"].items()}


def published_profile(path: Path = STAND_IN_PATH) -> dict[str, tuple[float, float]]:
    """open_clip model name -> (M parameters, M text-tower parameters) from open_clip's docs/model_profile.csv."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: tuple(v) for name, v in data["open_clip_model_profile"]["mparams"].items()}


HF_STAND_INS = load_stand_ins()
PROFILE = published_profile()


@contextlib.contextmanager
def hub_configs_from_stand_ins(configs: dict[str, dict]) -> Iterator[None]:
    """While the table is built, both sides read the config of a Hugging Face encoder named in ``configs`` from
    there instead of the hub: open_clip through ``AutoConfig.from_pretrained``, clipforge through
    ``hf_text._hub_config``. Other names go to the real lookups (offline, they fail and the row says why)."""
    import transformers
    from clipforge.models import hf_text

    auto = transformers.AutoConfig
    saved_auto, saved_hub = auto.__dict__["from_pretrained"], hf_text._hub_config

    def from_pretrained(name, *args, **kwargs):
        if name in configs:
            return auto.for_model(**configs[name])
        return saved_auto.__get__(None, auto)(name, *args, **kwargs)

    def hub_config(name: str) -> str:
        return json.dumps(configs[name]) if name in configs else saved_hub(name)

    auto.from_pretrained, hf_text._hub_config = from_pretrained, hub_config
    try:
        yield
    finally:
        auto.from_pretrained, hf_text._hub_config = saved_auto, saved_hub


@dataclasses.dataclass
class Reference:
    """open_clip's model for one config, as shapes."""
    shapes: dict[str, tuple[int, ...]] | None = None
    params: int | None = None
    state_dict: dict | None = None  # meta tensors
    acts: dict[str, set[str]] | None = None  # tower -> activations (timm trunks bring their own)
    reason: str = ""  # why there are no shapes


@dataclasses.dataclass
class ArchRow:
    name: str
    family: str
    resolves: bool = False
    builds: bool = False
    config_exact: bool = False
    keys_match: bool = False  # state-dict keys, shapes and activations
    params: tuple[int | None, int | None] = (None, None)  # (open_clip, clipforge)
    note: str = ""
    unchecked: str = ""  # why this table cannot build either side (a Hugging Face text tower's hub config)
    stand_in: str = ""  # the Hugging Face encoder whose stand-in config both sides were built from

    @property
    def matches(self) -> bool:
        return self.config_exact and self.keys_match and self.params[0] == self.params[1] is not None


@dataclasses.dataclass
class PairRow:
    arch: str
    tag: str
    resolves: bool = False
    builds: bool = False
    matches: bool = False
    source: str = ""
    sha256: str = ""
    note: str = ""
    unchecked: str = ""  # as ArchRow.unchecked, when everything else about the pair matches


# ---------------------------------------------------------------- the reference (open_clip on the meta device)
def _identity_init(*args, **kwargs):
    return args[0] if args else next(iter(kwargs.values()))


@contextlib.contextmanager
def _meta_without_init() -> Iterator[None]:
    """Build on the meta device with weight-init functions as no-ops: meta tensors hold no values, and timm's
    truncated-normal init on meta tensors is what makes building its towers slow."""
    from timm.layers import weight_init

    targets = [(torch.nn.init, n) for n in ("normal_", "uniform_", "trunc_normal_", "xavier_uniform_",
                                            "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "constant_",
                                            "zeros_", "ones_", "orthogonal_")]
    targets += [(weight_init, n) for n in ("_trunc_normal_", "trunc_normal_tf_", "variance_scaling_")]
    saved = {(mod, n): getattr(mod, n) for mod, n in targets if hasattr(mod, n)}
    for mod, n in saved:
        setattr(mod, n, _identity_init)
    try:
        with torch.device("meta"):
            yield
    finally:
        for (mod, n), fn in saved.items():
            setattr(mod, n, fn)


def open_clip_class(cfg: dict):
    import open_clip

    if cfg.get("multimodal_cfg"):
        return open_clip.coca_model.CoCa
    custom = cfg.get("custom_text") or bool(cfg.get("text_cfg", {}).get("hf_model_name"))
    return open_clip.model.CustomTextCLIP if custom else open_clip.model.CLIP


def build_reference(cfg: dict) -> Reference:
    hf_name = cfg.get("text_cfg", {}).get("hf_model_name")
    if hf_name and hf_name not in HF_STAND_INS:
        return Reference(reason=f"reference needs the transformers config of '{hf_name}' (hub; not fetched)")
    if hf_name:  # the encoder from its config alone, as open_clip's create_model builds it when CLIP weights follow
        cfg = {**cfg, "text_cfg": {**cfg["text_cfg"], "hf_model_pretrained": False}}
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
    try:
        with _meta_without_init():
            model = open_clip_class(cfg)(**kwargs)
    except Exception as e:  # noqa: BLE001  (a reference that cannot be built is a row of the table, not a crash)
        return Reference(reason=f"reference cannot be built: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    sd = model.state_dict()
    return Reference(shapes={k: tuple(v.shape) for k, v in sd.items()}, state_dict=sd,
                     params=sum(p.numel() for p in model.parameters()), acts=activations(model, _OC_TOWERS))


# ---------------------------------------------------------------- clipforge's side
def clipforge_model(config) -> torch.nn.Module:
    """clipforge's model for ``config`` on the meta device (``convert.expected_shapes`` without the init cost)."""
    from clipforge.models.coca import build_model

    with _meta_without_init():
        return build_model(config)


def compare_keys(reference: Reference, config, model: torch.nn.Module) -> str:
    """'' when open_clip's state dict converts to exactly clipforge's keys and shapes and back; else the problem."""
    try:
        converted = convert.convert_state_dict(reference.state_dict, config)
    except convert.ConversionError as e:
        return f"keys: {e}"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shaped = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        return f"keys: missing {missing[:3]}, unexpected {extra[:3]}, mis-shaped {shaped[:3]}"
    back = convert.to_open_clip_state_dict(converted, config)
    if {k: tuple(v.shape) for k, v in back.items()} != reference.shapes:
        return "keys: clipforge -> open_clip layout does not give open_clip's keys and shapes back"
    return ""


def _act_name(module: torch.nn.Module) -> str | None:
    kind = type(module).__name__
    if kind == "QuickGELU":
        return "quick_gelu"
    if kind == "GELUTanh" or (kind == "GELU" and getattr(module, "approximate", "none") == "tanh"):
        return "gelu_tanh"
    return "gelu" if kind == "GELU" else None


def activations(model: torch.nn.Module, towers: dict[str, str]) -> dict[str, set[str]]:
    """tower -> the activations its modules use; ``towers`` maps a key prefix to a tower ('' = the rest)."""
    out: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        act = _act_name(module)
        if act is not None:
            tower = next((t for prefix, t in towers.items() if prefix and name.startswith(prefix)), towers[""])
            out.setdefault(tower, set()).add(act)
    return out


# key prefixes of each tower: open_clip keeps CLIP's text tower at the top level
_OC_TOWERS = {"visual.": "vision", "text_decoder.": "decoder", "": "text"}
_CF_TOWERS = {"visual.": "vision", "decoder.": "decoder", "": "text"}


def config_difference(ours, theirs) -> str:
    from clipforge.config import dotted_differences

    diff = dotted_differences(to_dict(theirs), to_dict(ours))
    return ", ".join(f"{k}={v!r}" for k, v in list(diff.items())[:4])


def arch_row(name: str, cfg: dict, reference: Reference) -> tuple[ArchRow, Any]:
    """The row for one open_clip architecture, and clipforge's config for it (None when it does not resolve)."""
    row = ArchRow(name, family_of(name), params=(reference.params, None))
    try:
        theirs, why_not = convert.config_from_open_clip(cfg), ""
    except (ConfigError, KeyError, TypeError) as e:
        theirs, why_not = None, str(e)
    try:
        ours = registry.get_architecture(name)
    except (registry.UnknownModelError, ConfigError) as e:
        # the first clause names the option or tower; the rest of the message is advice for users
        row.note = why_not.split("; ")[0] or "converts exactly but has no preset (run --write-presets)"
        return row, None
    row.resolves = True
    if ours.text.kind == "hf" and ours.text.hf.model_name not in HF_STAND_INS:
        return _hf_row(row, ours, theirs, why_not), ours
    try:
        model = clipforge_model(ours)
    except (ConfigError, ValueError, RuntimeError) as e:
        row.note = f"clipforge cannot build it: {e}"
        return row, ours
    row.builds = True
    row.params = (reference.params, sum(p.numel() for p in model.parameters()))
    row.config_exact = theirs == ours
    problems = [] if row.config_exact else [f"config differs: {config_difference(ours, theirs)}" if theirs
                                            else f"open_clip config does not convert: {why_not}"]
    if reference.state_dict is None:
        problems.append(reference.reason)
    else:
        keys = compare_keys(reference, ours, model)
        acts = activations(model, _CF_TOWERS)
        same_acts = acts == reference.acts
        row.keys_match = not keys and same_acts
        problems += [keys, "" if same_acts else f"activations differ: open_clip {_sorted(reference.acts)}, "
                                               f"clipforge {_sorted(acts)}"]
        if row.params[0] != row.params[1]:
            problems.append("parameter counts differ")
    if ours.text.kind == "hf":
        row.stand_in = ours.text.hf.model_name
        problems.insert(0, stand_in_note(name, row.stand_in, row.params[1]))
    row.note = "; ".join(p for p in problems if p)
    return row, ours


def stand_in_note(name: str, hf_name: str, params: int) -> str:
    """What a row built from a stand-in config says: which config, and how its count compares with open_clip's
    published profile (millions, rounded to 2 decimals there)."""
    note = f"text tower built from the local stand-in config of '{hf_name}'"
    if name not in PROFILE:
        return note
    verdict = "equals" if matches_profile(name, params) else "**differs from**"
    return (f"{note}; {params / 1e6:,.2f} M parameters {verdict} open_clip's published profile "
            f"({PROFILE[name][0]:,.2f} M)")


def matches_profile(name: str, params: int | None) -> bool:
    return params is not None and round(params / 1e6, 2) == PROFILE[name][0]


def _hf_row(row: ArchRow, ours, theirs, why_not: str) -> ArchRow:
    """A Hugging Face text tower: only the config is compared; building either side needs the hub's config.json."""
    row.config_exact = theirs == ours
    if not row.config_exact:
        row.note = f"config differs: {config_difference(ours, theirs)}" if theirs else \
            f"open_clip config does not convert: {why_not}"
        return row
    row.unchecked = (f"config converts exactly; not built here: both sides need the transformers config of "
                     f"'{ours.text.hf.model_name}' from the hub")
    row.note = row.unchecked
    return row


def _sorted(acts: dict[str, set[str]]) -> dict[str, list[str]]:
    return {tower: sorted(names) for tower, names in sorted(acts.items())}


# ---------------------------------------------------------------- pairs
def expected_entry(arch: str, tag_cfg: dict) -> dict:
    """What clipforge's weight entry must say for open_clip's tag entry (as make_pretrained_table writes it)."""
    hub_id, hub_file = split_hub(tag_cfg.get("hf_hub", ""))
    return {"hf_hub_id": hub_id, "hf_filename": hub_file, "url": tag_cfg.get("url") or None,
            "sha256": sha256_from_url(tag_cfg.get("url") or "")[0],
            "mean": [float(v) for v in tag_cfg["mean"]], "std": [float(v) for v in tag_cfg["std"]],
            "interpolation": tag_cfg["interpolation"], "resize_mode": tag_cfg["resize_mode"]}


def pair_row(arch: str, tag: str, tag_cfg: dict, arch_cfg: dict, row: ArchRow) -> PairRow:
    pair = PairRow(arch, tag)
    try:
        entry = weights.get_weight_entry(arch, tag)
    except ValueError as e:
        pair.note = str(e).split(".")[0]
        return pair
    pair.resolves = True
    pair.source = f"hf-hub:{entry.hf_hub_id} ({entry.hf_filename})" if entry.hf_hub_id else (entry.url or "")
    pair.sha256 = (entry.sha256 or "") + ("" if entry.sha256_is_full or not entry.sha256 else "... (prefix)")
    got = {"hf_hub_id": entry.hf_hub_id, "hf_filename": entry.hf_filename, "url": entry.url, "sha256": entry.sha256,
           **{k: entry.preprocess[k] for k in ("mean", "std", "interpolation", "resize_mode")}}
    problems = [f"{k} differs" for k, v in expected_entry(arch, tag_cfg).items() if got[k] != v]
    try:
        ours = apply_overrides(registry.get_architecture(arch), entry.arch_overrides)
        pair.builds = row.builds
    except (registry.UnknownModelError, ConfigError) as e:
        return dataclasses.replace(pair, note=f"architecture: {e}")
    # what open_clip builds for ARCH + TAG: the tag's quick_gelu is what the weights were trained with
    tag_model_cfg = dict(arch_cfg, quick_gelu=arch_cfg.get("quick_gelu", False) or tag_cfg.get("quick_gelu", False))
    try:
        if convert.config_from_open_clip(tag_model_cfg) != ours:
            problems.append("architecture with the tag's changes differs from open_clip's")
    except ConfigError as e:
        problems.append(f"open_clip config does not convert: {e}")
    if row.unchecked and not problems:
        pair.unchecked = pair.note = "entry matches open_clip's; architecture not built here (see its row)"
        return pair
    if not row.matches:
        problems.append("architecture does not match (see its row)")
    pair.matches = not problems
    pair.note = "; ".join(problems)
    return pair


# ---------------------------------------------------------------- presets
def preset_text(config) -> str:
    return json.dumps(to_dict(config), indent=2) + "\n"


def write_presets(names: list[str], get_config: Callable[[str], dict]) -> list[str]:
    """Write a preset for each open_clip architecture that converts exactly and clipforge lacks."""
    have = {n.lower() for n in registry.list_models()}
    written = []
    for name in names:
        if name.lower() in have or name.lower().endswith(QUICKGELU):
            continue
        try:
            config = convert.config_from_open_clip(get_config(name))
        except (ConfigError, KeyError, TypeError):
            continue
        write_text_atomic(registry.PRESET_DIR / f"{name}.json", preset_text(config))
        written.append(name)
    registry._shipped_files.cache_clear()
    registry._load.cache_clear()
    return written


# ---------------------------------------------------------------- the table
def build_rows() -> tuple[list[ArchRow], list[PairRow], str]:
    import open_clip
    from open_clip.pretrained import _PRETRAINED  # the tag table; list_pretrained() gives the names only

    arch_rows, pair_rows = {}, []
    with hub_configs_from_stand_ins(HF_STAND_INS):
        for name in open_clip.list_models():
            cfg = open_clip.get_model_config(name)
            arch_rows[name], _ = arch_row(name, cfg, build_reference(cfg))
    for arch, tag in open_clip.list_pretrained():
        pair_rows.append(pair_row(arch, tag, _PRETRAINED[arch][tag], open_clip.get_model_config(arch),
                                  arch_rows[arch]))
    return list(arch_rows.values()), pair_rows, open_clip.__version__


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(archs: list[ArchRow], pairs: list[PairRow], version: str) -> str:
    def tally(rows, attr):
        return f"{sum(getattr(r, attr) for r in rows)}/{len(rows)}"

    lines = [
        f"# The model zoo against open_clip {version}", "",
        "Generated by `python tools/make_zoo_table.py` from open_clip's `list_models()` and `list_pretrained()`; do "
        "not edit by hand. CI runs `--check` (names and shapes only: both models built on the meta device, nothing "
        "downloaded). An architecture *matches* when open_clip's config converts to exactly clipforge's preset and "
        "open_clip's state dict converts to exactly clipforge's keys and shapes (and back) with the same parameter "
        "count; a pair matches when its architecture does and clipforge's weight entry has open_clip's source, "
        "sha256, preprocessing and architecture changes, so those weights load strictly.", "",
        "| | total | resolves | builds | matches |", "|---|---|---|---|---|",
        f"| architectures | {len(archs)} | {tally(archs, 'resolves')} | {tally(archs, 'builds')} | "
        f"{tally(archs, 'matches')} |",
        f"| (architecture, tag) pairs | {len(pairs)} | {tally(pairs, 'resolves')} | {tally(pairs, 'builds')} | "
        f"{tally(pairs, 'matches')} |", "",
    ]
    lines += render_stand_ins(archs)
    unchecked = [r.name for r in archs if r.unchecked]
    if unchecked:
        lines += [f"{len(unchecked)} architectures ({sum(bool(p.unchecked) for p in pairs)} pairs) have a Hugging "
                  "Face text tower: they resolve and their configs (and weight entries) convert exactly, but neither "
                  "side is built here, because both build the encoder from its config.json on the hub, which this "
                  "table never fetches. Their parity with open_clip is tested with local stand-in configs "
                  "(`tests/models/test_hf_text.py`).", ""]
    lines += render_missing(archs, pairs)
    lines += ["## Architectures", "",
              "| architecture | family | resolves | builds | matches | parameters (open_clip) | parameters "
              "(clipforge) | note |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.family} | {_yes(r.resolves)} | {_yes(r.builds)} | {_yes(r.matches)} | "
              f"{_count(r.params[0])} | {_count(r.params[1])} | {_cell(r.note)} |" for r in archs]
    lines += ["", "## Pretrained weights", "",
              "| architecture | tag | resolves | builds | matches | downloads from (hub repo (file), or URL) | "
              "sha256 of the URL file | note |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p.arch} | {p.tag} | {_yes(p.resolves)} | {_yes(p.builds)} | {_yes(p.matches)} | "
              f"{_cell(p.source)} | {p.sha256} | {_cell(p.note)} |" for p in pairs]
    return "\n".join(lines) + "\n"


def render_stand_ins(archs: list[ArchRow]) -> list[str]:
    """The paragraph on the rows built from stand-in configs: what they are, where the values come from."""
    built = [r for r in archs if r.stand_in]
    if not built:
        return []
    profiled = [r for r in built if r.name in PROFILE]
    agree = [r for r in profiled if matches_profile(r.name, r.params[1])]
    check = (f"The {len(profiled)} of them that open_clip profiles in its docs/model_profile.csv have exactly the "
             "parameter counts published there (to its 0.01 M)." if len(agree) == len(profiled) else
             f"Only {len(agree)} of the {len(profiled)} that open_clip profiles in its docs/model_profile.csv have the "
             "parameter counts published there (see the notes).")
    return [f"{len(built)} architectures have a Hugging Face text tower. open_clip and clipforge both build such an "
            "encoder from its config.json on the hub, which this table never fetches, so **these rows are built from "
            "local stand-in configs of the published values**: `tools/hf_stand_in_configs.json` "
            f"({', '.join(sorted({r.stand_in for r in built}))}), read by both sides while the table is built and "
            "never by clipforge itself. The values come from copies of the published config.json files, transformers "
            "dumps of those models and, where no copy was at hand, the architecture definitions in t5x, fairseq2 and "
            "keras-hub; the file names the sources of each value. " + check, ""]


def render_missing(archs: list[ArchRow], pairs: list[PairRow]) -> list[str]:
    missing: dict[str, list[str]] = {}
    for r in archs:
        if not r.matches:
            missing.setdefault(r.family, []).append(r.name)
    if not missing:
        return []
    unmatched_pairs = {}
    for p in pairs:
        if not p.matches:
            fam = family_of(p.arch)
            unmatched_pairs[fam] = unmatched_pairs.get(fam, 0) + 1
    lines = ["## Not covered yet, by family", "", "| family | architectures | pairs | what clipforge needs |",
             "|---|---|---|---|"]
    for fam, names in missing.items():
        lines.append(f"| {fam} | {', '.join(names)} | {unmatched_pairs.get(fam, 0)} | "
                     f"{_cell(NEEDS.get(fam, 'see the notes below'))} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed docs/zoo.md instead")
    parser.add_argument("--write-presets", action="store_true",
                        help="first write presets for open_clip architectures that convert exactly")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # names and shapes only: never a download
    if args.write_presets:
        import open_clip

        written = write_presets(open_clip.list_models(), open_clip.get_model_config)
        print(f"wrote {len(written)} presets: {', '.join(written) or '-'}")
    archs, pairs, version = build_rows()
    text = render(archs, pairs, version)
    if args.check:
        same = DOC_PATH.exists() and DOC_PATH.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{DOC_PATH} differs from what the tool finds; rerun without --check")
        return 0 if same else 1
    write_text_atomic(DOC_PATH, text)
    print(f"wrote {DOC_PATH}: architectures {sum(r.matches for r in archs)}/{len(archs)} match, "
          f"pairs {sum(p.matches for p in pairs)}/{len(pairs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
