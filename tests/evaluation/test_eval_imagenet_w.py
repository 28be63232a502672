"""ImageNet-W: ImageNet's val folder (the layout clip_benchmark's ``ImageNet(root, split="val")`` reads) with
``imagenet_w``'s watermark drawn after the crop, before normalisation. The preprocessed tensors and the zero-shot
numbers equal clip_benchmark's ``imagenet-w`` for the same tiny model; the mark is really there (the images differ
from imagenet1k's); a missing package or an unusable transform is one line."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipforge.evaluation import benchmark as bench
from clipforge.evaluation import datasets as ds
from clipforge.evaluation import suites, wordnet_ids
from clipforge.evaluation.benchmark import BenchmarkConfig, dataset_root, evaluate, load_datasets
from clipforge.evaluation.watermark import Watermark, watermarked
from benchmark_set_fixtures import make_imagenet_meta, make_wnid_folders
from eval_fixtures import _pattern, patch_clip_benchmark_float

CLASSES = 40  # the first wnids: their place among the folders is their ImageNet class id
WNIDS = wordnet_ids.IMAGENET_1K[:CLASSES]


def make_imagenet_val(root, per_class=2):
    """``root/val/<wnid>/<i>.JPEG`` + torchvision's ``meta.bin``: what clip_benchmark's ImageNet class reads."""
    count = make_wnid_folders(os.path.join(root, "val"), WNIDS, per_class)
    make_imagenet_meta(root, WNIDS, suites.get_classnames("imagenet1k")[:CLASSES])
    return count


def _rgb_transform():
    from torchvision import transforms as T

    from eval_fixtures import transform
    return T.Compose([T.Lambda(lambda image: image.convert("RGB")), *transform().transforms])


def _clip_benchmark(root, tmp_path, transform):
    """clip_benchmark 1.6.2's ``imagenet-w``. It takes its class names from a custom class-name file (the packaged
    names are not read for this set), looked up under the dataset's name: its users pass one like this."""
    from clip_benchmark.datasets.builder import build_dataset
    names = suites.get_classnames("imagenet1k")
    path = tmp_path / "classnames.json"
    path.write_text(json.dumps({"imagenet1k": names, "imagenet-w": names}))
    return build_dataset("imagenet-w", root=str(root), transform=transform, split="test", download=False,
                         custom_classname_file=str(path))


def test_names_folder_and_suites():
    from clip_benchmark.datasets import builder
    spec = suites.resolve("imagenet-w")
    assert spec.task == "classification" and spec.watermark and spec.key == "imagenet1k"
    assert builder.get_dataset_default_task("imagenet-w") == "zeroshot_classification"
    assert dataset_root("data", "imagenet-w") == os.path.join("data", "imagenet1k")  # ImageNet's own folder
    # clip_benchmark's imagenet_robustness collection does not have it: the suite of that name stays its list
    assert "imagenet-w" not in builder.dataset_collection["imagenet_robustness"]
    assert suites.SUITES["imagenet_robustness"] == builder.dataset_collection["imagenet_robustness"]


def test_tensors_and_zero_shot_equal_clip_benchmark(tmp_path, tiny, encoders, monkeypatch):
    """Through the benchmark's loading (``<data root>/imagenet1k``): every preprocessed tensor equals
    clip_benchmark's, differs from imagenet1k's, and the zero-shot metrics are clip_benchmark's."""
    from clip_benchmark.metrics import zeroshot_classification as zc
    patch_clip_benchmark_float(monkeypatch)
    model, tokenizer = tiny
    root = tmp_path / "imagenet1k"
    count = make_imagenet_val(root)
    reference = _clip_benchmark(root, tmp_path, _rgb_transform())
    config = BenchmarkConfig(datasets=("imagenet-w", "imagenet1k"), data_root=str(tmp_path), batch_size=8,
                             num_workers=0)
    [(marked, _), (plain, _)] = load_datasets(config.datasets, config, encoders.transform)
    assert "Watermark" not in repr(encoders.transform)  # copied, not changed: imagenet1k is read without it
    assert len(marked.dataset) == len(reference) == count == 2 * CLASSES
    assert marked.classnames == list(reference.classes) and marked.templates == list(reference.templates)
    for i in range(count):
        ours, label = marked.dataset[i]
        theirs, their_label = reference[i]
        assert torch.equal(ours, theirs) and int(marked.labels[label]) == their_label, i
        assert not torch.equal(ours, plain.dataset[i][0]), i  # the watermark is there

    classnames, templates = reference.classes[:CLASSES], reference.templates[:2]
    ref = zc.evaluate(model, DataLoader(reference, batch_size=8), tokenizer, classnames, templates, "cpu",
                      amp=False)
    marked.classnames, marked.templates = list(classnames), list(templates)
    ours = {k.rpartition("/")[2]: v for k, v in evaluate(encoders, [marked], config).items()}
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert 0 < ref["acc5"] < 1  # numbers two readers could disagree on


def test_clipforge_transforms_draw_the_same_mark(tmp_path):
    """clipforge's preprocessing draws on the cropped PIL image, torchvision's on the tensor after ToTensor (as
    clip_benchmark does): the same numbers, also through the numpy pipeline of the ONNX runtime and in a worker."""
    from torchvision import transforms as T

    from clipforge.transforms import PreprocessConfig, create_eval_array_transform, create_eval_transform
    cfg = PreprocessConfig(image_size=48, interpolation="bilinear")
    image = Image.fromarray(_pattern(2, 5, 48))  # already the crop size: both resizes leave it alone
    ours = watermarked(create_eval_transform(cfg))
    theirs = watermarked(T.Compose([T.CenterCrop(48), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]))
    assert torch.equal(ours(image), theirs(image))
    assert np.array_equal(watermarked(create_eval_array_transform(cfg))(image), ours(image).numpy())
    assert not torch.equal(ours(image), create_eval_transform(cfg)(image))
    sent = pickle.loads(pickle.dumps(ours))  # what a spawned DataLoader worker receives: no font, loaded there
    assert torch.equal(sent(image), ours(image))
    assert isinstance(watermarked(None), Watermark)


def test_raw_images_carry_the_mark(tmp_path):
    """Without a transform the mark is drawn on the image as read: every file differs from imagenet1k's."""
    count = make_imagenet_val(tmp_path, per_class=1)
    marked, plain = ds.load_dataset("imagenet-w", str(tmp_path)), ds.load_dataset("imagenet1k", str(tmp_path))
    assert len(marked.dataset) == len(plain.dataset) == count
    for i in range(count):
        a, b = np.asarray(marked.dataset[i][0]), np.asarray(plain.dataset[i][0])
        assert a.shape == b.shape and (a != b).any(), i


def test_missing_package_is_one_line_before_anything_is_encoded(tmp_path, encoders, monkeypatch, capsys):
    from clipforge.cli.main import main
    make_imagenet_val(tmp_path / "imagenet1k", per_class=1)
    monkeypatch.setitem(sys.modules, "imagenet_w", None)  # not installed
    with pytest.raises(ImportError) as info:
        ds.load_dataset("imagenet-w", str(tmp_path / "imagenet1k"), transform=encoders.transform)
    assert str(info.value) == "imagenet-w draws its watermark with the imagenet_w package: pip install imagenet-w"
    calls = []
    monkeypatch.setattr(bench, "load_model_encoders", lambda spec, device, precision: calls.append(spec) or encoders)
    code = main(["benchmark", "--model", "tiny", "--datasets", "imagenet-w", "--data-root", str(tmp_path),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install imagenet-w" in err
    assert not (tmp_path / "out").exists()
    ds.load_dataset("imagenet1k", str(tmp_path / "imagenet1k"), transform=encoders.transform)  # others unaffected


def test_unusable_transform_and_missing_data_are_one_line_errors(tmp_path, encoders, monkeypatch, capsys):
    from torchvision import transforms as T

    from clipforge.cli.main import main
    make_imagenet_val(tmp_path / "imagenet1k", per_class=1)
    for transform in (T.Compose([T.CenterCrop(32), T.ToTensor()]), lambda image: image):
        with pytest.raises(ValueError) as info:
            ds.load_dataset("imagenet-w", str(tmp_path / "imagenet1k"), transform=transform)
        message = str(info.value)
        assert "\n" not in message and "has no list of steps with a normalisation step" in message
        assert message.startswith("imagenet-w: the watermark goes between the crop and the normalisation")

    empty = tmp_path / "empty"
    monkeypatch.setattr(bench, "load_model_encoders", lambda spec, device, precision: encoders)
    code = main(["benchmark", "--model", "tiny", "--datasets", "imagenet-w", "--data-root", str(empty),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"dataset 'imagenet-w' split 'test' not found at {empty / 'imagenet1k'}" in err
    assert f"{empty / 'imagenet1k'}/val/<wnid>/<image>" in err
