"""Caption metrics against reference captions: CIDEr (CIDEr-D's n-gram TF-IDF consensus, as the COCO caption
evaluation computes it) and BLEU-1..4, through ``pycocoevalcap`` (the ``caption`` extra).

Captions are lowercased and split into words with punctuation dropped before scoring (the COCO toolkit's PTB
tokenizer needs Java; for plain English captions the two agree). CIDEr's document frequencies come from the
references of the set being scored, so scores are comparable only between candidate sets for the same references.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
INSTALL_HINT = "caption metrics need pycocoevalcap: pip install 'clipforge[caption]' (or pip install pycocoevalcap)"


def normalize_caption(text: str) -> str:
    """Lowercase words separated by single spaces, punctuation removed."""
    return " ".join(_WORD.findall(text.lower()))


def _scorers():
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return Bleu, Cider


def caption_scores(references: Sequence[Sequence[str]] | Mapping[str, Sequence[str]],
                   candidates: Sequence[str] | Mapping[str, str]) -> dict[str, float]:
    """``{"cider": ..., "bleu1": ..., ..., "bleu4": ...}`` of one candidate caption per image against that image's
    reference captions (lists in the same order, or dicts with the same keys)."""
    if not isinstance(references, Mapping):
        references = dict(enumerate(references))
    if not isinstance(candidates, Mapping):
        candidates = dict(enumerate(candidates))
    if set(references) != set(candidates):
        raise ValueError(f"references and candidates must cover the same images ({len(references)} vs "
                         f"{len(candidates)})")
    if not candidates:
        raise ValueError("no captions to score")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"image {empty[0]!r} has no reference captions")
    Bleu, Cider = _scorers()
    gts = {key: [normalize_caption(r) for r in refs] for key, refs in references.items()}
    res = {key: [normalize_caption(candidates[key])] for key in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"cider": float(cider), **{f"bleu{n}": float(b) for n, b in enumerate(bleu, 1)}}
