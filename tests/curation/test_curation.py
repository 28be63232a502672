"""Curation: matching equals a per-entry reference under each rule; balancing follows MetaCLIP's rule within sampling
error and does not depend on shard order or how shards were split; re-balancing needs no second matching pass;
curated shards train."""
import io
import json
import random
import tarfile

import numpy as np
import pytest

from clipforge.curation import (Matcher, balance_pool, from_entries, keep_mask, keep_probabilities, match_pool,
                                merge_counts, naive_match, plot_counts, stats_table, tail_share,
                                threshold_for_share, write_shards)
from clipforge.curation import balance as bal

VOCAB = ["dog", "hot dog", "dogs", "do", "hot", "golden retriever", "golden", "retriever", "New York", "York",
         "café", "naïve", "猫", "東京", "C++", "e-mail", "mail", "dog's", "a", "A", "it", "it's", "cat", "cats", "ca",
         "rock 'n' roll", "über", "🙂", "1990s", "U.S.", "Mr. Smith", "Q&A", "x", "?"]
FILLER = ["the", "my", "and", "with", "photo", "of", "in", "on", "very", "big"]
PUNCT = ["", "", "", ",", ".", ";", ":", "?", "!", "`", "'", "-", "(", ")", "\"", "\t", "\n", "/"]


def _caption(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(1, 12)):
        word = rng.choice(VOCAB if rng.random() < 0.5 else FILLER)
        before, after = rng.choice(PUNCT), rng.choice(PUNCT)
        words.append(before + word + after if rng.random() < 0.3 else word)
    return rng.choice([" ", "  ", " ", ""]).join(words) if rng.random() < 0.95 else "".join(words)


@pytest.mark.parametrize("rule", ["metaclip1", "metaclip2", "words"])
def test_the_automaton_equals_a_search_per_entry(rule):
    rng = random.Random(rule)
    captions = [_caption(rng) for _ in range(1500)] + ["", "dog", " dog ", "hot dog.", "dog\x00dog", "東京の猫"]
    matcher = Matcher(VOCAB, rule)
    offsets, ids = matcher.match(captions)
    mismatches = [(c, ids[offsets[i]:offsets[i + 1]].tolist(), naive_match(c, VOCAB, rule))
                  for i, c in enumerate(captions) if ids[offsets[i]:offsets[i + 1]].tolist() != naive_match(c, VOCAB, rule)]
    assert not mismatches, mismatches[:5]
    assert len(ids) > 1000  # the pool really exercises the entries
    one = matcher.match_one("a hot dog in New York.")
    assert {VOCAB[i] for i in one} >= {"hot dog", "hot", "dog", "New York", "York", "a"}


def test_the_rules_differ_where_documented():
    def hits(rule, caption):
        return {VOCAB[i] for i in Matcher(VOCAB, rule).match_one(caption)}
    assert "dog" not in hits("metaclip1", "dog's toy") and "dog" not in hits("metaclip1", "dog-friendly")
    assert "dog" not in hits("metaclip1", "(dog)") and "dog" in hits("words", "(dog)")
    assert "dog" not in hits("words", "dog's toy") and "dog's" in hits("words", "dog's toy")
    assert "猫" in hits("metaclip2", "東京の猫です") and "猫" not in hits("metaclip1", "東京の猫です")
    assert "A" not in hits("metaclip1", "a photo")  # case-sensitive


def test_duplicate_and_empty_metadata():
    meta = from_entries(["dog", "cat", "dog", "", "dog", "cat"])
    assert meta.entries == ("dog", "cat") and meta.duplicates == {"dog": 2, "cat": 1} and meta.dropped_empty == 1
    from clipforge.curation import CurationError
    with pytest.raises(CurationError, match="no metadata entries"):
        from_entries(["", "  "])
    with pytest.raises(CurationError, match="strings"):
        from_entries(["dog", 3])


def _zipf_pool(n=60_000, entries=200, seed=0, per_caption=1):
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, entries + 1) ** 1.1
    draws = rng.choice(entries, size=(n, per_caption), p=weights / weights.sum())
    rows = [np.unique(r) for r in draws]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    return offsets, np.concatenate(rows).astype(np.int32)


def test_balancing_keeps_t_over_count_of_head_entries_and_all_of_the_tail():
    offsets, ids = _zipf_pool()
    counts = np.bincount(ids, minlength=200)
    t = 300
    p = keep_probabilities(counts, t)
    keep = keep_mask(offsets, ids, bal.sample_ids("shard-0.tar", len(offsets) - 1), p, seed=7)
    kept_counts = np.bincount(ids[np.repeat(keep, np.diff(offsets))], minlength=200)
    head, tail = counts > t, (counts > 0) & (counts <= t)
    assert head.sum() >= 10 and tail.sum() >= 50
    assert (kept_counts[tail] == counts[tail]).all()
    sd = np.sqrt(counts[head] * p[head] * (1 - p[head]))
    z = (kept_counts[head] - counts[head] * p[head]) / sd
    assert np.abs(z).max() < 4.5, z  # every head entry near t, within sampling error
    assert abs(z.mean()) < 4 / np.sqrt(head.sum())


def test_several_entries_per_caption_survive_with_one_minus_the_product():
    offsets, ids = _zipf_pool(n=40_000, per_caption=3, seed=1)
    counts = np.bincount(ids, minlength=200)
    p = keep_probabilities(counts, 500)
    keep = keep_mask(offsets, ids, bal.sample_ids("s.tar", len(offsets) - 1), p, seed=3)
    mean, var = bal.expected_kept(offsets, ids, p)
    assert abs(keep.sum() - mean) < 4 * np.sqrt(var), (keep.sum(), mean, var)
    # samples holding exactly entries {0, 1} (both head): survival rate 1 - (1-p0)(1-p1)
    sizes = np.diff(offsets)
    pair = np.array([sizes[i] == 2 and ids[offsets[i]] == 0 and ids[offsets[i] + 1] == 1
                     for i in range(len(sizes))])
    expected = 1 - (1 - p[0]) * (1 - p[1])
    assert pair.sum() > 100 and p[0] < 0.5
    assert abs(keep[pair].mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / pair.sum())
    empty = sizes == 0
    assert not keep[empty].any()


def test_per_language_threshold_maps_through_the_tail_share():
    rng = np.random.default_rng(0)
    english = np.minimum(rng.zipf(1.3, 5000), 10**6).astype(float)
    other = np.minimum(rng.zipf(1.6, 800), 10**6).astype(float)
    share = tail_share(english, 20)
    t_other = threshold_for_share(other, share)
    assert abs(tail_share(other, t_other) - share) < 1e-6
    assert threshold_for_share(english, share) == pytest.approx(20, rel=1e-6)


# ------------------------------------------------------------------------------------------------ the pool


ENTRIES = ["red", "blue", "green", "circle", "square", "triangle", "red circle", "blue square"]


def _tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _pool(root, shards=4, per_shard=50, seed=0):
    """Skewed captions (red circles dominate), one shard with a captionless and a non-UTF-8 sample."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            color = "red" if rng.random() < 0.7 else rng.choice(["blue", "green"])
            shape = "circle" if color == "red" else rng.choice(["square", "triangle"])
            samples.append((f"{s:02d}{i:04d}", {"jpg": b"\xff\xd8fake" + bytes([i]), "cls": b"3",
                                                  "txt": f"a {color} {shape}, small.".encode()}))
        if s == 1:
            samples.append(("01nocap", {"jpg": b"\xff\xd8x"}))
            samples.append(("01latin", {"jpg": b"\xff\xd8y", "txt": b"caf\xe9 red"}))
        _tar(root / f"pool-{s:06d}.tar", samples)
    (root / "meta.json").write_text(json.dumps(ENTRIES + ["red"]))
    return root


def test_match_balance_write_and_reuse(tmp_path):
    pool = _pool(tmp_path / "pool")
    spec = str(pool / "pool-{000000..000003}.tar")
    whole = match_pool(spec, pool / "meta.json", tmp_path / "one", show_progress=False)
    assert whole["samples"] == 202 and whole["no_caption"] == 1 and whole["not_utf8"] == 1
    for index in (1, 0):  # two jobs of a job array, the second half first
        match_pool(spec, pool / "meta.json", tmp_path / "two", shard_index=index, num_shards=2, show_progress=False)
    again = match_pool(spec, pool / "meta.json", tmp_path / "two", show_progress=False)
    assert again["shards"] == 0 and again["skipped_done"] == 4  # resumable: nothing to redo
    counts = merge_counts(tmp_path / "one")
    np.testing.assert_array_equal(counts, merge_counts(tmp_path / "two"))
    assert counts[ENTRIES.index("red circle")] == counts[ENTRIES.index("circle")] > 100
    a = balance_pool(tmp_path / "one", t=20, seed=5)
    b = balance_pool(tmp_path / "two", t=20, seed=5)
    assert a["kept"] == b["kept"] and abs(a["kept"] - a["expected_kept"]) < 4 * a["expected_sd"] + 1
    for s in range(4):
        name = f"pool-{s:06d}.tar"
        np.testing.assert_array_equal(np.load(tmp_path / "one/balanced/t20-seed5" / f"{name}.npy"),
                                      np.load(tmp_path / "two/balanced/t20-seed5" / f"{name}.npy"))
    other_seed = balance_pool(tmp_path / "one", t=20, seed=6)
    assert other_seed["shards"] != a["shards"]
    table = stats_table(tmp_path / "one", "t20-seed5")
    assert "red circle" in table and "kept" in table
    png = plot_counts(tmp_path / "one", "t20-seed5", tmp_path / "counts.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    written = write_shards(tmp_path / "one", "t20-seed5", tmp_path / "curated")
    assert written["samples"] == a["kept"]
    sizes = json.loads((tmp_path / "curated" / "sizes.json").read_text())
    with tarfile.open(tmp_path / "curated" / "pool-000000.tar") as tar:
        names = tar.getnames()
        first = json.loads(tar.extractfile(next(n for n in names if n.endswith(".matched.json"))).read())
    assert sum(sizes.values()) == a["kept"] and any(n.endswith(".jpg") for n in names) and first

    # re-balancing with another t reads the saved matches only: it works with the pool gone
    for s in range(4):
        (pool / f"pool-{s:06d}.tar").unlink()
    looser = balance_pool(tmp_path / "one", t=1000, seed=5)
    assert looser["kept"] == looser["matched"] == 200  # t above every count keeps every matched sample
    from clipforge.curation import CurationError
    with pytest.raises(CurationError, match="gone"):
        write_shards(tmp_path / "one", "t1000-seed5", tmp_path / "curated2")


def _skewed_shapes(folder, n=240, shards=3, seed=0):
    """Shapes images whose classes follow a steep power law (the first class ~40% of the pool), as shards."""
    from clipforge.training.shapes import (COLORS, POSITIONS, SHAPES, SIZES, TEMPLATES, ShapeSample, class_names,
                                           draw_sample)

    rng = random.Random(seed)
    classes = class_names()
    weights = [1 / (k + 1) ** 1.5 for k in range(len(classes))]
    folder.mkdir(parents=True, exist_ok=True)
    per = n // shards
    for s in range(shards):
        samples = []
        for i in range(per):
            color, shape = rng.choices(classes, weights)[0].split(" ")
            position, size = rng.choice(POSITIONS), rng.choice(SIZES)
            caption = rng.choice(TEMPLATES).format(shape=shape, color=color, position=position, size=size)
            sample = ShapeSample(shape, color, position, size, caption)
            buffer = io.BytesIO()
            draw_sample(sample, 32, rng).save(buffer, "JPEG")
            samples.append((f"{s}{i:05d}", {"jpg": buffer.getvalue(), "txt": caption.encode(),
                                            "cls": str(sample.label).encode()}))
        _tar(folder / f"train-{s:06d}.tar", samples)
    assert set(COLORS) and set(SHAPES)
    return str(folder / f"train-{{000000..{shards - 1:06d}}}.tar"), classes


def test_a_skewed_pool_is_balanced_then_trains(tmp_path):
    from clipforge.config import apply_overrides
    from clipforge.training.config import TrainConfig
    from clipforge.training.loop import train

    spec, classes = _skewed_shapes(tmp_path / "pool")
    meta = tmp_path / "meta.txt"
    meta.write_text("\n".join(classes))  # the 24 class names ("red circle", ...) as entries
    match_pool(spec, meta, tmp_path / "cur", show_progress=False)
    summary = balance_pool(tmp_path / "cur", t=15, seed=0)
    before = np.load(tmp_path / "cur" / "counts.npy")
    after = np.load(tmp_path / "cur" / "balanced" / "t15-seed0" / "counts_after.npy")
    hit = before > 0
    assert before.max() > 80 and before[hit].max() / before[hit].min() > 20  # skewed
    assert after.max() <= 30 and (after[before <= 15] == before[before <= 15]).all()  # head cut near t, tail whole
    assert (after[hit] > 0).all() and summary["kept"] < 0.6 * summary["samples"]
    table = stats_table(tmp_path / "cur", "t15-seed0")
    assert classes[0] in table
    write_shards(tmp_path / "cur", "t15-seed0", tmp_path / "curated")
    cfg = apply_overrides(TrainConfig(), {
        "workdir": str(tmp_path / "run"), "model.name": "tiny-vit", "data.kind": "webdataset",
        "data.train": str(tmp_path / "curated" / "train-{000000..000002}.tar"), "data.batch_size": 8,
        "data.workers": 0, "schedule.steps": 3, "schedule.warmup_steps": 1, "log.progress": False,
        "checkpoint.export_model": False, "threads": 1})
    result = train(cfg)
    assert result.steps == 3 and np.isfinite(result.final_loss)


def test_online_balancing_starts_as_the_offline_set_and_draws_afresh_each_epoch(tmp_path):
    import torch
    import torchvision.transforms as T

    from clipforge.config import ConfigError
    from clipforge.curation.online import OnlineBalance
    from clipforge.data.shards import expand_shards
    from clipforge.training.data import create_train_loader
    from clipforge.training.data.config import DataConfig
    from clipforge.training.shapes import generate_shapes_dataset

    info = generate_shapes_dataset(tmp_path / "shapes", n_train=120, n_val=0, shard_size=40, image_size=32)
    spec = str(tmp_path / "shapes" / info["train"])
    meta = tmp_path / "meta.txt"
    meta.write_text("red\nblue\ngreen\nyellow\ncircle\nsquare\ntriangle\ncross\n")
    match_pool(spec, meta, tmp_path / "cur", show_progress=False)
    summary = balance_pool(tmp_path / "cur", t=8, seed=3)
    online = OnlineBalance(tmp_path / "cur", 8, seed=3)
    urls = expand_shards([spec]).urls
    for url in urls:
        name = url.rsplit("/", 1)[-1]
        np.testing.assert_array_equal(online.mask(url, 0), np.load(tmp_path / "cur/balanced/t8-seed3" / f"{name}.npy"))
    assert any(not np.array_equal(online.mask(u, 0), online.mask(u, 1)) for u in urls)
    assert abs(online.expected_samples(urls) - summary["expected_kept"]) <= 1

    cfg = DataConfig(kind="webdataset", train=spec, batch_size=8, workers=0, shuffle_buffer=0,
                     balance_from=str(tmp_path / "cur"), balance_t=8, seed=3)
    data = create_train_loader(cfg, image_transform=T.Compose([T.Resize(16), T.ToTensor()]),
                               tokenize=lambda captions: torch.tensor([[1, len(c), 2] for c in captions]))
    assert 0 <= data.num_samples - online.expected_samples(urls) < 8  # an epoch: the expected kept count, in batches
    batches = list(data)
    assert batches and data.stats.balanced_out > 0
    with pytest.raises(ConfigError, match="balance_from"):
        DataConfig(kind="csv", train="x.csv", balance_from=str(tmp_path / "cur"))


def test_metadata_builder_and_the_shipped_example(tmp_path):
    from clipforge.cli.main import main
    from clipforge.curation import load_metadata
    from clipforge.curation.build_metadata import EXAMPLE, corpus_entries, example_metadata

    example = example_metadata()
    assert 1500 < len(example) == len(set(example)) and {"goldfish", "red", "circle"} <= set(example)
    assert load_metadata(EXAMPLE).entries == tuple(example)  # the loader reads the file's {"entries": [...]}
    lines = ["the red dog runs.", "the red dog sleeps in New York.", "New York, New York!"] * 3
    words, pairs = corpus_entries(lines, min_count=3, min_pmi=0.5)
    assert {"red", "dog", "New", "York", "the"} <= set(words)
    assert "New York" in pairs and "red dog" in pairs
    frequent = corpus_entries(lines, min_count=4, min_pmi=0.5)[1]
    assert "New York" in frequent and "dog runs" not in frequent  # seen 9 and 3 times
    assert corpus_entries(lines, min_count=3, min_pmi=50)[1] == []  # nothing that associated
    (tmp_path / "titles.tsv").write_text("Golden_Gate_Bridge\t5000\nObscure_page\t3\n")
    assert main(["curate", "metadata", "--example", "--titles", str(tmp_path / "titles.tsv"), "--min-views", "100",
                 "--out", str(tmp_path / "meta.json")]) == 0
    built = load_metadata(tmp_path / "meta.json").entries
    assert "Golden Gate Bridge" in built and "Obscure page" not in built and len(built) == len(example) + 1
    assert json.loads((tmp_path / "meta.json.sources.json").read_text()) == {"example": len(example), "titles": 1}


def test_a_ray_data_job_matches_what_one_process_matches(tmp_path):
    """The shards as a Ray Data job on a local Ray instance (actors with their own automaton)."""
    pool = _pool(tmp_path / "pool")
    spec = str(pool / "pool-{000000..000003}.tar")
    local = match_pool(spec, pool / "meta.json", tmp_path / "local", show_progress=False)
    ray_run = match_pool(spec, pool / "meta.json", tmp_path / "ray", show_progress=False, engine="ray",
                         ray_actors=2)
    assert ray_run["engine"] == "ray" and ray_run["shards"] == 4 and ray_run["samples"] == local["samples"]
    for s in range(4):
        a = np.load(tmp_path / "local/matches" / f"pool-{s:06d}.tar.npz")
        b = np.load(tmp_path / "ray/matches" / f"pool-{s:06d}.tar.npz")
        for key in ("keys", "offsets", "ids", "counts"):
            np.testing.assert_array_equal(a[key], b[key])


def test_per_language_lists_and_thresholds(tmp_path):
    """MetaCLIP 2: one list per language (captions carry a `lang` member), one id space, each list balanced with
    the threshold that keeps the reference language's share of matches."""
    lists = {"en": ["dog", "cat", "red", "big dog"], "fr": ["chien", "chat", "rouge", "dog"], "zh": ["狗", "猫"]}
    (tmp_path / "meta").mkdir()
    for language, entries in lists.items():
        (tmp_path / "meta" / f"{language}.json").write_text(json.dumps(entries, ensure_ascii=False))
    rng = random.Random(0)
    pools = {"en": ["a red dog", "a big dog.", "cat", "red red", "dog"], "fr": ["un chien rouge", "un dog",
             "chat", "chien"], "zh": ["我的狗", "猫和狗"], "de": ["ein Hund"]}
    samples, expected = [], []
    for i in range(400):
        language = rng.choices(list(pools), [6, 3, 1, 0.2])[0]
        caption = rng.choice(pools[language])
        samples.append((f"{i:05d}", {"jpg": b"\xff\xd8", "txt": caption.encode(), "lang": language.encode()}))
        offset = {"en": 0, "fr": 4, "zh": 8}.get(language)
        expected.append([] if offset is None else
                        [offset + j for j in naive_match(caption, lists[language], "metaclip2")])
    (tmp_path / "pool").mkdir()
    _tar(tmp_path / "pool" / "pool-000000.tar", samples[:200])
    _tar(tmp_path / "pool" / "pool-000001.tar", samples[200:])
    totals = match_pool(str(tmp_path / "pool" / "pool-{000000..000001}.tar"), tmp_path / "meta", tmp_path / "cur",
                        rule="metaclip2", show_progress=False)
    assert totals["no_language_list"] == sum(1 for _, s in samples if s["lang"] == b"de") > 0
    got = []
    for name in ("pool-000000.tar", "pool-000001.tar"):
        with np.load(tmp_path / "cur" / "matches" / f"{name}.npz") as m:
            got += [m["ids"][m["offsets"][i]:m["offsets"][i + 1]].tolist() for i in range(len(m["offsets"]) - 1)]
    assert got == expected
    counts = merge_counts(tmp_path / "cur")
    summary = balance_pool(tmp_path / "cur", t=20, seed=0, per_language=True, reference="en")
    thresholds = summary["thresholds"]
    assert thresholds["en"] == 20 and thresholds["fr"] != 20
    share = tail_share(counts[0:4], 20)
    assert abs(tail_share(counts[4:8], thresholds["fr"]) - share) < 1e-6
    assert (tmp_path / "cur" / "balanced" / "t20-seed0-lang" / "summary.json").is_file()
    from clipforge.curation.online import OnlineBalance
    online = OnlineBalance(tmp_path / "cur", 20, seed=0, per_language=True)  # training's data.balance_per_language
    assert online.thresholds == thresholds
    np.testing.assert_array_equal(online.mask(str(tmp_path / "pool" / "pool-000001.tar"), 0),
                                  np.load(tmp_path / "cur/balanced/t20-seed0-lang/pool-000001.tar.npy"))
    from clipforge.curation import CurationError
    with pytest.raises(CurationError, match="reference-language"):
        balance_pool(tmp_path / "cur", t=20, per_language=True, reference="xx")


def test_worker_processes_and_tables_match_like_one_process(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = _pool(tmp_path / "pool")
    spec = str(pool / "pool-{000000..000003}.tar")
    match_pool(spec, pool / "meta.json", tmp_path / "one", show_progress=False)
    totals = match_pool(spec, pool / "meta.json", tmp_path / "two", show_progress=False, workers=2)
    assert totals["shards"] == 4 and totals["samples"] == 202
    for s in range(4):
        a, b = (np.load(tmp_path / d / "matches" / f"pool-{s:06d}.tar.npz") for d in ("one", "two"))
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_array_equal(a["offsets"], b["offsets"])
    captions = ["a red circle, small.", "a blue square", None, "green"]
    pq.write_table(pa.table({"caption": captions, "url": ["u"] * 4}), tmp_path / "pool.parquet")
    (tmp_path / "pool.tsv").write_text("title\tx\n" + "\n".join(f"{c or ''}\t1" for c in captions) + "\n")
    for name in ("pool.parquet", "pool.tsv"):
        got = match_pool(str(tmp_path / name), pool / "meta.json", tmp_path / f"t-{name}", show_progress=False)
        assert got["samples"] == 4 and got["matched"] == 3 and got["no_caption"] == 1, (name, got)
        with np.load(tmp_path / f"t-{name}" / "matches" / f"{name}.npz") as m:
            first = m["ids"][m["offsets"][0]:m["offsets"][1]].tolist()
        assert [ENTRIES[i] for i in first] == ["red", "circle", "red circle"]
