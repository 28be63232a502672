"""Writes src/clipforge/curation/data/example_metadata.json, the small metadata list shipped with clipforge.

    python tools/make_example_metadata.py

Entries: the class names of the zero-shot benchmark datasets clipforge ships (as clip_benchmark names them, from
OpenAI CLIP's prompt-engineering notebook, MIT licence), concept datasets only (not digits, counts, distances,
angles), plus the colours and shapes of the quickstart dataset. Visual concepts, in the spirit of MetaCLIP's WordNet
part; for a real pool build a full list with `clipforge curate metadata` (WordNet, a corpus, titles).
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATASETS = ("imagenet1k", "cifar100", "caltech101", "flowers", "pets", "dtd", "resisc45", "voc2007", "country211",
            "eurosat", "gtsrb", "fer2013", "cifar10")


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "src"))
    from clipforge.training.shapes import COLORS, SHAPES

    names = json.loads((ROOT / "src/clipforge/evaluation/data/classnames.json").read_text())
    entries = []
    for dataset in DATASETS:
        entries += [n.strip() for n in names[dataset] if n.strip() and not n.strip().isdigit()]
    entries += list(COLORS) + list(SHAPES)
    entries = list(dict.fromkeys(entries))
    out = ROOT / "src/clipforge/curation/data/example_metadata.json"
    out.write_text(json.dumps({
        "provenance": "class names of " + ", ".join(DATASETS) + " as clip_benchmark names them (OpenAI CLIP's "
                      "prompt-engineering notebook, MIT licence), plus the quickstart dataset's colours and shapes; "
                      "written by tools/make_example_metadata.py",
        "entries": entries}, ensure_ascii=False, indent=0))
    print(f"{len(entries)} entries -> {out}")


if __name__ == "__main__":
    main()
