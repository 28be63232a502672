"""CSV/TSV and synthetic sources, token masking, RNG isolation and input errors."""
import os

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clipforge.config import ConfigError
from clipforge.training.data import DataConfig, create_train_loader, mask_tokens, resume_batch, split_global_batch

CONTEXT = 6
PLAIN = T.Compose([T.Resize(8), T.ToTensor()])
AUGMENT = T.Compose([T.RandomResizedCrop(8, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


def tokenize(captions):
    """Caption "item N" -> [1, N+3, 2, 0...]; synthetic "synthetic image number N" -> [1, N+3, 2]."""
    out = torch.zeros(len(captions), CONTEXT, dtype=torch.long)
    for row, caption in enumerate(captions):
        out[row, :3] = torch.tensor([1, int(caption.split()[-1]) + 3, 2])
    return out


def items(tokens):
    return [int(v) - 3 for v in tokens[:, 1]]


def make_table(folder, n, sep="\t", image_key="filepath", caption_key="title", relative=True):
    images = folder / "images"
    images.mkdir(exist_ok=True)
    lines = [f"{image_key}{sep}{caption_key}"]
    for i in range(n):
        Image.new("RGB", (10, 10), (i * 7 % 256, i * 13 % 256, 90)).save(images / f"{i}.png")
        path = f"images/{i}.png" if relative else str(images / f"{i}.png")
        lines.append(f"{path}{sep}item {i}")
    table = folder / ("train.csv" if sep == "," else "train.tsv")
    table.write_text("\n".join(lines) + "\n")
    return table


def csv_loader(table, transform=PLAIN, **overrides):
    base = dict(kind="csv", train=str(table), batch_size=4)
    base.update(overrides)
    extra = {k: base.pop(k) for k in ("rank", "world_size", "epoch", "start_batch") if k in base}
    return create_train_loader(DataConfig(**base), image_transform=transform, tokenize=tokenize, **extra)


def test_tsv_with_open_clip_defaults_loads_every_row_once(tmp_path):
    table = make_table(tmp_path, 12)
    data = csv_loader(table)
    batches = list(data)
    assert data.num_batches == len(batches) == 3 and data.num_samples == 12
    assert batches[0][0].shape == (4, 3, 8, 8) and batches[0][1].dtype == torch.long
    assert sorted(i for _, t in batches for i in items(t)) == list(range(12))
    assert data.stats.samples == 12 and data.stats.skipped == 0


def test_csv_separator_and_column_names_are_configurable(tmp_path):
    table = make_table(tmp_path, 8, sep=",", image_key="img", caption_key="caption", relative=False)
    data = csv_loader(table, csv_separator=",", csv_image_key="img", csv_caption_key="caption")
    assert sorted(i for _, t in data for i in items(t)) == list(range(8))
    with pytest.raises(ConfigError, match="no column 'filepath'.*'img', 'caption'"):
        csv_loader(table, csv_separator=",")


def test_ranks_split_an_epoch_and_epochs_reshuffle(tmp_path):
    table = make_table(tmp_path, 16)
    ranks = [[i for _, t in csv_loader(table, rank=r, world_size=2) for i in items(t)] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 8
    assert sorted(ranks[0] + ranks[1]) == list(range(16))
    epoch1 = [i for _, t in csv_loader(table, rank=0, world_size=2, epoch=1) for i in items(t)]
    assert epoch1 != ranks[0]


def test_short_epoch_wraps_so_every_rank_gets_full_batches(tmp_path):
    table = make_table(tmp_path, 14)
    per_rank = [list(csv_loader(table, rank=r, world_size=3)) for r in range(3)]
    assert all(len(batches) == 2 and batches[1][0].shape[0] == 4 for batches in per_rank)
    seen = [i for batches in per_rank for _, t in batches for i in items(t)]
    assert len(seen) == 24 and set(seen) == set(range(14))


def test_missing_captions_and_bad_images_are_skipped_and_counted(tmp_path):
    table = make_table(tmp_path, 8)
    (tmp_path / "images" / "3.png").write_bytes(b"garbage")
    os.remove(tmp_path / "images" / "5.png")
    with open(table, "a") as f:
        f.write("images/0.png\t\n")  # a row without caption
    data = csv_loader(table)
    batches = list(data)
    assert len(batches) == 2 and all(images.shape[0] == 4 for images, _ in batches)
    # a missing file is named as missing, not as corrupt
    assert data.stats.missing_fields == 1 and data.stats.corrupt_images == 1 and data.stats.missing_images == 1
    assert data.stats.filled == 2 and "1 missing image files" in data.stats.summary()
    seen = {i for _, t in batches for i in items(t)}
    assert 3 not in seen and 5 not in seen


@pytest.mark.parametrize("kind", ["csv", "synthetic"])
def test_resume_is_exact_with_any_number_of_workers(tmp_path, kind):
    if kind == "csv":
        options = dict(kind="csv", train=str(make_table(tmp_path, 20)))
    else:
        options = dict(kind="synthetic", num_samples=20)
    options.update(text_mask_prob=0.2, seed=7, epoch=3)
    full = list(csv_loader(None, AUGMENT, **options))
    resumed = list(csv_loader(None, AUGMENT, start_batch=2, workers=2, **options))
    assert len(full) == 5 and len(resumed) == 3
    for (img_a, tok_a), (img_b, tok_b) in zip(full[2:], resumed):
        assert torch.equal(img_a, img_b) and torch.equal(tok_a, tok_b)


def test_synthetic_source_is_deterministic_and_sized(tmp_path):
    data = csv_loader(None, kind="synthetic", num_samples=8, batch_size=4)
    first, second = list(data), list(data)
    assert len(first) == 2 and first[0][0].shape == (4, 3, 8, 8)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    assert sorted(i for _, t in first for i in items(t)) == list(range(8))


def test_loading_does_not_disturb_the_callers_random_state(tmp_path):
    import random

    import numpy as np

    table = make_table(tmp_path, 8)

    def draw():
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    for seed in (123, 7):
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
        expected = draw()
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
        list(csv_loader(table, AUGMENT))  # batch by batch: the generators are saved once per batch, then restored
        assert draw() == expected


def test_position_is_reported_for_checkpoints(tmp_path):
    data = csv_loader(make_table(tmp_path, 12), start_batch=1)
    iterator = iter(data)
    next(iterator)
    state = data.state_dict()
    assert state == {"epoch": 0, "next_batch": 2, "seed": 0, "world_size": 1, "workers": 0, "kind": "csv",
                     "batch_size": 4}
    assert len(data) == 2
    cfg = DataConfig(kind="csv", train="x.tsv", batch_size=4)
    assert resume_batch(state, cfg, epoch=0, world_size=1) == 2
    assert resume_batch(state, cfg, epoch=1, world_size=1) == 0
    assert resume_batch({**state, "next_batch": 5}, cfg, epoch=0, world_size=2) == 2  # 20 samples / 8 per step


def test_bad_input_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        csv_loader(tmp_path / "missing.tsv")
    table = make_table(tmp_path, 8)
    with pytest.raises(ConfigError, match="smaller than one global batch"):
        csv_loader(table, batch_size=16)
    with pytest.raises(ValueError, match="start_batch=9"):
        csv_loader(table, start_batch=9)
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        DataConfig(kind="csv", train=str(table), batch_size=0)
    with pytest.raises(ConfigError, match="needs data.num_samples"):
        DataConfig(kind="synthetic").check_ready()
    with pytest.raises(ConfigError, match="text_mask_prob"):
        DataConfig(kind="csv", train=str(table), text_mask_prob=1.0)
    bad_tokenizer = DataConfig(kind="csv", train=str(table), batch_size=4)
    data = create_train_loader(bad_tokenizer, image_transform=PLAIN, tokenize=lambda caps: torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(N, L\) tensor"):
        next(iter(data))


def test_mask_tokens_keeps_start_and_end_and_compacts():
    tokens = torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0, 0, 0]] * 200)
    g = torch.Generator().manual_seed(0)
    masked = mask_tokens(tokens, 0.5, generator=g)
    lengths = (masked != 0).sum(dim=1)
    assert torch.all(masked[:, 0] == 1)
    assert torch.all(masked[torch.arange(200), lengths - 1] == 2)  # end token stays last
    assert 0.35 < 1 - (lengths - 2).float().mean() / 5 < 0.65  # about half of the 5 words dropped
    for row, n in zip(masked, lengths):  # kept words keep their order
        words = row[1: n - 1].tolist()
        assert words == sorted(words) and set(words) <= {5, 6, 7, 8, 9}
    replaced = mask_tokens(tokens, 0.5, generator=torch.Generator().manual_seed(0), mask_id=99)
    assert replaced.shape == tokens.shape and torch.all(replaced[:, [0, 6]] == torch.tensor([1, 2]))
    assert torch.all((replaced[:, 7:] == 0)) and (replaced == 99).any()
    assert torch.equal(mask_tokens(tokens, 0.0), tokens)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        mask_tokens(tokens, 1.5)


def test_global_batch_must_split_evenly_over_ranks_and_accumulation():
    assert split_global_batch(256, 4) == 64 and split_global_batch(256, 4, accum_steps=2) == 32
    with pytest.raises(ConfigError, match="not divisible by world_size 3 x accum_steps 1 = 3; use 99 or 102"):
        split_global_batch(100, 3)
    with pytest.raises(ConfigError, match="must all be positive"):
        split_global_batch(64, 0)
