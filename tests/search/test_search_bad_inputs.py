"""index / search / dedup on bad input: exit status 2, one line naming the problem and the fix, no traceback,
and an existing index left searchable."""
import json

import pytest
from PIL import Image

from cli_checks import one_line_failures
from clipforge.cli.main import main
from clipforge.models.factory import create_model, save_pretrained


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_bad")
    save_pretrained(create_model("tiny-vit"), root / "model_a")
    save_pretrained(_other_model(), root / "model_b")
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "a.jpg").write_text("not an image")
    (root / "broken" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "coll").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 20, 200 - 40 * i)).save(root / "coll" / f"{i}.png")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("user data")
    (root / "nopath.csv").write_text("name,title\na.png,x\n")
    assert main(["index", str(root / "coll"), "--model", f"local-dir:{root / 'model_a'}", "--out",
                 str(root / "idx")]) == 0
    (root / "interrupted").mkdir()
    (root / "interrupted" / "clipforge_index.json").write_text(json.dumps({"model": {"spec": "x"}}))
    return root


def _other_model():
    """The same architecture with other weights: a name check alone would not tell them apart."""
    import torch
    model = create_model("tiny-vit")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    return model


def _cases(f):
    a, b = f"local-dir:{f / 'model_a'}", f"local-dir:{f / 'model_b'}"
    out = f / "out"
    return [
        (["index", str(f / "empty"), "--model", a, "--out", str(out)], "no images found in", [out]),
        (["index", str(f / "nope"), "--model", a, "--out", str(out)], "does not exist", [out]),
        (["index", str(f / "broken"), "--model", a, "--out", str(f / "broken_idx")],
         "none of the 2 images", [f / "broken_idx" / "index"]),
        (["index", str(f / "coll"), "--model", b, "--out", str(f / "idx")], "was indexed with model", []),
        (["index", str(f / "coll"), "--model", a, "--out", str(f / "idx"), "--dtype", "float32"],
         "stores float16 embeddings, not float32", []),
        (["index", str(f / "coll"), "--model", a, "--out", str(f / "full")], "holds no clipforge index", []),
        (["index", str(f / "nopath.csv"), "--model", a, "--out", str(out)], "no image path column", [out]),
        (["index", str(f / "coll"), "--model", a, "--out", str(out), "--backend", "qdrant"],
         "needs --qdrant-url", [out]),
        (["index", str(f / "coll"), "--model", a, "--out", str(out), "--batch-size", "0"],
         "batch-size must be >= 1", [out]),
        (["search", str(f / "nope"), "a cat"], "no index at", []),
        (["search", str(f / "interrupted"), "a cat"], "run `clipforge index` again", []),
        (["search", str(f / "idx"), "a cat", "--model", b], "was indexed with model", []),
        (["search", str(f / "idx")], "give a text query or --image", []),
        (["search", str(f / "idx"), "a cat", "--image", str(f / "coll" / "0.png")], "exactly one", []),
        (["search", str(f / "idx"), "--image", str(f / "nope.png")], "image file not found", []),
        (["search", str(f / "idx"), "a cat", "--where", "width"], "--where takes COLUMN=VALUE", []),
        (["search", str(f / "idx"), "a cat", "--where", "colour=red"], "no metadata column 'colour'", []),
        (["search", str(f / "idx"), "a cat", "-k", "0"], "-k must be >= 1", []),
        (["search", str(f / "idx"), "a cat", "--where", "width=wide"], "the column holds int values", []),
        (["index", str(f / "coll"), "--model", a, "--out", str(out), "--index-type", "IVF-nonsense"],
         "nor a faiss factory string", [out]),
        (["dedup", str(f / "nope")], "no index at", []),
        (["dedup", str(f / "idx"), "--threshold", "2"], "threshold is a cosine similarity", []),
    ]


def test_every_search_verb_gives_one_clear_line(f, capsys):
    failures = one_line_failures(_cases(f), capsys, status=2)
    assert not failures, "\n".join(failures)
    assert (f / "full" / "keep.txt").read_text() == "user data"
    assert main(["search", str(f / "idx"), "a cat", "-k", "2", "--json"]) == 0  # refused runs left it intact
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and {"score", "key", "sha1", "width"} <= set(hits[0])
