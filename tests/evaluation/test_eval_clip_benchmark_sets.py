"""The datasets clip_benchmark 1.6.2 reads that clipforge added: each tiny copy in its real on-disk layout gives the
same samples, labels, class names and templates through clipforge as through clip_benchmark's ``build_dataset`` on
the same folder, and a few give the same metrics. Bad input is one clear error naming the file and the fix."""
import hashlib
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

from clipforge.evaluation import datasets as ds
from clipforge.evaluation import suites, wordnet_ids
from clipforge.evaluation.benchmark import BenchmarkConfig, dataset_root, evaluate
from benchmark_set_fixtures import (OBJECTNET_FOLDERS, STL10_NAMES, make_cars, make_class_folders,
                                    make_crossmodal_raw, make_fgvc_aircraft, make_food101, make_gtsrb,
                                    make_imagenet_meta, make_mnist, make_multilingual, make_objectnet, make_stl10,
                                    make_sugar_crepe, make_sun397, make_wnid_folders)
from eval_fixtures import patch_clip_benchmark_float


def _digest(image) -> str:
    return hashlib.sha1(image.convert("RGB").tobytes()).hexdigest()


def _ours(loaded) -> list[tuple[str, int]]:
    return sorted((_digest(loaded.dataset[i][0]), int(loaded.labels[i])) for i in range(len(loaded.dataset)))


def _theirs(reference) -> list[tuple[str, int]]:
    return sorted((_digest(image), int(label)) for image, label in (reference[i] for i in range(len(reference))))


def _build(name, root, **kw):
    from clip_benchmark.datasets.builder import build_dataset
    return build_dataset(name, root=str(root), transform=None, split="test", download=False, **kw)


def _same_classification(name, root, expected_samples, **kw):
    """clipforge's load of ``name`` at ``root`` equals clip_benchmark's; returns clipforge's."""
    loaded = ds.load_dataset(name, str(root))
    reference = _build(name.split("/")[0], root, **kw)
    assert len(loaded.dataset) == len(reference) == expected_samples
    assert _ours(loaded) == _theirs(reference)
    assert loaded.classnames == list(reference.classes)
    assert loaded.templates == list(reference.templates)
    return loaded


# ------------------------------------------------------------------------------------- ImageNet family


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r", "imagenet-o"])
def test_imagenet_200_class_variants(tmp_path, name):
    count = make_wnid_folders(tmp_path, wordnet_ids.SUBSETS[name])
    loaded = _same_classification(name, tmp_path, count)
    assert len(loaded.classnames) == 200 and loaded.classnames == suites.get_classnames(name)


def test_imagenet_sketch_imagenet1k_and_babel_imagenet(tmp_path):
    count = make_wnid_folders(tmp_path / "sketch", wordnet_ids.IMAGENET_1K)
    _same_classification("imagenet_sketch", tmp_path / "sketch", count)
    os.rename(tmp_path / "sketch", tmp_path / "val")  # torchvision's ImageNet: val/<wnid>/ + meta.bin
    make_imagenet_meta(tmp_path, wordnet_ids.IMAGENET_1K, suites.get_classnames("imagenet1k"))
    _same_classification("imagenet1k", tmp_path, count)
    # Babel-ImageNet reads the same folder: the classes a language names, in its own words and prompts
    german = _same_classification("babel_imagenet/de", tmp_path, 738, language="de")
    assert german.classnames[1] == "Goldfisch" and "{c}" in german.templates[0]
    _same_classification("babel_imagenet", tmp_path, len(suites.get_classnames("babel_imagenet/en")))
    assert dataset_root("data", "babel_imagenet/ja") == os.path.join("data", "imagenet1k")


def test_partial_variant_keeps_each_wnid_s_label(tmp_path):
    """Two of ImageNet-R's 200 folders: each image keeps its class (its wnid's place), not its folder's position."""
    wnids = wordnet_ids.IMAGENET_R
    make_wnid_folders(tmp_path / "imagenet-r", [wnids[3], wnids[150]], per_class=2)  # the archive's own folder
    loaded = ds.load_dataset("imagenet-r", str(tmp_path))
    assert sorted(loaded.labels.tolist()) == [3, 3, 150, 150] and len(loaded.classnames) == 200


def test_objectnet(tmp_path):
    count = make_objectnet(tmp_path)
    loaded = _same_classification("objectnet", tmp_path, count)
    assert loaded.classnames == ["alarm clock", "banana", "bench"]
    assert len(OBJECTNET_FOLDERS) == 4  # air_freshener maps to no ImageNet class: left out by both


# ----------------------------------------------------------------------------------- torchvision layouts


def test_stanford_cars(tmp_path):
    pytest.importorskip("scipy")
    loaded = _same_classification("cars", tmp_path, make_cars(tmp_path))
    assert loaded.classnames[1] == "Acura RL Sedan 2012" and loaded.templates == suites.get_templates("cars")


def test_fgvc_aircraft(tmp_path):
    _same_classification("fgvc_aircraft", tmp_path, make_fgvc_aircraft(tmp_path))


def test_food101(tmp_path):
    loaded = _same_classification("food101", tmp_path, make_food101(tmp_path))
    assert loaded.classnames == ["apple pie", "baby back ribs", "beignets"]


def test_gtsrb(tmp_path):
    loaded = _same_classification("gtsrb", tmp_path, make_gtsrb(tmp_path))
    assert len(loaded.classnames) == 43


def test_mnist_idx_files(tmp_path):
    loaded = _same_classification("mnist", tmp_path, make_mnist(tmp_path))
    assert loaded.dataset[0][0].size == (28, 28)
    make_mnist(tmp_path / "gz", compress=True)  # the downloaded .gz files, not yet extracted
    assert _ours(ds.load_dataset("mnist", str(tmp_path / "gz"))) == _ours(loaded)


def test_stl10_binaries(tmp_path, monkeypatch):
    from torchvision.datasets import STL10
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)  # torchvision checks the real files' md5
    loaded = _same_classification("stl10", tmp_path, make_stl10(tmp_path))
    assert loaded.classnames == STL10_NAMES and loaded.dataset[0][0].size == (96, 96)


@pytest.mark.filterwarnings("ignore:split argument ignored")
def test_sun397(tmp_path):
    loaded = _same_classification("sun397", tmp_path, make_sun397(tmp_path))
    assert loaded.classnames == ["abbey", "apartment building outdoor", "bakery shop", "beach"]


def test_country211_renderedsst2_fer2013(tmp_path):
    count = make_class_folders(tmp_path / "c" / "country211" / "test", ["AD", "AE", "AF"])
    _same_classification("country211", tmp_path / "c", count)
    count = make_class_folders(tmp_path / "r" / "rendered-sst2" / "test", ["negative", "positive"], ext="png")
    _same_classification("renderedsst2", tmp_path / "r", count)
    emotions = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    count = make_class_folders(tmp_path / "f" / "test", emotions, per_class=1)
    _same_classification("fer2013", tmp_path / "f", count)


# ------------------------------------------------------------------------------ multilingual retrieval


def _same_retrieval(name, root, language, expected):
    from clip_benchmark.datasets.builder import build_dataset
    spec = name if language in ("", None) else f"{name}/{language}"
    loaded = ds.load_dataset(spec, str(root))
    reference = build_dataset(name, root=str(root), transform=None, split="test", download=False,
                              language=language or "en", task="zeroshot_retrieval")
    assert len(loaded.dataset) == len(reference) == expected
    ours = [(_digest(loaded.dataset[i][0]), loaded.captions[i]) for i in range(expected)]
    theirs = [(_digest(image), list(captions)) for image, captions in (reference[i] for i in range(expected))]
    assert ours == theirs and loaded.tasks == ("retrieval",)
    return loaded


@pytest.mark.parametrize("name, language, annotation, images", [
    ("xtd10", "de", "xtd10-de.json", "xtd10/images"),
    ("multilingual_mscoco_captions", "jp", "multilingual_mscoco_captions-jp.json", "multilingual_mscoco/images"),
    ("xtd200", "deu_Latn", "xtd200-deu_Latn.json", "xtd200/images"),
    ("flickr30k-200", "zho_Hans", "flickr30k_200-zho_Hans.json", "flickr30k-200/images"),
    ("crossmodal3600", "ja", "crossmodal3600_captions-ja.json", "xm3600/images"),
])
def test_multilingual_annotation_files(tmp_path, name, language, annotation, images):
    captions = ["Ein Hund läuft", "Zwei Katzen, schlafend", "一只猫", "Ein rotes Auto"]
    make_multilingual(tmp_path, images, annotation, captions)
    loaded = _same_retrieval(name, tmp_path, language, len(captions))
    assert loaded.captions[1] == ["Zwei Katzen, schlafend"]
    assert dataset_root("data", f"{name}/{language}") == os.path.join("data", name)  # one folder, all languages


def test_bare_multilingual_name_is_english_and_a_moved_folder_still_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_multilingual(tmp_path / "data" / "xtd10", "xtd10/images", "xtd10-en.json", ["a dog", "a cat"],
                      relative_to=tmp_path)  # clip_benchmark ran with a relative --dataset_root
    loaded = _same_retrieval("xtd10", "data/xtd10", None, 2)
    second = _digest(loaded.dataset[1][0])
    os.rename(tmp_path / "data", tmp_path / "moved")
    moved = ds.load_dataset("xtd10/en", str(tmp_path / "moved" / "xtd10"))
    assert _digest(moved.dataset[1][0]) == second and moved.captions == loaded.captions == [["a dog"], ["a cat"]]


def test_crossmodal3600_raw_download_needs_no_annotation_file(tmp_path):
    count = make_crossmodal_raw(tmp_path, missing=1)
    raw = ds.load_dataset("crossmodal3600/de", str(tmp_path))  # read from captions.jsonl: first caption each
    assert len(raw.dataset) == count and raw.captions[0] == ["de caption 0 a"]
    written = _same_retrieval("crossmodal3600", tmp_path, "de", count)  # clip_benchmark writes its json here
    assert written.captions == raw.captions
    assert [_digest(raw.dataset[i][0]) for i in range(count)] == [_digest(written.dataset[i][0]) for i in range(count)]


def test_flickr30k_chinese_captions(tmp_path):
    from eval_fixtures import make_captions
    make_captions(tmp_path, n_images=4, captions_per_image=2, name="flickr30k")
    os.rename(tmp_path / "flickr30k_test_karpathy.txt", tmp_path / "flickr30k_test_zh.txt")
    _grouped = ds.load_dataset("flickr30k/zh", str(tmp_path))
    from clip_benchmark.datasets.builder import build_dataset
    reference = build_dataset("flickr30k", root=str(tmp_path), split="test", download=False, language="zh",
                              task="zeroshot_retrieval")
    assert [list(c) for _, c in reference.data] == _grouped.captions
    with pytest.raises(ds.DatasetNotFound, match="flickr30k_test_zh.txt"):
        ds.load_dataset("flickr30k/zh", str(tmp_path / "elsewhere"))


# ------------------------------------------------------------------------------------------ metrics


def _rgb_transform():
    from torchvision import transforms as T

    from eval_fixtures import transform
    return T.Compose([T.Lambda(lambda image: image.convert("RGB")), *transform().transforms])


def _metrics(encoders, loaded, batch_size=8):
    prefix = loaded.name + "/"
    config = BenchmarkConfig(batch_size=batch_size, num_workers=0)
    return {k[len(prefix):]: v for k, v in evaluate(encoders, [loaded], config).items()}


@pytest.mark.parametrize("name", ["imagenet-o", "mnist"])
def test_classification_metrics_match_clip_benchmark(tmp_path, tiny, encoders, monkeypatch, name):
    from clip_benchmark.metrics import zeroshot_classification as zc
    patch_clip_benchmark_float(monkeypatch)
    model, tokenizer = tiny
    if name == "mnist":
        make_mnist(tmp_path, n_test=20)
    else:
        make_wnid_folders(tmp_path, wordnet_ids.IMAGENET_O)
    reference = _build(name, tmp_path)
    reference.transform = _rgb_transform()
    templates = reference.templates[:2]
    ref = zc.evaluate(model, DataLoader(reference, batch_size=8), tokenizer, reference.classes, templates, "cpu",
                      amp=False)
    loaded = ds.load_dataset(name, str(tmp_path), transform=encoders.transform)
    loaded.templates = templates
    ours = _metrics(encoders, loaded)
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_multilingual_retrieval_metrics_match_clip_benchmark(tmp_path, tiny, encoders):
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval as zr
    model, tokenizer = tiny
    captions = [f"Bild Nummer {i} mit {['Hund', 'Katze', 'Auto'][i % 3]}" for i in range(10)]
    make_multilingual(tmp_path, "xtd10/images", "xtd10-de.json", captions)
    reference = build_dataset("xtd10", root=str(tmp_path), transform=_rgb_transform(), split="test", download=False,
                              language="de", task="zeroshot_retrieval")
    ref = zr.evaluate(model, DataLoader(reference, batch_size=4, collate_fn=image_captions_collate_fn), tokenizer,
                      "cpu", amp=False, recall_k_list=[1, 5, 10])
    ours = _metrics(encoders, ds.load_dataset("xtd10/de", str(tmp_path), transform=encoders.transform), 4)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert ours["num_texts"] == 10


def test_sugar_crepe_caption_selection_matches_clip_benchmark(tmp_path, tiny, encoders):
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import image_caption_selection as ics

    from clipforge.evaluation.caption_selection import evaluate_caption_selection, load_sugar_crepe
    model, tokenizer = tiny
    count = make_sugar_crepe(tmp_path)
    reference = _build("sugar_crepe/swap_att", tmp_path, task="image_caption_selection")
    data = load_sugar_crepe("swap_att", str(tmp_path))
    ours = [(_digest(data.dataset[i][0]), data.captions[i]) for i in range(count)]
    assert ours == [(_digest(image), list(texts)) for image, texts in (reference[i] for i in range(len(reference)))]
    reference.transform = _rgb_transform()
    ref = ics.evaluate(model, DataLoader(reference, batch_size=3, collate_fn=image_captions_collate_fn), tokenizer,
                       "cpu", amp=False)
    metrics = evaluate_caption_selection(encoders, load_sugar_crepe("swap_att", str(tmp_path), encoders.transform), 3)
    for key in ("image_acc", "text_acc", "acc"):
        assert metrics[key] == pytest.approx(ref[key], abs=1e-6), key
    assert metrics["num_samples"] == count and metrics["image_acc"] == 1.0


def test_caption_selection_counts_each_instance_once():
    from clipforge.evaluation.caption_selection import selection_metrics
    texts = torch.eye(3).repeat(2, 1, 1)  # (2 instances, 3 captions, D=3)
    images = torch.stack([torch.eye(3), torch.eye(3)[[1, 0, 2]]])  # the second swaps its first two images
    metrics = selection_metrics(images, texts)
    assert metrics == {"image_acc": 0.5, "text_acc": 0.5, "acc": 0.5}


# --------------------------------------------------------------------------------------- bad input


def _one_line(error) -> str:
    message = str(error.value.args[0] if isinstance(error.value, KeyError) else error.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name, expected", [
    ("imagenet-a", "<wnid>/<image>"), ("objectnet", "objectnet-1.0/images/<folder>"),
    ("cars", "stanford_cars/"), ("mnist", "MNIST/raw/"), ("stl10", "stl10_binary/"), ("sun397", "SUN397/"),
    ("gtsrb", "GT-final_test.csv"), ("food101", "food-101/"), ("xtd10/de", "xtd10-de.json"),
    ("crossmodal3600/fr", "xm3600/captions.jsonl"),
])
def test_missing_dataset_names_the_folder_and_the_layout(tmp_path, name, expected):
    root = tmp_path / "nothing_here"
    with pytest.raises(ds.DatasetNotFound) as info:
        ds.load_dataset(name, str(root))
    message = str(info.value)
    assert message.splitlines()[0].startswith(f"dataset '{name}' split 'test' not found at {root}")
    assert expected in message


def test_unknown_language_lists_the_known_ones(tmp_path):
    with pytest.raises(KeyError) as info:
        ds.load_dataset("xtd10/xx", str(tmp_path))
    assert "'xx' is not a language of 'xtd10'" in _one_line(info) and "xtd10/de" in _one_line(info)


def test_broken_annotation_files_are_one_line_errors(tmp_path):
    make_fgvc_aircraft(tmp_path / "a")
    labels = tmp_path / "a" / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    labels.write_text(labels.read_text() + "1234567 Concorde\n")
    with pytest.raises(ValueError) as info:
        ds.load_dataset("fgvc_aircraft", str(tmp_path / "a"))
    assert "line 9: class 'Concorde' is not one of the 4 classes" in _one_line(info)

    make_objectnet(tmp_path / "o")
    (tmp_path / "o" / "objectnet_to_imagenet_1k.json").write_text("{not json")
    with pytest.raises(ValueError, match="objectnet_to_imagenet_1k.json is not valid JSON") as info:
        ds.load_dataset("objectnet", str(tmp_path / "o"))
    assert "objectnet-1.0/mappings" in _one_line(info)

    make_mnist(tmp_path / "m")
    images = tmp_path / "m" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated") as info:
        ds.load_dataset("mnist", str(tmp_path / "m"))
    _one_line(info)

    make_multilingual(tmp_path / "x", "xtd10/images", "xtd10-de.json", ["a", "b"])
    (tmp_path / "x" / "xtd10-de.json").write_text(json.dumps({"image_paths": ["a.jpg"], "annotations": []}))
    with pytest.raises(ValueError, match="not clip_benchmark's annotation file") as info:
        ds.load_dataset("xtd10/de", str(tmp_path / "x"))
    assert "run clip_benchmark once for this language" in _one_line(info)

    from clipforge.evaluation.caption_selection import load_sugar_crepe
    make_sugar_crepe(tmp_path / "s")
    (tmp_path / "s" / "swap_att.json").write_text(json.dumps({"1": {"filename": "x.jpg", "caption": "a"}}))
    with pytest.raises(ValueError, match="swap_att.json is not a SugarCrepe file") as info:
        load_sugar_crepe("swap_att", str(tmp_path / "s"))
    assert "KeyError" in _one_line(info)
    with pytest.raises(ds.DatasetNotFound, match="add_obj.json"):
        load_sugar_crepe("add_obj", str(tmp_path / "s"))


def test_wrong_layout_is_a_one_line_error(tmp_path):
    """A folder of class names where ImageNet-A's wnid folders belong."""
    make_wnid_folders(tmp_path, [wordnet_ids.IMAGENET_A[0], "goldfish"])
    with pytest.raises(ValueError) as info:
        ds.load_dataset("imagenet-a", str(tmp_path))
    assert "goldfish are not among the 200 WordNet ids of 'imagenet-a'" in _one_line(info)


def test_new_sets_are_listed_with_clip_benchmark_s_names_and_keys():
    import clip_benchmark.datasets.builder as builder
    for suite in ("imagenet_robustness", "vtab+"):
        known = [n for n in builder.dataset_collection[suite]]
        assert [n for n in known if n not in suites.DATASETS] == [], suite
    assert "xtd10/de" in suites.DATASETS and "xtd10" in list(suites.DATASETS)
    assert "xtd10/de" not in list(suites.DATASETS)  # listed once, found with any of its languages
    assert suites.DATASETS.get("xtd10/xx") is None and suites.DATASETS["flickr30k/zh"].directory == "flickr30k"
