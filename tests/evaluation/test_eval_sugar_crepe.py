"""SugarCrepe through ``clipforge benchmark``: clip_benchmark's names, suite and task, the end-to-end run on a tiny
copy in the real on-disk layout giving clip_benchmark's ``image_caption_selection`` numbers for the same weights,
the tables, and a missing folder as one line naming where the data goes."""
import argparse
import csv
import dataclasses
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

from clipforge.evaluation import suites, tables
from clipforge.evaluation import benchmark as bench
from clipforge.evaluation.benchmark import BenchmarkConfig, dataset_root, evaluate, load_datasets, run_benchmark
from clipforge.evaluation.caption_selection import TASKS, load_sugar_crepe, selection_metrics
from benchmark_set_fixtures import make_sugar_crepe

SIZES = dict(zip(TASKS, (5, 6, 7, 8, 4, 8, 3)))  # instances per task: every task is its own file


def _make_all(root, sizes=SIZES):
    for task, n in sizes.items():
        make_sugar_crepe(str(root), task, n)  # one folder: <task>.json files + the shared val2017/
    return root


def _reference(model, tokenizer, root, task, batch_size=3):
    """clip_benchmark's own loader and metric on the folder clipforge read."""
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import image_caption_selection as ics
    from torchvision import transforms as T

    from eval_fixtures import transform
    rgb = T.Compose([T.Lambda(lambda image: image.convert("RGB")), *transform().transforms])
    reference = build_dataset(f"sugar_crepe/{task}", root=str(root), transform=rgb, split="test", download=False,
                              task="image_caption_selection")
    loader = DataLoader(reference, batch_size=batch_size, collate_fn=image_captions_collate_fn)
    return ics.evaluate(model, loader, tokenizer, "cpu", amp=False), len(reference)


def _args(*argv):
    from clipforge.cli import benchmark as verb
    parser = argparse.ArgumentParser()
    verb.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_names_suite_and_task_are_clip_benchmark_s(tmp_path):
    from clip_benchmark.datasets import builder
    assert suites.SUITES["sugar_crepe"] == builder.dataset_collection["sugar_crepe"]
    assert suites.expand(["sugar_crepe"]) == [f"sugar_crepe/{task}" for task in TASKS]
    for name in suites.SUITES["sugar_crepe"]:
        spec = suites.resolve(name)
        assert spec.task == "caption_selection" and spec.directory == "sugar_crepe"
        assert builder.get_dataset_default_task(name) == "image_caption_selection"
        assert "image_caption_selection" in bench.TASKS
        assert "image_caption_selection" in BenchmarkConfig().tasks  # naming the set is enough, as clip_benchmark
        # every task lives in the one folder clip_benchmark's --dataset_root gives them all
        assert dataset_root(str(tmp_path), name) == os.path.join(str(tmp_path), "sugar_crepe")
        assert dataset_root(str(tmp_path / "{dataset}"), name) == str(tmp_path / "sugar_crepe")
    with pytest.raises(KeyError) as info:
        suites.resolve("sugar_crepe/swap_rel")
    message = info.value.args[0]
    assert "unknown SugarCrepe task 'swap_rel'" in message and "sugar_crepe/swap_att" in message
    assert "\n" not in message


def test_cli_sugar_crepe_suite_end_to_end_equals_clip_benchmark(tmp_path, tiny, encoders, monkeypatch, capsys):
    """``clipforge benchmark --datasets sugar_crepe --data-root R``, no --tasks: every task, clip_benchmark's
    accuracies for the same tiny model (its weights are the Encoders' weights), tables and JSON written."""
    from clipforge.cli import benchmark as verb
    model, tokenizer = tiny
    data = tmp_path / "data"
    _make_all(data / "sugar_crepe")
    seen = []

    def load(spec, device, precision):
        seen.append(spec)
        return encoders

    monkeypatch.setattr(bench, "load_model_encoders", load)
    args = _args("--model", "tiny::one", "--datasets", "sugar_crepe", "--data-root", str(data), "--output",
                 str(tmp_path / "out"), "--device", "cpu", "--set", "num_workers=0", "batch_size=3", "--quiet")
    assert verb.run(args) == 0
    assert seen == ["tiny::one"]
    results = json.load(open(tmp_path / "out" / "results.json"))["tiny::one"]
    accuracies = set()
    for task in TASKS:
        ref, count = _reference(model, tokenizer, data / "sugar_crepe", task)
        name = f"sugar_crepe/{task}"
        assert count == SIZES[task]
        for key in ("acc", "text_acc", "image_acc"):
            assert results[f"{name}/{key}"] == pytest.approx(ref[key], abs=1e-6), (task, key)
        assert results[f"{name}/num_samples"] == count and results[f"{name}/num_skipped"] == 0
        accuracies.add(round(ref["acc"], 6))
    assert len(accuracies) > 1  # the tasks' files differ, so do their numbers: each task was read on its own
    printed = capsys.readouterr().out
    assert "## Image-caption selection (SugarCrepe accuracy)" in printed and "| tiny::one" in printed
    assert "caption_selection.csv" in os.listdir(tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "caption_selection.csv")))
    assert list(rows[0]) == ["model_fullname"] + suites.SUITES["sugar_crepe"]  # clip_benchmark's task order
    assert float(rows[0]["sugar_crepe/swap_att"]) == pytest.approx(results["sugar_crepe/swap_att/acc"], abs=5e-4)


def test_one_task_through_evaluate_and_the_feature_cache(tmp_path, tiny, encoders):
    """The trainer's ``evaluate`` hook on a loaded task, and a cached second run: clip_benchmark's numbers."""
    model, tokenizer = tiny
    make_sugar_crepe(str(tmp_path / "sugar_crepe"), "replace_rel", 7)
    ref, _ = _reference(model, tokenizer, tmp_path / "sugar_crepe", "replace_rel", batch_size=7)
    config = BenchmarkConfig(datasets=("sugar_crepe/replace_rel",), data_root=str(tmp_path), num_workers=0,
                             batch_size=4, cache_dir=str(tmp_path / "cache"))
    [(loaded, train)] = load_datasets(config.datasets, config, encoders.transform)
    assert train is None and loaded.name == "sugar_crepe/replace_rel"
    first = evaluate(encoders, [loaded], config)
    assert len(os.listdir(tmp_path / "cache")) == 1
    second = run_benchmark(["tiny"], config, quiet=True, loader=lambda *a: encoders)["tiny"]
    assert first == second
    for key in ("acc", "text_acc", "image_acc"):
        assert first[f"sugar_crepe/replace_rel/{key}"] == pytest.approx(ref[key], abs=1e-6), key


def test_other_tasks_leave_sugar_crepe_alone_and_other_splits_are_an_error(tmp_path, encoders):
    make_sugar_crepe(str(tmp_path / "sugar_crepe"), "swap_obj", 3)
    only_classification = BenchmarkConfig(tasks=("zeroshot_classification",), datasets=("sugar_crepe/swap_obj",),
                                          data_root=str(tmp_path / "nowhere"), num_workers=0)
    assert load_datasets(only_classification.datasets, only_classification, None) == []  # not even looked for
    config = BenchmarkConfig(datasets=("sugar_crepe/swap_obj",), data_root=str(tmp_path), split="train",
                             num_workers=0)
    with pytest.raises(FileNotFoundError) as info:
        load_datasets(config.datasets, config, None)
    assert str(info.value) == "'sugar_crepe/swap_obj' has only the 'test' split, not 'train'"


def test_missing_sugar_crepe_folder_is_one_line_naming_where_the_data_goes(tmp_path, encoders, monkeypatch, capsys):
    from clipforge.cli.main import main
    root = tmp_path / "datasets"
    calls = []

    def encode(images):
        calls.append(len(images))
        return encoders.encode_image(images)

    counted = dataclasses.replace(encoders, encode_image=encode)
    config = BenchmarkConfig(datasets=("sugar_crepe",), data_root=str(root), num_workers=0)
    with pytest.raises(FileNotFoundError) as info:
        run_benchmark(["tiny"], config, quiet=True, loader=lambda *a: counted)
    message = str(info.value)
    folder = os.path.join(str(root), "sugar_crepe")
    assert "\n" not in message, message
    assert f"SugarCrepe folder {folder} not found" in message
    assert "swap_att.json" in message and os.path.join(folder, "val2017") in message
    assert "RAIVNLab/sugar-crepe" in message and message.startswith("sugar_crepe: ")
    assert calls == []

    monkeypatch.setattr(bench, "load_model_encoders", lambda spec, device, precision: encoders)
    code = main(["benchmark", "--model", "tiny", "--datasets", "sugar_crepe", "--data-root", str(root),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("clipforge benchmark: error: sugar_crepe: SugarCrepe folder ") and folder in err
    assert not (tmp_path / "out").exists()

    # some tasks named: those tasks
    config = BenchmarkConfig(datasets=("sugar_crepe/swap_obj", "sugar_crepe/add_att"), data_root=str(root))
    with pytest.raises(FileNotFoundError, match=r"^sugar_crepe/swap_obj, sugar_crepe/add_att: SugarCrepe folder "):
        load_datasets(config.datasets, config, None)

    # the folder is there but not a task's file: that task's own line, naming the file
    make_sugar_crepe(str(root / "sugar_crepe"), "add_att", 2)
    config = BenchmarkConfig(datasets=("sugar_crepe/add_att", "sugar_crepe/add_obj"), data_root=str(root),
                             num_workers=0)
    with pytest.raises(FileNotFoundError) as info:
        load_datasets(config.datasets, config, None)
    message = str(info.value)
    assert "\n" not in message and os.path.join(folder, "add_obj.json") in message and "add_att" not in message


def test_tie_rules_and_the_table():
    text = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])  # first instance: a tie
    image = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    assert selection_metrics(image, text)["acc"] == 1.0  # clip_benchmark's argmax: the true caption is first
    assert selection_metrics(image, text, "pessimistic") == {"image_acc": 1.0, "text_acc": 0.5, "acc": 0.5}
    with pytest.raises(ValueError, match="unknown tie rule"):
        selection_metrics(image, text, "optimistic")
    results = {"A": {"sugar_crepe/swap_obj/acc": 0.5, "sugar_crepe/swap_obj/text_acc": 0.5,
                     "sugar_crepe/add_att/acc": 0.75, "sugar_crepe/add_att/text_acc": 0.75, "vtab/dtd/acc1": 0.2},
               "B": {"sugar_crepe/swap_obj/acc": 0.625, "sugar_crepe/swap_obj/text_acc": 0.625}}
    built = {t.name: t for t in tables.build_tables(results)}
    table = built["caption_selection"]
    assert table.columns == ["model_fullname", "sugar_crepe/add_att", "sugar_crepe/swap_obj"]
    assert table.rows == [["A", "0.750", "0.500"], ["B", "n/a", "**0.625**"]]
    assert built["classification"].columns == ["model_fullname", "vtab/dtd"]  # no SugarCrepe column there
