"""vtab/cub and vtab/inaturalist in TensorFlow Datasets' data dir, the only layout clip_benchmark reads them from.

TFDS itself writes the fixtures (the published builders' names, versions and features, three shards per split) and
clip_benchmark 1.6.2 reads them through task_adaptation, both in a subprocess (``tfds_reference.py``) so TensorFlow
never loads into the test workers. clipforge reads the same folder without TensorFlow: the same samples in the same
order, the same pixels (PNG and JPEG, TensorFlow's JPEG decoder reproduced), labels, class names, templates, VTAB
split sizes, and the same zero-shot numbers. The TFRecord/Example reader is checked on records TensorFlow wrote.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clipforge.data import tfrecord
from clipforge.data.images import ImageReadError
from clipforge.evaluation import datasets as ds
from clipforge.evaluation import suites, tfds_layout
from clipforge.evaluation.benchmark import BenchmarkConfig, evaluate, load_datasets
from eval_fixtures import patch_clip_benchmark_float, transform

HERE = os.path.dirname(os.path.abspath(__file__))
REQUESTS = ["vtab/cub:test", "vtab/cub:train", "vtab/cub:val", "vtab/inaturalist:test", "vtab/inaturalist:train"]


def _reference(*args):
    """Runs tfds_reference.py; TensorFlow is a test dependency (the dev extra), so a failure here is a failure."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, os.path.join(HERE, "tfds_reference.py"), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def tfds_data(tmp_path_factory):
    """(data dir written by TFDS, clip_benchmark's reading of every request)."""
    root = tmp_path_factory.mktemp("tfds")
    _reference("make", str(root))
    shutil.rmtree(root / "jpegs")  # the source files: only the prepared records stay, as in a user's data dir
    out = root.parent / "tfds_reference.pkl"
    _reference("read", str(root), str(out), *REQUESTS)
    with open(out, "rb") as f:
        return root, pickle.load(f)


def test_reading_order_is_tfds_interleave(tfds_data):
    """Shards of more than 16 records: TFDS' order is not shard after shard (so the order check above has teeth)."""
    root, reference = tfds_data
    shards = sorted((root / "caltech_birds2011" / "0.1.1").glob("*-test.tfrecord-*"))
    per_shard = [len(list(tfrecord.record_locations(str(p)))) for p in shards]
    assert len(per_shard) == 3 and max(per_shard) > 16
    sequential = [label for p in shards for _, label in tfds_layout._read_shard(str(p), "label")[0]]
    assert sequential != reference["vtab/cub:test"]["labels"]
    assert sorted(sequential) == sorted(reference["vtab/cub:test"]["labels"])
    assert tfds_layout.interleave([[1, 2, 3], [4], [5, 6, 7, 8, 9]], cycle=2, block=2) == [1, 2, 4, 3, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("request_", REQUESTS)
def test_same_samples_as_clip_benchmark(tfds_data, request_):
    root, reference = tfds_data
    name, split = request_.rsplit(":", 1)
    theirs = reference[request_]
    ours = ds.load_dataset(name, str(root), split=split)
    assert len(ours.dataset) == theirs["length"] == len(theirs["labels"]) > 0
    assert ours.labels.tolist() == theirs["labels"]
    assert ours.classnames == theirs["classes"] and ours.templates == theirs["templates"]
    for i, expected in enumerate(theirs["images"]):
        image, _ = ours.dataset[i]
        assert np.array_equal(np.asarray(image), expected), (request_, i)  # JPEGs too: TensorFlow's pixels


def test_split_sizes_and_names(tfds_data):
    """task_adaptation's VTAB splits: 90% of train (rounded to the closest example) to train, the rest to val;
    iNaturalist's test split is TFDS' validation split. CUB has only a class count (names '0'..'199'),
    iNaturalist the 5,089 species names of its names file."""
    root, reference = tfds_data
    assert reference["vtab/cub:train"]["length"] == round(60 * 0.9) == 54
    assert reference["vtab/cub:val"]["length"] == 6 and reference["vtab/cub:test"]["length"] == 50
    assert reference["vtab/inaturalist:test"]["length"] == 52
    assert reference["vtab/cub:test"]["classes"] == [str(i) for i in range(200)]
    assert len(reference["vtab/inaturalist:test"]["classes"]) == 5089
    assert suites.resolve("vtab/cub").layouts[0] == "tfds" and not suites.resolve("vtab/cub").hub_repo
    assert set(tfds_layout.SOURCES) == {"vtab/cub", "vtab/inaturalist"}


class _Listed(list):
    """clip_benchmark's metric reads ``dataloader.dataset.classes``."""

    def __init__(self, items, classes):
        super().__init__(items)
        self.classes = classes


@pytest.mark.parametrize("name", ["vtab/cub", "vtab/inaturalist"])
def test_zero_shot_equal_clip_benchmark(tfds_data, tmp_path, tiny, encoders, monkeypatch, name):
    """Through the benchmark's loading (``<data root>/vtab_cub``, TFDS' data dir inside): clip_benchmark's
    zero-shot metrics on its own reading of the records equal clipforge's."""
    from PIL import Image

    from clip_benchmark.metrics import zeroshot_classification as zc
    patch_clip_benchmark_float(monkeypatch)
    root, reference = tfds_data
    theirs = reference[f"{name}:test"]
    data_root = tmp_path / "data"
    os.makedirs(data_root)
    os.symlink(root, data_root / name.replace("/", "_"))
    config = BenchmarkConfig(datasets=(name,), data_root=str(data_root), batch_size=8, num_workers=0)
    [(loaded, _)] = load_datasets(config.datasets, config, encoders.transform)
    used = sorted(set(theirs["labels"]))  # a few classes and templates keep the tiny model's text side quick
    classnames = [theirs["classes"][c] for c in used]
    templates = theirs["templates"][:2]
    remap = {c: i for i, c in enumerate(used)}
    pairs = [(transform()(Image.fromarray(image)), remap[label]) for image, label in
             zip(theirs["images"], theirs["labels"])]
    ref = zc.evaluate(tiny[0], DataLoader(_Listed(pairs, classnames), batch_size=8), tiny[1], classnames, templates,
                      "cpu", amp=False)
    loaded.labels = torch.tensor([remap[int(label)] for label in loaded.labels])
    loaded.classnames, loaded.templates = classnames, list(templates)
    ours = {k.rpartition("/")[2]: v for k, v in evaluate(encoders, [loaded], config).items()}
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert 0 < ref["acc1"] < 1 or 0 < ref["mean_per_class_recall"] < 1  # numbers two readers could disagree on


def test_example_parser_on_records_tensorflow_wrote(tmp_path):
    """Bytes (empty, binary, UTF-8), floats (float32), int64 (negative, both extremes, multi-byte varints),
    empty lists and a 70 kB value, as TensorFlow serialises them."""
    from tfds_reference import RECORDS
    path = str(tmp_path / "records.tfrecord")
    _reference("records", path)
    got = [tfrecord.parse_example(payload) for _, _, payload in tfrecord.iter_payloads(path)]
    assert len(got) == len(RECORDS)
    for record, parsed in zip(RECORDS, got):
        assert set(parsed) == set(record)
        for key, values in record.items():
            if values and isinstance(values[0], float):
                assert parsed[key] == [float(np.float32(v)) for v in values], key
            else:
                assert parsed[key] == list(values), key
    assert tfrecord.parse_example(next(tfrecord.iter_payloads(path))[2], ("ints",)) == {"ints": RECORDS[0]["ints"]}


def _copy(root, tmp_path, builder="caltech_birds2011"):
    target = tmp_path / "copy"
    shutil.copytree(root / builder, target / builder)
    return target


def test_damaged_shard_is_counted_and_earlier_records_kept(tfds_data, tmp_path):
    root, reference = tfds_data
    copy = _copy(root, tmp_path)
    shard = sorted((copy / "caltech_birds2011" / "0.1.1").glob("*-test.tfrecord-00001-*"))[0]
    offsets = [offset for offset, _ in tfrecord.record_locations(str(shard))]
    assert len(offsets) >= 2
    with open(shard, "r+b") as f:
        f.truncate(offsets[1] + 5)  # the second record cut in its payload
    found = tfds_layout.read_tfds(str(copy), "test", tfds_layout.SOURCES["vtab/cub"])
    assert found.shard_errors == 1
    shards = [[label for _, label in tfds_layout._read_shard(str(p), "label")[0]]
              for p in sorted((root / "caltech_birds2011" / "0.1.1").glob("*-test.tfrecord-*"))]
    kept = tfds_layout.interleave([shards[0], shards[1][:1], shards[2]])  # the cut shard keeps its first record
    assert found.labels.tolist() == kept and len(kept) < len(reference["vtab/cub:test"]["labels"])
    with open(shard, "r+b") as f:  # a garbled length: its CRC catches it
        f.seek(offsets[0] - 12)
        f.write(b"\x7f" * 8)
    with pytest.raises(tfrecord.RecordError, match="fails its CRC"):
        list(tfrecord.record_locations(str(shard)))


def test_classnames_file_overrides_the_ids(tfds_data, tmp_path):
    root, _ = tfds_data
    copy = _copy(root, tmp_path)
    names = [f"bird {i}" for i in range(200)]
    (copy / "classnames.txt").write_text("\n".join(names) + "\n")
    assert ds.load_dataset("vtab/cub", str(copy)).classnames == names
    (copy / "classnames.txt").write_text("albatross\n")
    with pytest.raises(ValueError, match="lists 1 class names but the data defines 200"):
        ds.load_dataset("vtab/cub", str(copy))


def test_version_dir_and_builder_dir_are_read_too(tfds_data):
    root, reference = tfds_data
    for folder in (root / "caltech_birds2011", root / "caltech_birds2011" / "0.1.1"):
        assert ds.load_dataset("vtab/cub", str(folder)).labels.tolist() == reference["vtab/cub:test"]["labels"]


def test_bad_layouts_are_one_line_errors(tfds_data, tmp_path):
    root, _ = tfds_data
    copy = _copy(root, tmp_path)
    version = copy / "caltech_birds2011" / "0.1.1"
    info = json.loads((version / "dataset_info.json").read_text())
    (version / "dataset_info.json").write_text(json.dumps(dict(info, fileFormat="array_record")))
    with pytest.raises(ValueError, match="array_record.*file_format='tfrecord'") as e:
        ds.load_dataset("vtab/cub", str(copy))
    assert "\n" not in str(e.value)
    (version / "dataset_info.json").write_text(json.dumps(dict(info, version="0.2.0")))
    os.rename(version, copy / "caltech_birds2011" / "0.2.0")
    with pytest.raises(ValueError, match="version 0.2.0, but this dataset reads version 0.1.1") as e:
        ds.load_dataset("vtab/cub", str(copy))
    assert "\n" not in str(e.value)
    (copy / "caltech_birds2011" / "0.2.0" / "dataset_info.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        ds.load_dataset("vtab/cub", str(copy / "caltech_birds2011" / "0.2.0"))
    with pytest.raises(ds.DatasetNotFound, match="caltech_birds2011/0.1.1/dataset_info.json"):
        ds.load_dataset("vtab/cub", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="split 'validation' is not one of train, val, trainval, test"):
        tfds_layout.read_tfds(str(root), "validation", tfds_layout.SOURCES["vtab/cub"])


def test_record_unreadable_after_loading_is_skipped(tfds_data, tmp_path):
    """A shard cut after the dataset was indexed (or an image that does not decode): the sample reads as None,
    which the benchmark's collate skips and counts, as for any unreadable image."""
    root, _ = tfds_data
    copy = _copy(root, tmp_path)
    loaded = ds.load_dataset("vtab/cub", str(copy))
    path, offset, length = loaded.dataset.samples[-1]
    assert loaded.dataset[len(loaded.dataset) - 1] is not None
    with open(path, "r+b") as f:
        f.truncate(offset + length // 2)
    assert loaded.dataset[len(loaded.dataset) - 1] is None
    with pytest.raises(ImageReadError, match="record at byte"):
        tfds_layout.RecordImages("image")((path, offset, length))
