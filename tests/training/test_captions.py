"""Caption transforms: synonym replacement (deterministic per sample and seed, protected class names untouched,
word lists and WordNet), FLYP's class captions, the --print-augmented preview, LLRD and the fine-tuning recipes."""
import json
import sys
import types

import pytest
import torch

from clipforge.cli.main import main
from clipforge.config import ConfigError, apply_overrides
from clipforge.training.config import TrainConfig
from clipforge.training.data.captions import (ClassCaptions, SynonymReplacer, create_caption_transform,
                                              load_word_list)
from clipforge.training.data import DataConfig
from clipforge.training.data.loader import create_train_loader
from clipforge.training.loop import train
from clipforge.training.shapes import generate_shapes_dataset

SYNONYMS = {"photo": ["picture", "image"], "red": ["crimson"], "circle": ["ring"], "large": ["big", "huge"],
            "small": ["little"], "top": ["upper"], "corner": ["angle"]}


def test_synonyms_are_deterministic_per_seed_and_vary_across_seeds():
    replace = SynonymReplacer(SYNONYMS, 0.5)
    caption = "A large photo of a small red circle in the top corner"
    assert all(replace(caption, s) == replace(caption, s) for s in range(20))
    outputs = [replace(caption, s) for s in range(200)]
    assert len(set(outputs)) > 30
    changed = [sum(a != b for a, b in zip(caption.split(), out.split())) for out in outputs]
    assert 3.0 < sum(changed) / len(changed) < 4.0  # 7 words with synonyms, each replaced with probability 0.5
    everything = SynonymReplacer(SYNONYMS, 1.0)(caption, 0)
    assert everything.split()[:3] in (["A", "big", "picture"], ["A", "big", "image"], ["A", "huge", "picture"],
                                      ["A", "huge", "image"]) and "crimson ring" in everything
    assert SynonymReplacer(SYNONYMS, 1.0)("Large red", 0) in ("Big crimson", "Huge crimson")  # case kept
    assert SynonymReplacer(SYNONYMS, 0.0)(caption, 3) == caption


def test_protected_class_names_are_never_replaced():
    replace = SynonymReplacer(SYNONYMS, 1.0, protected=["red circle"])
    for seed in range(30):
        out = replace("a photo of a red circle, a red square and a circle", seed)
        assert "red circle" in out and out.count("crimson") == 1 and out.count("ring") == 1
        assert "photo" not in out  # unprotected words are replaced at probability 1


def test_word_lists_and_their_errors(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"Photo": ["picture"]}))
    (tmp_path / "s.txt").write_text("# shapes\nphoto: picture, image\nbig\tlarge\n")
    assert load_word_list(str(tmp_path / "s.json")) == {"photo": ["picture"]}
    assert load_word_list(str(tmp_path / "s.txt")) == {"photo": ["picture", "image"], "big": ["large"]}
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "bad.txt").write_text("no separator here\n")
    for name, message in (("bad.json", "not valid JSON"), ("bad.txt", "expected 'word: synonym"),
                          ("missing.txt", "not found")):
        with pytest.raises(ConfigError, match=message) as info:
            load_word_list(str(tmp_path / name))
        assert "\n" not in str(info.value)


class _FakeWordNet:
    """A stand-in for nltk's WordNet reader (its data cannot be downloaded here): two synsets for 'large'."""

    def ensure_loaded(self):
        pass

    def synsets(self, word):
        lemma = lambda name: types.SimpleNamespace(name=lambda: name)  # noqa: E731
        table = {"a": [types.SimpleNamespace(lemmas=lambda: [lemma("angstrom")])],
                 "in": [types.SimpleNamespace(lemmas=lambda: [lemma("inch")])],
                 "large": [types.SimpleNamespace(lemmas=lambda: [lemma("large"), lemma("big")]),
                           types.SimpleNamespace(lemmas=lambda: [lemma("great_big")])]}
        return table.get(word, [])


def test_wordnet_synonyms_through_nltk(monkeypatch):
    nltk, corpus = types.ModuleType("nltk"), types.ModuleType("nltk.corpus")
    corpus.wordnet = _FakeWordNet()
    nltk.corpus = corpus
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    monkeypatch.setitem(sys.modules, "nltk.corpus", corpus)
    transform = create_caption_transform(None, None, 1.0, "wordnet", ())
    assert transform("a large square", 0) in ("a big square", "a great big square")
    assert transform("a small square", 0) == "a small square"
    assert transform("a large square in it", 0).startswith("a ") and transform("in it", 0) == "in it"


def test_wordnet_without_nltk_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)
    monkeypatch.setitem(sys.modules, "nltk.corpus", None)
    with pytest.raises(ConfigError, match="pip install nltk"):
        create_caption_transform(None, None, 0.5, "wordnet", ())


def test_class_captions_fill_templates_from_the_class_index():
    make = ClassCaptions(["red circle", "blue square"], ["a photo of a {}.", "a {} drawn."])
    assert make("1", 7) == make("1", 7) and "blue square" in make("1", 7)
    assert {make("0", s) for s in range(20)} == {"a photo of a red circle.", "a red circle drawn."}
    assert make("a red circle", 0) is None and make("5", 0) is None and make("-1", 0) is None  # skipped, counted
    with pytest.raises(ConfigError, match="needs a '{}'"):
        ClassCaptions(["x"], ["no slot"])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(str(root), n_train=64, n_val=16, image_size=32, seed=0)
    (root / "syn.txt").write_text("photo: picture, image\nlarge: big\nsmall: little\ncorner: angle\n")
    return root


def _captions(cfg: DataConfig) -> list[str]:
    seen = []
    loader = create_train_loader(cfg, image_transform=lambda im: torch.zeros(1),
                                 tokenize=lambda caps: seen.extend(caps) or torch.zeros(len(caps), 4))
    for _ in loader:
        pass
    return seen


def test_the_pipeline_applies_synonyms_deterministically(shapes):
    base = DataConfig(kind="webdataset", train=str(shapes / "train-000000.tar"), batch_size=16, seed=3,
                      shuffle_buffer=0)
    plain = _captions(base)
    augmented = DataConfig(**{**base.__dict__, "synonym_prob": 1.0, "synonyms": str(shapes / "syn.txt"),
                              "protected_words": (f"@{shapes}/classnames.txt",)})
    first, second = _captions(augmented), _captions(augmented)
    assert first == second and first != plain
    assert sum("photo" in c for c in first) == 0 and sum("photo" in c for c in plain) > 0
    colours_shapes = [c for c in (shapes / "classnames.txt").read_text().splitlines()]
    for before, after in zip(plain, first):  # the class name (colour + shape) survives every rewrite
        assert [n for n in colours_shapes if n in before] == [n for n in colours_shapes if n in after]


def test_labels_that_name_no_class_are_skipped_and_counted(shapes, tmp_path):
    (tmp_path / "two.txt").write_text("red circle\nred square\n")  # labels 2.. name no class here
    cfg = DataConfig(kind="webdataset", train=str(shapes / "train-000000.tar"), batch_size=16, shuffle_buffer=0,
                     wds_caption_key="cls", class_captions=str(tmp_path / "two.txt"))
    loader = create_train_loader(cfg, image_transform=lambda im: torch.zeros(1),
                                 tokenize=lambda caps: torch.zeros(len(caps), 4))
    for _ in loader:
        pass
    labels = [int(x) for x in _captions(DataConfig(**{**cfg.__dict__, "class_captions": None}))]
    assert loader.stats.missing_fields == sum(label >= 2 for label in labels) > 0


def test_print_augmented_previews_captions(shapes, capsys):
    code = main(["train", "--set", "data.kind=webdataset", f"data.train={shapes}/train-000000.tar",
                 "data.synonym_prob=1.0", f"data.synonyms={shapes}/syn.txt", "--print-augmented", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 6 and all(line.startswith("  -> ") for line in lines[1::2])


def test_synonyms_without_a_source_is_a_config_error():
    with pytest.raises(ConfigError, match="needs data.synonyms"):
        apply_overrides(TrainConfig(), {"data.synonym_prob": 0.3})


def test_layer_decay_scales_learning_rates_from_the_head_down():
    from clipforge.models.factory import create_model
    from clipforge.training.config import OptimConfig, ScheduleConfig
    from clipforge.training.optim import create_optimizer, set_lr

    model = create_model("tiny-vit")
    optimizer = create_optimizer(model, OptimConfig(lr=1.0, layer_decay=0.5))
    set_lr(optimizer, 1.0, 5, ScheduleConfig(kind="const", steps=10, warmup_steps=0))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    groups = model.visual.param_groups()
    depth = len(groups)
    assert lr_of[id(next(model.visual.proj.parameters()))] == 1.0 and lr_of[id(model.logit_scale)] == 1.0
    assert lr_of[id(model.visual.pos_embed)] == 0.5 ** (depth - 1)
    assert lr_of[id(model.text.token_embedding.weight)] == 0.5 ** (len(model.text.param_groups()) - 1)
    with pytest.raises(ConfigError, match="layer_decay"):
        OptimConfig(layer_decay=1.5)


@pytest.mark.parametrize("recipe", ["full", "lit", "flyp", "lora"])
def test_finetune_recipes_run(shapes, tmp_path, recipe):
    from clipforge.training.config import load_config

    arg = f"data={shapes},tiny" if recipe == "flyp" else "tiny"
    cfg = load_config(f"configs/finetune_{recipe}.py:{arg}", [f"workdir={str(tmp_path / recipe)!r}",
                                                               "log.progress=False"])
    result = train(cfg)
    assert result.steps == cfg.schedule.steps and result.model_dir is not None
    if recipe == "lit":
        assert cfg.model.lock_image
    if recipe == "lora":
        assert (tmp_path / recipe / "adapters" / "adapters.safetensors").is_file()
