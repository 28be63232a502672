"""The user's path end to end: CSV data -> `clipforge train` with evaluation sets -> metrics in the log ->
`clipforge benchmark --model local-dir:RUN/model` -> create_model and open_clip's own loader read the same folder
and give the same features. Also the regression that once scored a checkpoint at the wrong image size."""
import json
import random

import pytest
import torch
from PIL import Image

import clipforge
from clipforge.cli.main import main
from clipforge.models.factory import ModelLoadError
from clipforge.training.logging import read_records
from clipforge.training.shapes import class_names, draw_sample, sample_attributes
from references import require

IMAGE_SIZE = 48  # not tiny-vit's preset size: the model folder must carry it


def _write_images(folder, count, seed):
    """Shapes images with captions and labels, as a user's own folder of files."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        sample = sample_attributes(rng)
        draw_sample(sample, 64, rng).save(folder / f"{i:04d}.png")
        rows.append((f"{folder.name}/{i:04d}.png", sample.caption, sample.label))
    return rows


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    train = _write_images(root / "train", 96, seed=1)
    (root / "train.tsv").write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c, _ in train))
    val = _write_images(root / "val", 24, seed=2)
    (root / "val.csv").write_text("image,caption\n" + "".join(f"{p.split('/')[1]},\"{c}\"\n" for p, c, _ in val))
    (root / "val" / "val.csv").write_text((root / "val.csv").read_text())
    names = class_names()
    classes = root / "classes" / "test"
    for path, _, label in val:
        (classes / f"{label:02d}").mkdir(parents=True, exist_ok=True)
        Image.open(root / path).save(classes / f"{label:02d}" / path.split("/")[1])
    present = sorted({label for _, _, label in val})
    (root / "classes" / "classnames.txt").write_text("\n".join(names[i] for i in present) + "\n")
    for index, label in enumerate(present):  # folders named 0..K-1 in sorted order keep the labels dense
        (classes / f"{label:02d}").rename(classes / f"c{index:02d}")
    return root


@pytest.fixture(scope="module")
def trained(user_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    datasets = (f"retr=captions:{user_data / 'val' / 'val.csv'}", f"cls=folder:{user_data / 'classes'}")
    argv = ["train", "--workdir", str(run), "--set", "model.name='tiny-vit'", f"model.image_size={IMAGE_SIZE}",
            "data.kind='csv'", f"data.train='{user_data / 'train.tsv'}'", "data.batch_size=16",
            "schedule.steps=8", "schedule.warmup_steps=1", "checkpoint.every_steps=4", "log.progress=false",
            f"eval.datasets={datasets!r}", "eval.every_steps=4", "threads=1", "optim.lr=2e-3"]
    assert main(argv) == 0
    return run, datasets


def test_training_logs_evaluations_and_writes_a_model_folder(trained):
    run, _ = trained
    records = read_records(run / "metrics.jsonl")
    evals = {r["step"]: r for r in records if any(k.startswith("eval/") for k in r)}
    assert sorted(evals) == [4, 8]
    final = evals[8]
    for key in ("eval/cls/acc1", "eval/retr/image_retrieval_recall@5", "eval/retr/text_retrieval_recall@1"):
        assert 0.0 <= final[key] <= 1.0
    assert sorted(p.name for p in (run / "model").iterdir()) == ["README.md", "open_clip_config.json",
                                                                 "open_clip_model.safetensors"]


def test_benchmark_of_the_model_folder_gives_the_training_numbers(trained, tmp_path, capsys):
    run, datasets = trained
    final = [r for r in read_records(run / "metrics.jsonl") if "eval/cls/acc1" in r][-1]
    argv = ["benchmark", "--model", f"local-dir:{run / 'model'}", "--datasets", *datasets, "--output",
            str(tmp_path), "--quiet", "--set", "num_workers=0"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())[f"local-dir:{run / 'model'}"]
    for key in ("cls/acc1", "cls/acc5", "retr/image_retrieval_recall@5", "retr/text_retrieval_recall@5"):
        assert results[key] == pytest.approx(final[f"eval/{key}"], abs=1e-6), key


def test_a_checkpoint_is_built_at_the_size_it_was_trained_at(trained, tmp_path):
    """Regression: `tiny-vit::run/checkpoints/step_N.pt` once interpolated a 48px checkpoint to the preset's 32px
    and scored it silently lower. A checkpoint that declares its architecture is built as declared."""
    run, datasets = trained
    final = [r for r in read_records(run / "metrics.jsonl") if "eval/cls/acc1" in r][-1]
    checkpoint = run / "checkpoints" / "step_00000008.pt"
    model = clipforge.create_model(f"tiny-vit::{checkpoint}")
    assert model.config.vision.image_size == IMAGE_SIZE and model.preprocess_config.image_size == IMAGE_SIZE
    assert main(["benchmark", "--model", f"tiny-vit::{checkpoint}", "--datasets", datasets[1], "--output",
                 str(tmp_path), "--quiet", "--set", "num_workers=0"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())[f"tiny-vit::{checkpoint}"]
    assert results["cls/acc1"] == pytest.approx(final["eval/cls/acc1"], abs=1e-6)
    with pytest.raises(ModelLoadError, match="made from 'tiny-vit'.*differs from 'tiny-resnet'"):
        clipforge.create_model(f"tiny-resnet::{checkpoint}")
    smaller = clipforge.create_model(f"tiny-vit::{checkpoint}", image_size=32)  # asked for: interpolated
    assert smaller.config.vision.image_size == 32


def test_weights_without_a_declared_size_are_never_interpolated_silently(trained, tmp_path):
    run, _ = trained
    state = clipforge.create_model(f"local-dir:{run / 'model'}").state_dict()
    torch.save(state, tmp_path / "plain.pt")  # a bare state dict: no architecture recorded
    with pytest.raises(ModelLoadError, match=f"trained at image size {IMAGE_SIZE} but the model is built for 32"):
        clipforge.create_model("tiny-vit", pretrained=str(tmp_path / "plain.pt"))
    assert clipforge.create_model("tiny-vit", pretrained=str(tmp_path / "plain.pt"),
                                  image_size=IMAGE_SIZE).config.vision.image_size == IMAGE_SIZE


def test_open_clip_and_clipforge_read_the_same_folder(trained, user_data):
    open_clip = require("open_clip")
    run, _ = trained
    folder = f"local-dir:{run / 'model'}"
    theirs, _, their_preprocess = open_clip.create_model_and_transforms(folder)
    ours, _, our_preprocess = clipforge.create_model_and_transforms(folder)
    image = Image.open(user_data / "val" / "0000.png")
    pixels_theirs, pixels_ours = their_preprocess(image).unsqueeze(0), our_preprocess(image).unsqueeze(0)
    assert torch.equal(pixels_theirs, pixels_ours)
    tokens = clipforge.get_tokenizer(folder)(["a red circle", "a small blue square at the top"])
    assert torch.equal(tokens, open_clip.get_tokenizer(folder)(["a red circle", "a small blue square at the top"]))
    with torch.no_grad():
        diff_image = (theirs.encode_image(pixels_theirs) - ours.encode_image(pixels_ours)).abs().max()
        diff_text = (theirs.encode_text(tokens) - ours.encode_text(tokens)).abs().max()
    assert diff_image <= 1e-5 and diff_text <= 1e-5


def test_export_model_command(trained, tmp_path, capsys):
    run, _ = trained
    out = tmp_path / "exported"
    assert main(["export-model", str(run), "--out", str(out)]) == 0
    assert "hf upload" in capsys.readouterr().out
    assert clipforge.create_model(f"local-dir:{out}").config.vision.image_size == IMAGE_SIZE
    assert main(["export-model", str(run), "--out", str(out)]) == 2  # exists and is not empty
    assert "already exists" in capsys.readouterr().err
    assert main(["export-model", str(run / "checkpoints" / "step_00000004.pt"), "--out", str(out), "--force"]) == 0
