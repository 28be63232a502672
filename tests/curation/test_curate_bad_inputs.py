"""clipforge curate on bad input: one line naming the problem and the fix, exit 2, nothing half-written."""
import json

from cli_checks import one_line_failures
from clipforge.cli.main import main

from test_curation import _pool


def test_bad_curation_inputs_are_one_line(tmp_path, capsys):
    pool = _pool(tmp_path / "pool", shards=2, per_shard=10)
    spec = str(pool / "pool-{000000..000001}.tar")
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "broken.json").write_text("[\"dog\",")
    (tmp_path / "numbers.json").write_text("[1, 2]")
    assert main(["curate", "match", spec, "--metadata", str(pool / "meta.json"), "--out", str(tmp_path / "cur"),
                 "--shard-index", "0", "--num-shards", "2"]) == 0
    capsys.readouterr()
    cases = [
        (["curate", "match", spec, "--metadata", str(tmp_path / "empty.json"), "--out", str(tmp_path / "x1")],
         "no metadata entries", [tmp_path / "x1"]),
        (["curate", "match", spec, "--metadata", str(tmp_path / "broken.json"), "--out", str(tmp_path / "x2")],
         "not valid JSON", [tmp_path / "x2"]),
        (["curate", "match", spec, "--metadata", str(tmp_path / "numbers.json"), "--out", str(tmp_path / "x3")],
         "strings", [tmp_path / "x3"]),
        (["curate", "match", spec, "--metadata", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x4")],
         "not found", [tmp_path / "x4"]),
        (["curate", "match", str(tmp_path / "none-{0..1}.tar"), "--metadata", str(pool / "meta.json"), "--out",
          str(tmp_path / "x5")], "none-", [tmp_path / "x5"]),
        (["curate", "match", spec, "--metadata", str(pool / "meta.json"), "--out", str(tmp_path / "x6"),
          "--shard-index", "3", "--num-shards", "2"], "--shard-index", [tmp_path / "x6"]),
        (["curate", "match", spec, "--metadata", str(tmp_path / "numbers.json"), "--out", str(tmp_path / "cur")],
         "strings", []),
        (["curate", "merge", str(tmp_path / "cur")], "not matched yet", [tmp_path / "cur" / "counts.npy"]),
        (["curate", "balance", str(tmp_path / "cur"), "--t", "0"], "--t must be a positive",
         [tmp_path / "cur" / "balanced"]),
        (["curate", "balance", str(tmp_path / "cur"), "--t", "-5"], "--t must be a positive",
         [tmp_path / "cur" / "balanced"]),
        (["curate", "balance", str(tmp_path / "nothing")], "no curation run", []),
        (["curate", "write", str(tmp_path / "cur"), "--balanced", "t9-seed0", "--out", str(tmp_path / "w")],
         "no balanced set", [tmp_path / "w"]),
        (["curate", "metadata", "--out", str(tmp_path / "m.json")], "no metadata entries from any source",
         [tmp_path / "m.json"]),
        (["curate", "metadata", "--wordnet", "--out", str(tmp_path / "m.json")], "nltk", [tmp_path / "m.json"]),
    ]
    assert not one_line_failures(cases, capsys, status=2)
    # another metadata list into the same folder is refused, the first run untouched
    other = tmp_path / "other.json"
    other.write_text(json.dumps(["zebra"]))
    assert not one_line_failures([(["curate", "match", spec, "--metadata", str(other), "--out",
                                    str(tmp_path / "cur")], "another source, rule or metadata", [])], capsys, 2)
    assert json.loads((tmp_path / "cur" / "metadata.json").read_text())[0] == "red"
    # finish, balance, then a shard vanishes before writing
    assert main(["curate", "match", spec, "--metadata", str(pool / "meta.json"), "--out", str(tmp_path / "cur"),
                 "--shard-index", "1", "--num-shards", "2"]) == 0
    assert main(["curate", "balance", str(tmp_path / "cur"), "--t", "5"]) == 0
    (pool / "pool-000001.tar").unlink()
    capsys.readouterr()
    assert not one_line_failures([(["curate", "write", str(tmp_path / "cur"), "--balanced", "t5-seed0", "--out",
                                    str(tmp_path / "w2")], "gone", [tmp_path / "w2"])], capsys, 2)
