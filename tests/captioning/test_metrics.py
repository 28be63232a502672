"""Caption metrics: values of pycocoevalcap on a tiny set, a perfect candidate scores best, clear errors."""
import builtins

import pytest
from references import require

from clipforge.captioning import metrics
from clipforge.captioning.metrics import caption_scores, normalize_caption

REFERENCES = [["a red circle in the top left", "a red circle, top left", "the top left has a red circle"],
              ["a blue square at the bottom", "a large blue square", "there is a blue square in the corner"],
              ["a green triangle on the right", "a drawing of a green triangle", "green triangle, right"]]


def test_scores_match_pycocoevalcap_and_rank_candidates():
    require("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    good = ["a red circle in the top left", "a large blue square", "a green triangle on the right"]
    bad = ["a blue square", "a red triangle", "a green circle"]
    ours = caption_scores(REFERENCES, good)
    gts = {i: [normalize_caption(r) for r in refs] for i, refs in enumerate(REFERENCES)}
    res = {i: [normalize_caption(c)] for i, c in enumerate(good)}
    assert ours["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0])
    worse = caption_scores(REFERENCES, bad)
    assert ours["cider"] > worse["cider"] and ours["bleu4"] > worse["bleu4"]
    assert set(ours) == {"cider", "bleu1", "bleu2", "bleu3", "bleu4"}
    keyed = caption_scores({f"k{i}": r for i, r in enumerate(REFERENCES)}, {f"k{i}": c for i, c in enumerate(good)})
    assert keyed == ours


def test_normalisation():
    assert normalize_caption("A Red  circle, top-left!") == "a red circle top left"


def test_bad_inputs_and_install_hint(monkeypatch):
    with pytest.raises(ValueError, match="same images"):
        caption_scores(REFERENCES, ["only one"])
    with pytest.raises(ValueError, match="no reference captions"):
        caption_scores([[]], ["x"])
    real_import = builtins.__import__

    def no_pycocoevalcap(name, *args, **kwargs):
        if name.startswith("pycocoevalcap"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pycocoevalcap)
    with pytest.raises(ImportError, match=r"pip install 'clipforge\[caption\]'"):
        caption_scores(REFERENCES, ["a", "b", "c"])
    assert metrics.INSTALL_HINT.startswith("caption metrics need pycocoevalcap")
