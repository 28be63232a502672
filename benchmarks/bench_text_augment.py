"""Synonym replacement ablation on the shapes data: the same tiny CLIP trained with and without
``data.synonym_prob`` (examples/finetune/shapes_synonyms.txt, class names protected), evaluated on the held-out
split as written and on a paraphrased copy of it (every caption rewritten with the same word list at p=1, another
seed), zero-shot top-1 and retrieval recall@5.

    python benchmarks/bench_text_augment.py --steps 400 --prob 0.3
"""
from __future__ import annotations

import argparse
import io
import os
import pathlib
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WORDS = ROOT / "examples" / "finetune" / "shapes_synonyms.txt"


def paraphrase_split(src: pathlib.Path, dst: pathlib.Path, protected: list[str]) -> None:
    """A copy of the shard ``src`` whose captions are rewritten with the word list at probability 1."""
    from clipforge.training.data.captions import SynonymReplacer, load_word_list

    replace = SynonymReplacer(load_word_list(str(WORDS)), 1.0, protected)
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for number, member in enumerate(tin.getmembers()):
            data = tin.extractfile(member).read()
            if member.name.endswith(".txt"):
                data = replace(data.decode(), 10_000 + number).encode()
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def train_once(data: dict, workdir: pathlib.Path, steps: int, prob: float, evals: tuple[str, ...], folder) -> dict:
    from clipforge.config import apply_overrides
    from clipforge.training.config import TrainConfig
    from clipforge.training.loop import train

    cfg = apply_overrides(TrainConfig(), {
        "workdir": str(workdir), "model.name": "tiny-vit", "model.image_size": 64, "data.kind": "webdataset",
        "data.train": data["train"], "data.num_samples": data["num_train"], "data.batch_size": 64,
        "optim.lr": 2e-3, "optim.weight_decay": 0.1, "schedule.steps": steps, "schedule.warmup_steps": steps // 20,
        "checkpoint.every_steps": 0, "checkpoint.export_model": False, "log.progress": False,
        "augment.scale": [0.9, 1.0], "eval.datasets": list(evals), "data.synonym_prob": prob,
        "data.synonyms": str(WORDS) if prob else None, "data.protected_words": [f"@{folder}/classnames.txt"]})
    return train(cfg).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--prob", type=float, default=0.3)
    args = parser.parse_args()
    from clipforge.training.shapes import generate_shapes_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / "shapes"
        info = generate_shapes_dataset(str(folder), n_train=4000, n_val=500, image_size=64, seed=0)
        classes = (folder / "classnames.txt").read_text().splitlines()
        paraphrase_split(pathlib.Path(info["val"]), folder / "para-000000.tar", classes)
        evals = (f"val=wds:{info['val']}", f"paraphrased=wds:{folder}/para-000000.tar")
        print(f"# tiny-vit, {args.steps} steps, batch 64; load average {os.getloadavg()[0]:.2f} on "
              f"{os.cpu_count()} CPUs")
        rows = {p: train_once(info, pathlib.Path(tmp) / f"run-{p}", args.steps, p, evals, folder)
                for p in (0.0, args.prob)}
    print("| synonym_prob | val top-1 | val recall@5 (t->i / i->t) | paraphrased top-1 | paraphrased recall@5 |")
    print("|---:|---:|---:|---:|---:|")
    for p, m in rows.items():
        print(f"| {p} | {100 * m['val/acc1']:.1f} | {100 * m['val/image_retrieval_recall@5']:.1f} / "
              f"{100 * m['val/text_retrieval_recall@5']:.1f} | {100 * m['paraphrased/acc1']:.1f} | "
              f"{100 * m['paraphrased/image_retrieval_recall@5']:.1f} / "
              f"{100 * m['paraphrased/text_retrieval_recall@5']:.1f} |")


if __name__ == "__main__":
    main()
