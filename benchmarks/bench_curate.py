"""clipforge curate against MetaCLIP's own code, same pool, same CPU, same run.

    git clone https://github.com/facebookresearch/MetaCLIP /tmp/MetaCLIP     # the reference (not a dependency)
    python benchmarks/bench_curate.py --metaclip /tmp/MetaCLIP [--captions 200000] [--entries 20000 500000]

1. Matching, one core: MetaCLIP 1's Aho-Corasick matcher (``metaclip/metaclip1/substr_matching_ahocorasick.py``,
   loaded from ``--metaclip``: one call per caption) against ``Matcher.match`` on batches, on the same captions and
   entry list, outputs compared; entry lists of each ``--entries`` size; automaton build time and memory.
2. Two processes: ``match_pool`` on a pool of 8 shards with 1 process and with 2 (``--shard-index``), wall time.
3. Balancing: MetaCLIP 1's balancing script (``metaclip/metaclip1/balancing.py`` ``main``: JSON records in, counts,
   per-caption draws, curated JSON out) on the same matches, against ``merge_counts`` + ``balance_pool`` (reading the
   saved matches, drawing, writing masks and counts).

The pool is synthetic (MetaCLIP's 500k-entry list is not redistributable here): entries are uni- and bigrams of a
Zipf vocabulary, captions 6-14 words of the same vocabulary with punctuation, so a caption matches several entries.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import pathlib
import random
import resource
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from clipforge.curation import Matcher, balance_pool, merge_counts  # noqa: E402


def vocabulary(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))))
    return sorted(words)


def make_entries(words: list[str], n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    entries = list(words[: n // 2])
    seen = set(entries)
    while len(entries) < n:
        bigram = f"{rng.choice(words[:5000])} {rng.choice(words[:20000])}"
        if bigram not in seen:
            seen.add(bigram)
            entries.append(bigram)
    return entries


def make_captions(words: list[str], n: int, seed: int = 2) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, len(words) + 1) ** 1.05
    picks = rng.choice(len(words), size=(n, 14), p=weights / weights.sum())
    lengths = rng.integers(6, 15, n)
    punct = np.array(["", "", "", "", ",", ".", "!", "?"])
    ends = rng.choice(punct, size=(n, 14))
    return [" ".join(words[w] + e for w, e in zip(row[:k], end[:k])) for row, end, k in zip(picks, ends, lengths)]


def load_metaclip(repo: pathlib.Path):
    folder = repo / "metaclip" / "metaclip1"
    sys.path.insert(0, str(folder))  # its module imports `substr_matching` by plain name
    modules = {}
    for name in ("substr_matching", "substr_matching_ahocorasick", "balancing"):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_matching(metaclip, captions, entries) -> dict:
    before = rss_mib()
    start = time.perf_counter()
    matcher = Matcher(entries, "metaclip1")
    build = time.perf_counter() - start
    grown = rss_mib() - before
    start = time.perf_counter()
    offsets, ids = [], []
    for i in range(0, len(captions), 20_000):
        o, d = matcher.match(captions[i:i + 20_000])
        offsets.append(o)
        ids.append(d)
    ours = len(captions) / (time.perf_counter() - start)
    row = {"entries": len(entries), "captions": len(captions), "clipforge_per_s": ours, "build_s": build,
           "build_rss_mib": grown, "matches_per_caption": sum(len(d) for d in ids) / len(captions)}
    if metaclip:
        reference = metaclip["substr_matching_ahocorasick"]
        reference.automaton, reference.spaced_metadata = None, None
        reference.substr_matching("warm up", entries)  # builds its automaton (not timed)
        start = time.perf_counter()
        theirs = [sorted(reference.substr_matching(c, entries)) for c in captions]
        row["metaclip_per_s"] = len(captions) / (time.perf_counter() - start)
        row["speedup"] = ours / row["metaclip_per_s"]
        o, d = offsets[0], ids[0]
        row["same_matches_first_batch"] = all(theirs[i] == d[o[i]:o[i + 1]].tolist() for i in range(len(o) - 1))
    return row


def write_pool(folder: pathlib.Path, captions: list[str], shards: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(captions) // shards)
    for s in range(shards):
        with tarfile.open(folder / f"pool-{s:06d}.tar", "w") as tar:
            for i, caption in enumerate(captions[s * per:(s + 1) * per]):
                for ext, data in (("jpg", b"\xff\xd8" + bytes(64)), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{s:02d}{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"pool-{{000000..{shards - 1:06d}}}.tar")


def bench_processes(spec: str, meta: pathlib.Path, scratch: pathlib.Path) -> dict:
    times = {}
    for procs in (1, 2):
        out = scratch / f"cur{procs}"
        start = time.perf_counter()
        jobs = [subprocess.Popen([sys.executable, "-m", "clipforge", "curate", "match", spec, "--metadata", str(meta),
                                  "--out", str(out), "--shard-index", str(i), "--num-shards", str(procs)],
                                 stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT / "src"),
                                                                 "CLIPFORGE_PROGRESS": "off"})
                for i in range(procs)]
        assert all(j.wait() == 0 for j in jobs)
        times[procs] = time.perf_counter() - start
    return {"one_process_s": times[1], "two_processes_s": times[2], "scaling": times[1] / times[2]}


def bench_balance(metaclip, folder: pathlib.Path, t: float, scratch: pathlib.Path, captions: list[str]) -> dict:
    """Ours: merge counts + balance (reading matches, writing masks). Theirs: MetaCLIP 1's balancing script on
    the same matches in its own input format (JSON records), reading, counting, drawing and writing included."""
    start = time.perf_counter()
    merge_counts(folder)
    summary = balance_pool(folder, t, seed=0)
    ours = summary["samples"] / (time.perf_counter() - start)
    row = {"samples": summary["samples"], "clipforge_per_s": ours, "kept": summary["kept"],
           "expected_kept": summary["expected_kept"], "expected_sd": summary["expected_sd"]}
    if metaclip:
        inputs, done = scratch / "metaclip_in", scratch / "metaclip_out"
        inputs.mkdir()
        records, caption = [], iter(captions)
        for path in sorted((folder / "matches").glob("*.npz")):
            with np.load(path) as m:
                o, d = m["offsets"], m["ids"]
                records += [{"texts": [[next(caption), "", d[o[i]:o[i + 1]].tolist()]]} for i in range(len(o) - 1)]
        for n, i in enumerate(range(0, len(records), 10_000)):
            (inputs / f"{n:05d}.json").write_text(json.dumps(records[i:i + 10_000]))
        here = os.getcwd()
        os.chdir(folder)  # the script opens "metadata.json" from the working directory
        try:
            start = time.perf_counter()
            metaclip["balancing"].main(str(inputs), str(done), int(t))
            row["metaclip_per_s"] = len(records) / (time.perf_counter() - start)
        finally:
            os.chdir(here)
        row["metaclip_kept"] = len(json.loads((done / "curated.json").read_text()))
        row["speedup"] = ours / row["metaclip_per_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metaclip", default=None, help="a checkout of facebookresearch/MetaCLIP (the reference)")
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--entries", type=int, nargs="+", default=[20_000, 500_000])
    parser.add_argument("--t", type=float, default=200)
    args = parser.parse_args()
    metaclip = load_metaclip(pathlib.Path(args.metaclip)) if args.metaclip else None
    words = vocabulary(300_000)
    captions = make_captions(words, args.captions)
    results = {"matching": []}
    for n in args.entries:
        entries = make_entries(words, n)
        row = bench_matching(metaclip, captions, entries)
        results["matching"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        meta = scratch / "meta.json"
        meta.write_text(json.dumps(make_entries(words, args.entries[0])))
        spec = write_pool(scratch / "pool", captions, 8)
        results["processes"] = bench_processes(spec, meta, scratch)
        print(json.dumps(results["processes"]), file=sys.stderr, flush=True)
        results["balance"] = bench_balance(metaclip, scratch / "cur1", args.t, scratch, captions)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
