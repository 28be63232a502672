"""WebDataset shards: loading, mixing, damage handling, rank/worker splits, exact resume, bad input."""
import io
import json
import os
import random
import tarfile

import pytest
from references import require
import torch
from PIL import Image
from torchvision import transforms as T

from clipforge.config import ConfigError, apply_overrides, from_dict
from clipforge.training.data import DataConfig, create_train_loader, expand_shards
from clipforge.training.data.shards import worker_shards
from clipforge.training.data.tar_stream import buffer_shuffle

CONTEXT = 8


def jpg_bytes(seed: int, size: int = 12) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_shards(folder, counts, prefix="s", sizes_json=True, source=0):
    """Shards where sample j of shard i has caption "<source> <i> <j>" and label j."""
    os.makedirs(folder, exist_ok=True)
    names = {}
    for i, count in enumerate(counts):
        members = []
        for j in range(count):
            key = f"{prefix}{i:03d}_{j:04d}"
            members += [(f"{key}.jpg", jpg_bytes(1000 * i + j)), (f"{key}.txt", f"{source} {i} {j}".encode()),
                        (f"{key}.cls", str(j).encode())]
        name = f"{prefix}-{i:04d}.tar"
        write_tar(os.path.join(folder, name), members)
        names[name] = count
    if sizes_json:
        with open(os.path.join(folder, "sizes.json"), "w") as f:
            json.dump(names, f)
    last = len(counts) - 1
    return os.path.join(folder, f"{prefix}-{{0000..{last:04d}}}.tar")


def tokenize(captions):
    """Caption "a b c" -> [1, a+3, b+3, c+3, 2, 0...]: the sample's identity survives in the tokens."""
    out = torch.zeros(len(captions), CONTEXT, dtype=torch.long)
    for row, caption in enumerate(captions):
        ids = [1] + [int(w) + 3 for w in caption.split()] + [2]
        out[row, : len(ids)] = torch.tensor(ids)
    return out


def ids(tokens):
    """(source, shard, index) of each row of a token batch."""
    return [tuple(int(v) - 3 for v in row[1:4]) for row in tokens]


PLAIN = T.Compose([T.Resize(8), T.ToTensor()])
AUGMENT = T.Compose([T.RandomResizedCrop(8, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


def loader(spec, transform=PLAIN, **overrides):
    base = dict(kind="webdataset", train=spec, batch_size=4, shuffle_buffer=0)
    base.update(overrides)
    extra = {k: base.pop(k) for k in ("rank", "world_size", "epoch", "start_batch") if k in base}
    return create_train_loader(DataConfig(**base), image_transform=transform, tokenize=tokenize, **extra)


def test_loads_full_batches_and_sees_every_sample_once(tmp_path):
    spec = make_shards(tmp_path, [6, 6, 6, 6])
    data = loader(spec)
    batches = list(data)
    assert data.num_samples == 24 and data.num_batches == len(batches) == 6
    images, tokens = batches[0]
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32
    assert tokens.shape == (4, CONTEXT) and tokens.dtype == torch.long
    seen = [i for _, t in batches for i in ids(t)]
    assert sorted(seen) == sorted((0, i, j) for i in range(4) for j in range(6))
    assert data.stats.samples == 24 and data.stats.skipped == 0
    assert data.state_dict()["next_batch"] == 6


def test_brace_expansion_and_sources_with_weights(tmp_path):
    shards = expand_shards([f"{tmp_path}/a-{{0..2}}.tar", f"{tmp_path}/b-{{00..01}}.tar"], [1.0, 3.0])
    assert [os.path.basename(u) for u in shards.urls] == ["a-0.tar", "a-1.tar", "a-2.tar", "b-00.tar", "b-01.tar"]
    assert shards.weights == (1.0, 1.0, 1.0, 3.0, 3.0)
    assert shards.sizes is None  # no sizes.json next to these shards


def test_weighted_mixing_of_two_sources(tmp_path):
    a = make_shards(tmp_path / "a", [8, 8], prefix="a", source=0)
    b = make_shards(tmp_path / "b", [8, 8], prefix="b", source=1)
    only_b = loader(f"{a}::{b}", train_weights="0::1", resampled=True, num_samples=32)
    assert {s for _, t in only_b for s, _, _ in ids(t)} == {1}
    mostly_b = loader(f"{a}::{b}", train_weights="1::9", resampled=True, num_samples=400, batch_size=8)
    sources = [s for _, t in mostly_b for s, _, _ in ids(t)]
    assert 0.75 < sum(sources) / len(sources) < 1.0


def test_corrupt_missing_and_truncated_samples_are_skipped_and_counted(tmp_path, caplog):
    good = [(f"g{j}.jpg", jpg_bytes(j)) for j in range(3)] + [(f"g{j}.txt", f"0 0 {j}".encode()) for j in range(3)]
    members = sorted(good) + [("x1.jpg", b"not a jpeg at all"), ("x1.txt", b"0 0 7"), ("x2.jpg", jpg_bytes(9))]
    write_tar(tmp_path / "d-0.tar", members)
    make_shards(tmp_path, [5], prefix="e")
    full = (tmp_path / "e-0000.tar").read_bytes()
    (tmp_path / "d-1.tar").write_bytes(full[: len(full) // 2 + 100])  # cut inside a member
    spec = f"{tmp_path}/d-{{0..1}}.tar"
    data = loader(spec, num_samples=16)
    batches = list(data)
    assert len(batches) == 4 and all(images.shape[0] == 4 for images, _ in batches)
    assert data.stats.corrupt_images >= 1  # x1.jpg (the truncated shard may add its cut image)
    assert data.stats.missing_fields >= 1  # x2 has no caption
    assert data.stats.shard_errors >= 1   # d-1.tar ends mid-member
    assert data.stats.filled == data.stats.skipped
    assert (0, 0, 7) not in {i for _, t in batches for i in ids(t)}
    summary = [r.getMessage() for r in caplog.records if "undecodable images" in r.getMessage()]
    assert summary and f"skipped {data.stats.corrupt_images} undecodable images" in summary[-1]


def test_every_rank_and_worker_gets_distinct_shards():
    owners = {}
    for rank in range(2):
        for worker in range(3):
            for shard in worker_shards(13, seed=5, epoch=2, rank=rank, world_size=2, worker=worker, num_workers=3):
                assert shard not in owners
                owners[shard] = (rank, worker)
    assert sorted(owners) == list(range(13))
    assert worker_shards(13, 5, 3, 0, 2, 0, 3) != worker_shards(13, 5, 2, 0, 2, 0, 3)  # reshuffled per epoch


def test_ranks_read_disjoint_data_and_agree_on_batch_count(tmp_path):
    spec = make_shards(tmp_path, [10, 2, 2, 2])  # uneven: one rank runs out first and must wrap
    per_rank = [list(loader(spec, rank=r, world_size=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    shards = [{shard for _, t in batches for _, shard, _ in ids(t)} for batches in per_rank]
    assert not shards[0] & shards[1]


def test_workers_read_distinct_shards(tmp_path):
    spec = make_shards(tmp_path, [4, 4, 4, 4])
    batches = list(loader(spec, workers=2))
    assert len(batches) == 4
    per_batch_shards = [{shard for _, shard, _ in ids(t)} for _, t in batches]
    worker0 = set().union(*per_batch_shards[0::2])  # batches alternate between the two workers
    worker1 = set().union(*per_batch_shards[1::2])
    assert worker0 and worker1 and not worker0 & worker1


@pytest.mark.parametrize("workers,shuffle_buffer,resampled", [(0, 5, False), (2, 5, False), (0, 0, False),
                                                               (2, 3, True)])
def test_resume_gives_the_same_batches_as_an_uninterrupted_run(tmp_path, workers, shuffle_buffer, resampled):
    spec = make_shards(tmp_path, [7, 5, 6, 6])
    options = dict(workers=workers, shuffle_buffer=shuffle_buffer, resampled=resampled, text_mask_prob=0.3,
                   seed=3, epoch=1)
    full = list(loader(spec, AUGMENT, **options))
    for start in (1, 3):
        resumed = list(loader(spec, AUGMENT, start_batch=start, **options))
        assert len(resumed) == len(full) - start
        for (img_a, tok_a), (img_b, tok_b) in zip(full[start:], resumed):
            assert torch.equal(img_a, img_b) and torch.equal(tok_a, tok_b)
    other_epoch = list(loader(spec, AUGMENT, **{**options, "epoch": 2}))
    assert not torch.equal(other_epoch[0][0], full[0][0])


def test_buffer_shuffle_is_a_seeded_permutation():
    out = list(buffer_shuffle(range(500), 50, random.Random(1)))
    assert sorted(out) == list(range(500)) and out != list(range(500))
    assert out == list(buffer_shuffle(range(500), 50, random.Random(1)))
    assert all(v < i + 50 for i, v in enumerate(out))  # never more than the buffer read ahead
    assert out[0] < 6  # output starts once about a tenth of the buffer is filled


def test_pipe_and_fsspec_urls(tmp_path):
    fsspec = require("fsspec")
    spec = make_shards(tmp_path, [4, 4], sizes_json=False)
    files = sorted(str(p) for p in tmp_path.glob("s-*.tar"))
    piped = list(loader(f"pipe:cat {files[0]}::pipe:cat {files[1]}", num_samples=8))
    with fsspec.open("memory://wds/s-0.tar", "wb") as f:
        f.write(open(files[0], "rb").read())
    remote = list(loader("memory://wds/s-0.tar", num_samples=4))
    local = list(loader(spec, num_samples=8))
    assert sorted(i for _, t in piped for i in ids(t)) == sorted(i for _, t in local for i in ids(t))
    assert sorted(ids(remote[0][1])) == [(0, 0, j) for j in range(4)]


def test_training_shards_read_as_an_evaluation_set(tmp_path):
    """The benchmark and the trainer's evaluation read training-style shards with the same tar reader."""
    from clipforge.evaluation.datasets import load_dataset
    spec = make_shards(tmp_path, [3, 2])
    (tmp_path / "classnames.txt").write_text("zero\none\ntwo\n")
    data = load_dataset(f"wds:{spec}", transform=PLAIN)
    assert len(data.dataset) == 5 and data.labels.tolist() == [0, 1, 2, 0, 1]
    assert data.tasks == ("classification", "retrieval")
    image, index = data.dataset[4]
    assert image.shape == (3, 8, 8) and data.captions[index] == ["0 1 1"] and data.labels[index] == 1


def test_bad_input_is_reported_before_reading(tmp_path):
    spec = make_shards(tmp_path, [4, 4])
    with pytest.raises(FileNotFoundError, match="do not exist"):
        loader(f"{tmp_path}/s-{{0000..0003}}.tar")
    with pytest.raises(ConfigError, match="data.train is empty"):
        DataConfig(kind="webdataset", train="  ").check_ready()
    with pytest.raises(ConfigError, match="empty shard list"):
        loader("::", num_samples=8)
    make_shards(tmp_path / "nosizes", [2], sizes_json=False)
    with pytest.raises(ConfigError, match="number of training samples is unknown"):
        loader(f"{tmp_path}/nosizes/s-0000.tar")
    with pytest.raises(ConfigError, match="ranks x 2 workers"):
        loader(spec, workers=2, world_size=2)
    with pytest.raises(ConfigError, match="smaller than one global batch"):
        loader(spec, batch_size=8, world_size=2)
    with pytest.raises(ConfigError, match="needs data.resampled"):
        DataConfig(train=spec, train_weights="1")
    with pytest.raises(ConfigError, match="one weight per source"):
        DataConfig(train=spec, train_weights="1::2", resampled=True)
    with pytest.raises(ValueError, match="rank=2"):
        loader(spec, rank=2, world_size=2)


def test_config_round_trip_and_overrides():
    cfg = from_dict(DataConfig, {"kind": "webdataset", "train": "x-{0..3}.tar", "batch_size": 8})
    cfg = apply_overrides(cfg, ["workers=2", "text_mask_prob=0.1"])
    assert cfg.workers == 2 and cfg.text_mask_prob == 0.1 and cfg.sources() == ["x-{0..3}.tar"]
    with pytest.raises(ConfigError, match="Did you mean"):
        from_dict(DataConfig, {"batchsize": 8, "train": "x.tar"})
    with pytest.raises(ConfigError, match="kind"):
        from_dict(DataConfig, {"kind": "parquet", "train": "x"})
