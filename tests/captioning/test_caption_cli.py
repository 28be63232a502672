"""``clipforge caption``: captions as lines or JSON, and one clear line for each bad input."""
import json

from cli_checks import one_line_failures
from clipforge.cli.main import main
from clipforge.models.factory import save_pretrained
from caption_helpers import randomize
from clipforge.models.factory import create_model


def test_caption_json_and_lines(image_files, tmp_path, capsys):
    folder = save_pretrained(randomize(create_model("tiny-coca")), tmp_path / "coca")
    paths = [str(p) for p in image_files]
    assert main(["caption", *paths, "--model", f"local-dir:{folder}", "--method", "greedy", "--max-length", "8",
                 "--json", "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out] == paths and all(isinstance(r["caption"], str) for r in out)
    assert main(["caption", paths[0], "--model", "tiny-coca", "--method", "top_p", "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(paths[0] + "\t")


def test_bad_inputs_are_one_line(image_files, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    image = str(image_files[0])
    cases = [
        (["caption", image, "--model", "tiny-vit"], "has no caption decoder", []),
        (["caption", str(tmp_path / "nope.png"), "--model", "tiny-coca"], "image file not found", []),
        (["caption", str(broken), "--model", "tiny-coca"], "cannot decode image", []),
        (["caption", image, "--model", "tiny-coca", "--method", "nucleus"], "unknown generation method", []),
        (["caption", image, "--model", "tiny-coca", "--max-length", "100"], "more than this model reads", []),
        (["caption", image, "--model", "no-such-model"], "unknown model", []),
    ]
    assert one_line_failures(cases, capsys, status=2) == []
