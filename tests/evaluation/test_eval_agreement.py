"""Same tiny open_clip model, same files, same templates: clipforge's metrics equal clip_benchmark's."""
import pytest
import torch
from torch.utils.data import DataLoader

from clipforge.evaluation import datasets as ds
from clipforge.evaluation import suites
from clipforge.evaluation.benchmark import BenchmarkConfig, evaluate
from eval_fixtures import (NAMES, _pattern, make_captions, make_imagefolder, make_voc, patch_clip_benchmark_float,
                           transform)


def _captions_collate(batch):
    # clip_benchmark's batch shape for caption datasets: stacked images, a tuple of caption lists
    images, captions = zip(*batch)
    return torch.stack(images), captions


def _ours(encoders, loaded, batch_size=8, ties="reference"):
    """clipforge's metrics of one loaded dataset, without the '<dataset>/' prefix."""
    config = BenchmarkConfig(batch_size=batch_size, num_workers=0, ties=ties)
    prefix = loaded.name + "/"
    return {k[len(prefix):]: v for k, v in evaluate(encoders, [loaded], config).items()}


def test_classification_matches_clip_benchmark(tmp_path, tiny, encoders, monkeypatch):
    from clip_benchmark.metrics import zeroshot_classification as zc
    from torchvision.datasets import ImageFolder
    patch_clip_benchmark_float(monkeypatch)
    model, tokenizer = tiny
    make_imagefolder(tmp_path, n_per_class=4)
    templates = suites.get_templates("cifar10")[:4]
    names = sorted(NAMES)  # ImageFolder's class order
    reference_set = ImageFolder(str(tmp_path / "test"), transform=transform())
    reference_set.classes = names
    ref = zc.evaluate(model, DataLoader(reference_set, batch_size=8), tokenizer, names, templates, "cpu", amp=False)
    loaded = ds.load_dataset(f"folder:{tmp_path}", "", transform=encoders.transform)
    assert loaded.classnames == names
    loaded.templates = templates
    ours = _ours(encoders, loaded)
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert ours["num_samples"] == 24 and ours["num_skipped"] == 0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("multilabel", [False, True])
def test_voc_matches_clip_benchmark(tmp_path, tiny, encoders, monkeypatch, multilabel):
    from clip_benchmark.datasets import voc2007
    from clip_benchmark.metrics import zeroshot_classification as zc
    patch_clip_benchmark_float(monkeypatch)
    model, tokenizer = tiny
    make_voc(tmp_path)
    cls = voc2007.PASCALVoc2007 if multilabel else voc2007.PASCALVoc2007Cropped
    reference_set = cls(str(tmp_path), "test", transform=transform(), download=False)
    names, templates = suites.get_classnames("voc2007"), suites.get_templates("voc2007")
    ref = zc.evaluate(model, DataLoader(reference_set, batch_size=4), tokenizer, names, templates, "cpu", amp=False)
    name = "voc2007_multilabel" if multilabel else "voc2007"
    loaded = ds.load_dataset(name, str(tmp_path), transform=encoders.transform)
    assert len(loaded.dataset) == len(reference_set)
    ours = _ours(encoders, loaded, 4)
    keys = ["mean_average_precision"] if multilabel else ["acc1", "acc5", "mean_per_class_recall"]
    for key in keys:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_retrieval_matches_clip_benchmark(tmp_path, tiny, encoders):
    from clip_benchmark.datasets.flickr import Flickr
    from clip_benchmark.metrics import zeroshot_retrieval as zr
    model, tokenizer = tiny
    make_captions(tmp_path, n_images=12, captions_per_image=5)
    annotation = str(tmp_path / "flickr8k_test_karpathy.txt")
    reference_set = Flickr(str(tmp_path), annotation, transform=transform())
    ref = zr.evaluate(model, DataLoader(reference_set, batch_size=5, collate_fn=_captions_collate),
                      tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    loaded = ds.load_dataset("flickr8k", str(tmp_path), transform=encoders.transform)
    ours = _ours(encoders, loaded, 5)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert ours["num_samples"] == 12 and ours["num_texts"] == 60


def test_retrieval_with_duplicate_captions_is_close_to_clip_benchmark(tmp_path, tiny, encoders):
    """COCO has exact duplicate captions and template-made captions repeat: tied scores. The default rule gives
    clip_benchmark's numbers up to how float noise breaks exact ties (embeddings of one caption computed in other
    batches differ in the last bit; test_eval_metrics checks the rule itself on identical embeddings); the
    pessimistic rule counts every tie as a miss, so it is lower: the gap the issue reported (0.003 vs 0.025)."""
    from PIL import Image

    from clip_benchmark.datasets.flickr import Flickr
    from clip_benchmark.metrics import zeroshot_retrieval as zr
    model, tokenizer = tiny
    lines = ["image,caption"]
    for i in range(12):
        Image.fromarray(_pattern(i % 6, i)).save(tmp_path / f"img{i}.jpg")
        lines += [f"img{i}.jpg,a photo of a {NAMES[i % 6]}" for _ in range(2)] + [f"img{i}.jpg,a picture"]
    (tmp_path / "flickr8k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    reference_set = Flickr(str(tmp_path), str(tmp_path / "flickr8k_test_karpathy.txt"), transform=transform())
    ref = zr.evaluate(model, DataLoader(reference_set, batch_size=4, collate_fn=_captions_collate),
                      tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    loaded = ds.load_dataset("flickr8k", str(tmp_path), transform=encoders.transform)
    ours = _ours(encoders, loaded, 4)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=0.1), key
    strict = _ours(encoders, loaded, 4, ties="pessimistic")
    assert strict["text_retrieval_recall@1"] < ours["text_retrieval_recall@1"]
    assert strict["text_retrieval_recall@1"] < ref["text_retrieval_recall@1"]


def test_templates_and_classnames_are_clip_benchmark_s():
    import json
    import os

    import clip_benchmark.datasets as cbd
    folder = os.path.dirname(cbd.__file__)
    with open(os.path.join(folder, "en_zeroshot_classification_templates.json")) as f:
        ref_templates = json.load(f)
    with open(os.path.join(folder, "en_classnames.json")) as f:
        ref_names = json.load(f)
    assert suites.get_templates("imagenet1k") == ref_templates["imagenet1k"] and len(ref_templates["imagenet1k"]) == 80
    assert len(suites.get_templates("imagenet1k_selected")) == 7
    assert suites.get_templates("vtab/pcam") == ref_templates["pcam"]
    assert suites.get_classnames("imagenetv2") == ref_names["imagenet1k"]
    assert suites.get_classnames("vtab/caltech101") == ref_names["caltech101_vtab"]
    assert suites.get_classnames("vtab/clevr_count_all") == ref_names["clevr_count_all"]
    for name in suites.SUITES["classification"]:
        assert suites.get_classnames(name) and suites.get_templates(name), name


def test_per_class_prompt_dict_equals_the_formatted_templates(encoders):
    from clipforge.evaluation.zeroshot import build_classifier
    names, templates = ["cat", "dog", "car"], ["a photo of a {c}.", "a drawing of a {}."]
    as_list = build_classifier(encoders.encode_text, encoders.tokenize, names, templates)
    as_dict = build_classifier(encoders.encode_text, encoders.tokenize, names,
                               {n: [f"a photo of a {n}.", f"a drawing of a {n}."] for n in names})
    assert as_list.shape == (16, 3) and torch.allclose(as_list, as_dict, atol=1e-6)
    assert torch.allclose(as_list.norm(dim=0), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="no prompts for"):
        build_classifier(encoders.encode_text, encoders.tokenize, names, {"cat": ["x"]})
