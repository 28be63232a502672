"""Winoground through ``clipforge benchmark``: the Hugging Face ``datasets`` cache clip_benchmark's
``load_dataset("facebook/winoground", cache_dir=root)`` leaves is read without ``datasets`` (one Arrow file or
shards, image bytes, EXIF orientation), and the text / image / group scores equal clip_benchmark's
``image_caption_selection`` on the same cache for the same tiny model. Bad input is one line naming the fix."""
import argparse
import csv
import hashlib
import io
import json
import os
import pickle
import shutil
import sys

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from clipforge.evaluation import benchmark as bench
from clipforge.evaluation import datasets as ds
from clipforge.evaluation import hf_cache, suites, tables
from clipforge.evaluation.benchmark import BenchmarkConfig, dataset_root, evaluate, load_datasets
from clipforge.evaluation.caption_selection import evaluate_caption_selection, load_winoground
from eval_fixtures import _pattern

REPO = "facebook/winoground"
WORDS = ["a dog chases a cat", "a cat chases a dog", "red car by a tree", "a tree by a red car", "two boats",
         "a boat and a house", "the sky over water", "water under the sky", "a bird on a hill", "a hill under a bird"]


def _png(array, mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).convert(mode).save(out, "PNG")
    return out.getvalue()


def _rotated_jpeg(array) -> bytes:
    """A JPEG whose EXIF orientation says 'turn 90 degrees' (``datasets`` decodes it upright)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def _image(i: int, j: int) -> bytes:
    array = _pattern((i + 3 * j) % 6, 10 * i + j, 40)[:, : 28 + 4 * j]  # not square: the crop matters
    array = 255 - array if j else array  # far apart pairs: the tiny random model tells some of them apart
    if (i, j) == (1, 0):
        return _rotated_jpeg(array)
    return _png(array, "RGBA" if (i, j) == (2, 1) else "RGB")


def _rows(n: int, broken=()) -> dict:
    rows = {"id": [], "image_0": [], "image_1": [], "caption_0": [], "caption_1": [], "tag": []}
    for i in range(n):
        rows["id"].append(i)
        for j in range(2):
            data = b"not an image" if (i, j) in broken else _image(i, j)
            rows[f"image_{j}"].append({"bytes": data, "path": None})
            rows[f"caption_{j}"].append(f"{WORDS[(2 * i + j) % 10]} ({i})")
        rows["tag"].append(["Object", "Relation", "Both"][i % 3])
    return rows


def make_winoground_cache(root, n=12, shard_size=None, commit="9f1c0ffee", broken=(), columns=None):
    """What ``load_dataset("facebook/winoground", cache_dir=root)`` leaves in ``root``, written by ``datasets``
    itself: a hub dataset is prepared by the Parquet builder from the repository's Parquet files, which is what
    runs here on a local Parquet file (``writer_batch_size=1`` and ``shard_size`` give several Arrow shards).
    ``datasets`` refuses local data files for a builder named after a hub repository, so the builder writes under
    ``root/_build`` and its folder is moved to the repository's place, ``facebook___winoground/default/0.0.0/<commit>``
    (the folder name is all that differs)."""
    import datasets
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig

    features = datasets.Features({"id": datasets.Value("int32"), "image_0": datasets.Image(),
                                  "image_1": datasets.Image(), "caption_0": datasets.Value("string"),
                                  "caption_1": datasets.Value("string"), "tag": datasets.Value("string")})
    rows = _rows(n, broken)
    if columns is not None:  # another dataset's cache in Winoground's place
        rows, features = {k: rows[k] for k in columns}, datasets.Features({k: features[k] for k in columns})
    source = os.path.join(root, "_source", commit)
    os.makedirs(source, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(os.path.join(source, "test-00000-of-00001.parquet"))
    files = DataFilesDict.from_patterns({"test": [os.path.join(source, "*.parquet")]})

    class HubParquet(Parquet):
        BUILDER_CONFIGS = [ParquetConfig(name="default", data_files=files, batch_size=1)]

    builder = HubParquet(cache_dir=os.path.join(root, "_build"), dataset_name="winoground", hash=commit,
                         config_name="default", writer_batch_size=1)
    builder.download_and_prepare(max_shard_size=shard_size)
    target = os.path.join(hf_cache.cache_folder(str(root), REPO), "default", "0.0.0", commit)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(builder.cache_dir, target)
    shutil.rmtree(os.path.join(root, "_build"))
    shutil.rmtree(os.path.join(root, "_source"))
    return target


@pytest.fixture
def offline(monkeypatch):
    """``datasets`` and the hub client offline (they read these settings when imported: set both ways)."""
    import datasets
    import huggingface_hub.constants
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _digest(image) -> str:
    return hashlib.sha1(image.convert("RGB").tobytes()).hexdigest()


def _rgb_transform():
    from torchvision import transforms as T

    from eval_fixtures import transform
    return T.Compose([T.Lambda(lambda image: image.convert("RGB")), *transform().transforms])


def _reference(model, tokenizer, root, batch_size=5):
    """clip_benchmark's own loader (through ``datasets``) and metric on the cache clipforge read."""
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import image_caption_selection as ics
    reference = build_dataset("winoground", root=str(root), transform=_rgb_transform(), split="test", download=False,
                              task="image_caption_selection")
    loader = DataLoader(reference, batch_size=batch_size, collate_fn=image_captions_collate_fn)
    return ics.evaluate(model, loader, tokenizer, "cpu", amp=False), len(reference)


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("shard_size", [None, 6000])
def test_cache_reads_as_datasets_reads_it(tmp_path, offline, shard_size):
    """Same rows, captions and decoded pixels as ``datasets.load_dataset`` on the cache, one file or shards."""
    import datasets
    folder = make_winoground_cache(tmp_path, n=7, shard_size=shard_size)
    arrows = sorted(n for n in os.listdir(folder) if n.endswith(".arrow"))
    if shard_size is None:
        assert arrows == ["winoground-test.arrow"]
    else:  # datasets' shard names, listed by shard_lengths in dataset_info.json
        assert len(arrows) > 1 and arrows[0] == f"winoground-test-00000-of-{len(arrows):05d}.arrow"
    theirs = datasets.load_dataset(REPO, cache_dir=str(tmp_path))["test"]
    ours = load_winoground(str(tmp_path))
    assert len(ours.dataset) == 2 * len(theirs) == 14 and ours.images_per_instance == 2
    assert ours.captions == [[row["caption_0"], row["caption_1"]] for row in theirs]
    assert [_digest(ours.dataset[k][0]) for k in range(len(ours.dataset))] == \
        [_digest(row[f"image_{j}"]) for row in theirs for j in range(2)]
    upright = ours.dataset[2][0]  # instance 1's first image: EXIF orientation 6, 28x40 stored
    assert upright.size == (40, 28) and upright.size == theirs[1]["image_0"].size
    assert ours.source == os.path.abspath(folder)


def test_read_without_datasets_and_sent_to_a_worker_without_open_files(tmp_path, monkeypatch):
    make_winoground_cache(tmp_path, n=3, shard_size=6000)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: clipforge reads the Arrow files itself
    data = load_winoground(str(tmp_path))
    assert data.dataset.read._tables  # opened while listing the rows
    sent = pickle.loads(pickle.dumps(data.dataset.read))  # what a spawned DataLoader worker receives
    assert sent._tables == {} and sent.files == data.dataset.read.files
    assert [_digest(sent(s)) for s in data.dataset.samples] == [_digest(data.dataset[k][0]) for k in range(6)]


def test_newest_prepared_copy_is_read_as_datasets_picks_it(tmp_path, offline):
    import datasets
    old = make_winoground_cache(tmp_path, n=3, commit="1111aaaa")
    new = make_winoground_cache(tmp_path, n=5, commit="2222bbbb")
    os.utime(old, (2_000_000_000, 2_000_000_000))  # the first commit modified last: datasets takes it
    assert len(datasets.load_dataset(REPO, cache_dir=str(tmp_path))["test"]) == 3
    assert len(load_winoground(str(tmp_path)).captions) == 3
    os.utime(new, (2_100_000_000, 2_100_000_000))
    assert len(load_winoground(str(tmp_path)).captions) == 5


def test_names_suite_and_task(tmp_path):
    from clip_benchmark.datasets import builder
    spec = suites.resolve("winoground")
    assert spec.task == "caption_selection" and builder.get_dataset_default_task("winoground") == \
        "image_caption_selection"
    assert "winoground" in suites.DATASETS and dataset_root(str(tmp_path), "winoground") == \
        os.path.join(str(tmp_path), "winoground")
    assert suites.expand(["compositionality"]) == ["winoground"] + suites.SUITES["sugar_crepe"]
    assert all("winoground" not in names for names in builder.dataset_collection.values())  # so: clipforge's suite
    with pytest.raises(ValueError, match="image-caption selection set: read it with evaluation.caption_selection"):
        ds.load_dataset("winoground", str(tmp_path))  # the classification/retrieval loader points to the right one


# ----------------------------------------------------------------------------------------------- metrics


def _args(*argv):
    from clipforge.cli import benchmark as verb
    parser = argparse.ArgumentParser()
    verb.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_end_to_end_equals_clip_benchmark(tmp_path, tiny, encoders, offline, monkeypatch, capsys):
    """``clipforge benchmark --datasets winoground --data-root R`` (no --tasks): clip_benchmark's text, image and
    group scores for the same tiny model, the selection table and its CSV."""
    from clipforge.cli import benchmark as verb
    model, tokenizer = tiny
    root = tmp_path / "data" / "winoground"
    make_winoground_cache(root, n=30, shard_size=40000)
    monkeypatch.setattr(bench, "load_model_encoders", lambda spec, device, precision: encoders)
    args = _args("--model", "tiny::one", "--datasets", "winoground", "--data-root", str(tmp_path / "data"),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--set", "num_workers=0", "batch_size=5",
                 "--quiet")
    assert verb.run(args) == 0
    results = json.load(open(tmp_path / "out" / "results.json"))["tiny::one"]
    ref, count = _reference(model, tokenizer, root)
    assert count == 30
    for key in ("text_acc", "image_acc", "acc"):
        assert results[f"winoground/{key}"] == pytest.approx(ref[key], abs=1e-6), key
    assert results["winoground/num_samples"] == 30 and results["winoground/num_skipped"] == 0
    assert all(0 < ref[key] < 1 for key in ("text_acc", "image_acc", "acc"))  # none trivially 0 or 1
    printed = capsys.readouterr().out
    assert "## Image-caption selection (Winoground group score)" in printed and "| tiny::one" in printed
    rows = list(csv.DictReader(open(tmp_path / "out" / "caption_selection.csv")))
    assert list(rows[0]) == ["model_fullname", "winoground"]
    assert float(rows[0]["winoground"]) == pytest.approx(results["winoground/acc"], abs=5e-4)


def test_worker_processes_cache_and_the_trainer_hook(tmp_path, tiny, encoders, offline):
    """Two DataLoader workers (the reader is sent to them without its open files), the feature cache, and
    ``evaluate`` on a loaded set: the same numbers as clip_benchmark."""
    model, tokenizer = tiny
    make_winoground_cache(tmp_path / "winoground", n=30)
    ref, _ = _reference(model, tokenizer, tmp_path / "winoground", batch_size=7)
    config = BenchmarkConfig(datasets=("winoground",), data_root=str(tmp_path), num_workers=2, batch_size=4,
                             cache_dir=str(tmp_path / "cache"))
    [(loaded, train)] = load_datasets(config.datasets, config, encoders.transform)
    assert train is None and loaded.name == "winoground"
    first = evaluate(encoders, [loaded], config)
    second = evaluate(encoders, [loaded], config)  # from the cache
    assert first == second and len(os.listdir(tmp_path / "cache")) == 1
    for key in ("text_acc", "image_acc", "acc"):
        assert first[f"winoground/{key}"] == pytest.approx(ref[key], abs=1e-6), key


def test_undecodable_image_drops_its_instance_and_is_counted(tmp_path, encoders):
    make_winoground_cache(tmp_path, n=6, broken={(3, 1)})
    data = load_winoground(str(tmp_path), encoders.transform)
    assert data.dataset[7] is None  # instance 3's second image
    metrics = evaluate_caption_selection(encoders, data, batch_size=4)
    assert metrics["num_samples"] == 5 and metrics["num_skipped"] == 1
    whole = [0, 1, 2, 4, 5]  # the same numbers as the five whole instances alone
    kept = load_winoground(str(tmp_path), encoders.transform)
    kept.dataset.samples = [kept.dataset.samples[2 * i + j] for i in whole for j in range(2)]
    kept.captions = [kept.captions[i] for i in whole]
    assert evaluate_caption_selection(encoders, kept, batch_size=4) == {**metrics, "num_skipped": 0}


def test_table_title_names_both_measures():
    results = {"A": {"winoground/acc": 0.25, "winoground/text_acc": 0.5, "sugar_crepe/swap_obj/acc": 0.5,
                     "sugar_crepe/swap_obj/text_acc": 0.5}}
    [table] = tables.build_tables(results)
    assert table.title == "Image-caption selection (SugarCrepe accuracy, Winoground group score)"
    assert table.columns == ["model_fullname", "winoground", "sugar_crepe/swap_obj"]


# --------------------------------------------------------------------------------------------- bad input


def test_missing_cache_is_one_line_naming_the_folder_and_the_fix(tmp_path, encoders, monkeypatch, capsys):
    from clipforge.cli.main import main
    root = tmp_path / "data"
    config = BenchmarkConfig(datasets=("winoground",), data_root=str(root), num_workers=0)
    with pytest.raises(ds.DatasetNotFound) as info:
        load_datasets(config.datasets, config, None)
    message = _one_line(info)
    expected = os.path.join(str(root), "winoground", "facebook___winoground")
    assert message.startswith("dataset 'winoground': ") and f"{expected} not found" in message
    assert f'load_dataset("facebook/winoground", cache_dir="{root / "winoground"}")' in message

    monkeypatch.setattr(bench, "load_model_encoders", lambda spec, device, precision: encoders)
    code = main(["benchmark", "--model", "tiny", "--datasets", "winoground", "--data-root", str(root),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err
    assert not (tmp_path / "out").exists()

    only_classification = BenchmarkConfig(tasks=("zeroshot_classification",), datasets=("winoground",),
                                          data_root=str(root))
    assert load_datasets(only_classification.datasets, only_classification, None) == []  # not even looked for


def test_wrong_layouts_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "a" / "facebook___winoground" / "default").mkdir(parents=True)  # an interrupted download
    with pytest.raises(ds.DatasetNotFound, match="has no prepared copy") as info:
        load_winoground(str(tmp_path / "a"))
    _one_line(info)

    folder = make_winoground_cache(tmp_path / "b", n=5, shard_size=6000)
    os.remove(os.path.join(folder, sorted(n for n in os.listdir(folder) if n.endswith(".arrow"))[1]))
    with pytest.raises(ds.DatasetNotFound, match=r"winoground-test-00001-of-000\d\d\.arrow is missing") as info:
        load_winoground(str(tmp_path / "b"))
    assert f"delete {folder}" in _one_line(info)

    make_winoground_cache(tmp_path / "c", n=3, columns=("id", "image_0", "caption_0"))
    with pytest.raises(ValueError, match="has no column\\(s\\) image_1, caption_1") as info:
        load_winoground(str(tmp_path / "c"))
    _one_line(info)

    with pytest.raises(ValueError, match="has no 'train' split \\(it has: test\\)") as info:
        load_winoground(str(tmp_path / "c"), split="train")
    _one_line(info)

    with open(os.path.join(make_winoground_cache(tmp_path / "d", n=2), "winoground-test.arrow"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="is not a readable Arrow stream") as info:
        load_winoground(str(tmp_path / "d"))
    _one_line(info)

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # not installed
    with pytest.raises(ImportError) as info:
        load_winoground(str(tmp_path / "c"))
    assert "pip install pyarrow" in _one_line(info) and "clipforge[search]" in str(info.value)

