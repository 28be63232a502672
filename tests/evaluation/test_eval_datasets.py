"""Dataset layouts written by the tests, and the bad-input cases: each a clear error or a reported count."""
import io
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipforge.evaluation import datasets as ds
from clipforge.evaluation import suites
from clipforge.evaluation.benchmark import BenchmarkConfig, evaluate
from eval_fixtures import (NAMES, _pattern, make_captions, make_cifar, make_coco, make_imagefolder, make_voc,
                           transform)


def _loader(loaded, batch_size=8):
    return DataLoader(loaded.dataset, batch_size=batch_size, collate_fn=ds.collate_skipping)


def test_cifar_pickle_layout(tmp_path):
    make_cifar(tmp_path, n_per_class=2)
    loaded = ds.load_dataset("cifar10", str(tmp_path), transform=transform())
    assert len(loaded.dataset) == 20 and loaded.classnames == suites.get_classnames("cifar10")
    images, indices, skipped = next(iter(_loader(loaded, 20)))
    labels = loaded.labels[indices]
    assert images.shape == (20, 3, 32, 32) and labels.tolist() == [i // 2 for i in range(20)] and skipped == 0
    assert loaded.templates == suites.get_templates("cifar10")


def test_imagefolder_numeric_folders_keep_label_ids(tmp_path):
    """ImageNetV2 names folders by label id: '10' must be label 10, not the 3rd folder."""
    for label in (0, 1, 2, 10):
        os.makedirs(tmp_path / "ImageNetV2-matched-frequency" / str(label))
        Image.fromarray(_pattern(label % 6, 0)).save(tmp_path / "ImageNetV2-matched-frequency" / str(label) / "a.jpeg")
    loaded = ds.load_dataset("imagenetv2", str(tmp_path))
    assert sorted(loaded.labels.tolist()) == [0, 1, 2, 10]
    assert len(loaded.classnames) == 1000


def test_user_folder_with_classnames_file(tmp_path):
    make_imagefolder(tmp_path, classnames=[f"a {n}" for n in sorted(NAMES)])
    (tmp_path / "templates.txt").write_text("a picture of {c}\n")
    loaded = ds.load_dataset(f"folder:{tmp_path}", "")
    assert loaded.classnames == [f"a {n}" for n in sorted(NAMES)] and loaded.templates == ["a picture of {c}"]


def test_classnames_file_length_mismatch_is_an_error(tmp_path):
    make_imagefolder(tmp_path, classnames=["cat", "dog"])
    with pytest.raises(ValueError, match="lists 2 class names but .* has 6 class folders"):
        ds.load_dataset(f"folder:{tmp_path}", "")


def test_classnames_shorter_than_cifar_labels_is_an_error(tmp_path):
    make_cifar(tmp_path, n_per_class=1)
    (tmp_path / "classnames.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="lists 3 class names but the data defines 10"):
        ds.load_dataset(f"folder:{tmp_path}", "")


def test_empty_dataset_is_an_error(tmp_path):
    os.makedirs(tmp_path / "test" / "cat")
    os.makedirs(tmp_path / "test" / "dog")
    with pytest.raises(ValueError, match="has no samples"):
        ds.load_dataset(f"folder:{tmp_path}", "")


def test_missing_dataset_says_where_and_which_layout(tmp_path):
    with pytest.raises(ds.DatasetNotFound) as info:
        ds.load_dataset("voc2007", str(tmp_path / "voc"))
    message = str(info.value)
    assert str(tmp_path / "voc") in message and "VOCdevkit/VOC2007" in message and "nshards.txt" in message
    with pytest.raises(KeyError, match="unknown dataset 'cifar11'"):
        ds.load_dataset("cifar11", str(tmp_path))


def test_undecodable_images_are_skipped_and_counted(tmp_path, encoders):
    make_imagefolder(tmp_path, broken=2)
    loaded = ds.load_dataset(f"mine=folder:{tmp_path}", "", transform=encoders.transform)
    m = evaluate(encoders, [loaded], BenchmarkConfig(batch_size=5, num_workers=0))
    assert m["mine/num_skipped"] == 2 and m["mine/num_samples"] == 18


def test_all_images_undecodable_is_an_error(tmp_path, encoders):
    for name in ("cat", "dog"):
        os.makedirs(tmp_path / "test" / name)
        (tmp_path / "test" / name / "x.png").write_bytes(b"junk")
    loaded = ds.load_dataset(f"folder:{tmp_path}", "", transform=encoders.transform)
    with pytest.raises(ValueError, match=r"no images \(2 skipped"):
        evaluate(encoders, [loaded], BenchmarkConfig(num_workers=0))


def test_voc_cropped_and_multilabel(tmp_path):
    make_voc(tmp_path)
    cropped = ds.load_dataset("voc2007", str(tmp_path))
    assert len(cropped.dataset) == 9  # one sample per object box
    image, index = cropped.dataset[0]
    assert image.size == (36, 26) and cropped.classnames[cropped.labels[index]] == "dog"
    multi = ds.load_dataset("voc2007_multilabel", str(tmp_path))
    assert len(multi.dataset) == 5 and multi.multilabel
    hot = multi.labels[2]  # 000003: cat, cat, sofa
    assert [multi.classnames[i] for i in hot.nonzero().flatten()] == ["cat", "sofa"]


def _write_wds(root, split, samples, kind=None, classnames=None):
    os.makedirs(root / split, exist_ok=True)
    with tarfile.open(root / split / "0.tar", "w") as tar:
        for i, (image, label_ext, payload) in enumerate(samples):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            for ext, data in (("png", buffer.getvalue()), (label_ext, payload)):
                info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (root / split / "nshards.txt").write_text("1\n")
    if kind:
        (root / "dataset_type.txt").write_text(kind + "\n")
    if classnames:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n")


def test_webdataset_layout_classification_and_retrieval(tmp_path):
    _write_wds(tmp_path / "cls", "test", [(_pattern(i % 3, i), "cls", str(i % 3).encode()) for i in range(6)],
               classnames=["red", "green", "blue"])
    loaded = ds.load_dataset(f"wds:{tmp_path / 'cls'}", "")
    assert loaded.classnames == ["red", "green", "blue"] and loaded.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert loaded.dataset[4][0].size == (32, 32)
    _write_wds(tmp_path / "ret", "test", [(_pattern(i, i), "txt", f"first {i}\nsecond {i}".encode())
                                          for i in range(3)], kind="retrieval")
    loaded = ds.load_dataset(f"wds:{tmp_path / 'ret'}", "")
    assert loaded.tasks == ("retrieval",) and loaded.captions[1] == ["first 1", "second 1"]


def test_captions_txt_and_coco_json(tmp_path):
    make_captions(tmp_path / "f", n_images=4, captions_per_image=2)
    loaded = ds.load_dataset("flickr8k", str(tmp_path / "f"))
    # captions contain commas: only the first comma after the image name splits
    assert loaded.captions[0] == ["a photo number 0, version 0", "a photo number 0, version 1"]
    make_coco(tmp_path / "c")
    coco = ds.load_dataset("mscoco_captions", str(tmp_path / "c"))
    assert len(coco.dataset) == 4 and len(coco.captions[3]) == 5
    csv_path = tmp_path / "f" / "mine.csv"
    csv_path.write_text("filepath,title\nimg1.jpg,hello\nimg1.jpg,again\n")
    mine = ds.load_dataset(f"captions:{csv_path}", "")
    assert mine.captions == [["hello", "again"]]
    tsv_path = tmp_path / "f" / "mine.tsv"  # a training TSV works as it is, tab-separated, commas in captions
    tsv_path.write_text("filepath\ttitle\nimg1.jpg\thello, world\nimg2.jpg\tagain\n")
    assert ds.load_dataset(f"captions:{tsv_path}", "").captions == [["hello, world"], ["again"]]


def test_download_fetches_into_the_dataset_folder(tmp_path, monkeypatch):
    """The hub download path, with the hub replaced by a folder the test wrote."""
    import huggingface_hub
    source = tmp_path / "hub"
    _write_wds(source, "test", [(_pattern(1, 0), "cls", b"1")], classnames=["a", "b"])
    calls = []

    def fake_snapshot_download(repo_id, repo_type, local_dir, allow_patterns):
        calls.append((repo_id, repo_type))
        shutil.copytree(source, local_dir, dirs_exist_ok=True)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = ds.load_dataset("vtab/pcam", str(tmp_path / "pcam"), allow_download=True)
    assert calls == [("clip-benchmark/wds_vtab-pcam", "dataset")] and len(loaded.dataset) == 1


def test_failed_download_explains_and_shows_layouts(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ds.DatasetNotFound, match="download failed: OSError: network is unreachable"):
        ds.load_dataset("vtab/dmlab", str(tmp_path / "dmlab"), allow_download=True)


def test_collate_keeps_indices_and_counts_skips():
    images, indices, skipped = ds.collate_skipping([(torch.zeros(3, 2, 2), 4), None, (torch.ones(3, 2, 2), 6)])
    assert images.shape == (2, 3, 2, 2) and indices.tolist() == [4, 6] and skipped == 1
    assert np.isclose(images[1].mean().item(), 1.0)
    empty, indices, skipped = ds.collate_skipping([None, None])
    assert len(empty) == 0 and len(indices) == 0 and skipped == 2
