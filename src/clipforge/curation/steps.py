"""The curation steps over one working folder:

    DIR/curation.json          the run: source, rule, metadata file, shard names (written by the first match)
    DIR/metadata.json          the entries matched (duplicates merged)
    DIR/matches/SHARD.npz      per shard: sample keys, matched entry ids (CSR), per-entry counts, skipped captions
    DIR/counts.npy             per-entry counts over the pool (``merge``)
    DIR/balanced/t{T}-seed{S}/ SHARD.npy keep masks + summary.json (``balance``)

Matching is independent per shard: any process may match any subset (``shard_index``/``num_shards``, torchrun
ranks, a job array) and a shard already matched is skipped, so an interrupted run resumes. ``merge`` sums the counts
and needs every shard; ``balance`` reuses the saved matches for any ``t`` without matching again.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np

from clipforge._atomic import atomic_directory, atomic_path, check_output_folder, write_text_atomic
from clipforge.curation import balance as bal
from clipforge.curation.matching import LanguageMatcher
from clipforge.curation.metadata import ALL, CurationError, Metadata, load_metadata_lists
from clipforge.curation.pool import Shard, list_pool, read_captions
from clipforge.data import tar as tars
from clipforge.progress import progress

RUN = "curation.json"


def _save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def read_run(folder: Path) -> dict:
    if not (folder / RUN).is_file():
        raise CurationError(f"{folder} holds no curation run: start with `clipforge curate match SRC --metadata FILE "
                            f"--out {folder}`")
    return json.loads((folder / RUN).read_text())


def _start(src: str, lists: dict[str, Metadata], out: Path, rule: str, shards: list[Shard],
           language_field: str | None) -> dict:
    entries = [e for m in lists.values() for e in m.entries]
    languages, offset = [], 0
    for language, m in lists.items():
        languages.append([language, offset, len(m)])
        offset += len(m)
    run = {"source": src, "rule": rule, "metadata": [m.source for m in lists.values()], "entries": len(entries),
           "languages": languages, "language_field": language_field,
           "duplicates_merged": {k: v for m in lists.values() for k, v in m.duplicates.items()},
           "shards": [[s.name, s.url, s.kind] for s in shards]}
    if (out / RUN).is_file():
        before = json.loads((out / RUN).read_text())
        keys = ("source", "rule", "entries", "shards", "languages", "language_field")
        same = {k: before.get(k) for k in keys} == {k: run[k] for k in keys}
        old = json.loads((out / "metadata.json").read_text())
        if not same or old != entries:
            raise CurationError(f"{out} holds a curation run of another source, rule or metadata: use a new --out")
        return before
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metadata.json", json.dumps(entries, ensure_ascii=False))
    write_text_atomic(out / RUN, json.dumps(run, indent=1, ensure_ascii=False))
    return run


def match_shard(shard: Shard, matcher: LanguageMatcher, out: Path, caption_column: str | None,
                language_field: str | None = None, batch: int = 20_000) -> dict:
    captions = read_captions(shard, caption_column, language_field)
    present = [i for i, t in enumerate(captions.texts) if t is not None]
    offsets_parts, ids_parts = [np.zeros(1, dtype=np.int64)], []
    total, unlisted = 0, 0
    for start in range(0, len(present), batch):
        positions = present[start:start + batch]
        chunk = [captions.texts[i] for i in positions]
        languages = [captions.languages[i] for i in positions] if captions.languages is not None else None
        offsets, ids, missing = matcher.match(chunk, languages)
        unlisted += missing
        offsets_parts.append(offsets[1:] + total)
        ids_parts.append(ids)
        total += len(ids)
    # spread to every sample of the shard (captionless samples match nothing)
    lengths = np.zeros(len(captions.texts), dtype=np.int64)
    present_offsets = np.concatenate(offsets_parts)
    lengths[present] = np.diff(present_offsets)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32)
    counts = np.bincount(ids, minlength=matcher.size).astype(np.int64)
    _save_npz(out / "matches" / f"{shard.name}.npz", keys=np.array(captions.keys, dtype=object).astype(str),
              offsets=offsets, ids=ids, counts=counts,
              skipped=np.array([captions.skipped[k] for k in ("no_caption", "not_utf8", "shard_errors")]))
    return {"samples": len(captions.texts), "matched": int((lengths > 0).sum()), "no_language_list": unlisted,
            **captions.skipped}


def match_pool(src: str, metadata_path: str, out: str | os.PathLike, rule: str = "metaclip1",
               shard_index: int = 0, num_shards: int = 1, caption_column: str | None = None,
               show_progress: bool = True, engine: str = "local", ray_address: str | None = None,
               ray_actors: int = 2, language_field: str | None = None, workers: int = 1) -> dict:
    """Match this process's share of the pool's shards (``shard_index`` of ``num_shards``), over ``workers``
    processes; returns its counts.
    ``engine="ray"`` matches the share as a Ray Data job (``ray_actors`` actors, each with its own automaton) on a
    running cluster (``ray_address="auto"``) or a local Ray instance."""
    if engine not in ("local", "ray"):
        raise CurationError(f"--engine must be local or ray, got {engine!r}")
    if not 0 <= shard_index < num_shards:
        raise CurationError(f"--shard-index must be in 0..{num_shards - 1}, got {shard_index}")
    out = Path(out)
    lists = load_metadata_lists(metadata_path)
    if ALL not in lists and language_field is None:
        language_field = "lang"  # per-language lists need each caption's language: the `lang` member by default
    shards = list_pool(src)
    _start(src, lists, out, rule, shards, language_field)
    entries = {language: list(m.entries) for language, m in lists.items()}
    mine = [s for i, s in enumerate(shards) if i % num_shards == shard_index]
    todo = [s for s in mine if not (out / "matches" / f"{s.name}.npz").is_file()]
    (out / "matches").mkdir(exist_ok=True)
    start = time.perf_counter()
    totals = {"shards": len(todo), "skipped_done": len(mine) - len(todo), "samples": 0, "matched": 0,
              "no_caption": 0, "not_utf8": 0, "shard_errors": 0, "no_language_list": 0, "engine": engine}
    if engine == "ray":
        for done in _match_with_ray(todo, entries, rule, out, caption_column, language_field, ray_address,
                                    ray_actors):
            for key, value in done.items():
                totals[key] += value
        totals["seconds"] = round(time.perf_counter() - start, 3)
        return totals
    with progress(total=len(todo), desc="matching", unit="shard", enabled=show_progress) as bar:
        if workers > 1 and len(todo) > 1:  # processes: the automaton releases no GIL, threads would not help
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(workers, len(todo)), initializer=_start_worker,
                                     initargs=(entries, rule, str(out), caption_column, language_field)) as pool:
                for done in pool.map(_worker_match, todo):
                    for key, value in done.items():
                        totals[key] += value
                    bar.update(1)
        else:
            matcher = LanguageMatcher(entries, rule)
            totals["automaton_seconds"] = round(time.perf_counter() - start, 3)
            for shard in todo:
                for key, value in match_shard(shard, matcher, out, caption_column, language_field).items():
                    totals[key] += value
                bar.update(1)
    totals["seconds"] = round(time.perf_counter() - start, 3)
    return totals


_WORKER: "_ShardMatcher | None" = None


def _start_worker(*args) -> None:
    global _WORKER
    _WORKER = _ShardMatcher(*args)  # one automaton per process


def _worker_match(shard: Shard) -> dict:
    return _WORKER({"name": shard.name, "url": shard.url, "kind": shard.kind})


class _ShardMatcher:
    """One automaton per Ray actor (or worker process); each row is one shard, matched and saved there."""

    def __init__(self, entries: dict[str, list[str]], rule: str, out: str, caption_column: str | None,
                 language_field: str | None):
        self.matcher, self.out = LanguageMatcher(entries, rule), Path(out)
        self.caption_column, self.language_field = caption_column, language_field

    def __call__(self, row: dict) -> dict:
        shard = Shard(str(row["name"]), str(row["url"]), str(row["kind"]))
        return match_shard(shard, self.matcher, self.out, self.caption_column, self.language_field)


def _match_with_ray(todo: list[Shard], entries: dict[str, list[str]], rule: str, out: Path,
                    caption_column: str | None, language_field: str | None, address: str | None, actors: int):
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("the Ray engine needs Ray Data: pip install 'ray[data]'") from None
    if not todo:
        return []
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [{"name": s.name, "url": s.url, "kind": s.kind} for s in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(
            _ShardMatcher, concurrency=max(1, min(actors, len(items))),
            fn_constructor_args=(entries, rule, str(out), caption_column, language_field))
        return dataset.take_all()
    finally:
        if started:
            ray.shutdown()


def read_matches(out: Path, name: str, *fields: str) -> dict:
    """A shard's saved matches: only ``fields`` (all when none are named) are read from the file."""
    path = out / "matches" / f"{name}.npz"
    if not path.is_file():
        raise CurationError(f"shard {name} has not been matched (no {path}): run `clipforge curate match` for it")
    with np.load(path) as data:
        return {k: data[k] for k in fields or data.files}


def merge_counts(out: str | os.PathLike) -> np.ndarray:
    """Sum the per-shard counts into ``DIR/counts.npy``; every shard must have been matched."""
    out = Path(out)
    run = read_run(out)
    missing = [name for name, _, _ in run["shards"] if not (out / "matches" / f"{name}.npz").is_file()]
    if missing:
        raise CurationError(f"{len(missing)} shard(s) not matched yet (first: {missing[0]}): finish "
                            "`clipforge curate match` on every shard before merging")
    total = np.zeros(run["entries"], dtype=np.int64)
    for name, _, _ in run["shards"]:
        total += read_matches(out, name, "counts")["counts"]
    with atomic_path(out / "counts.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, total)
    return total


def probabilities(run: dict, counts: np.ndarray, t: float, per_language: bool = False,
                  reference: str = "en") -> tuple[np.ndarray, dict[str, float]]:
    """Per-entry keep probabilities and the threshold of each list. ``per_language`` (MetaCLIP 2): the reference
    language's list takes ``t``; every other list the threshold that keeps the same share of its matches."""
    t = bal.check_threshold(t)
    ranges = {language: slice(offset, offset + size) for language, offset, size in run.get("languages", [])}
    if not per_language or len(ranges) < 2:
        return bal.keep_probabilities(counts, t), {language: t for language in ranges} or {ALL: t}
    if reference not in ranges:
        raise CurationError(f"--reference-language {reference!r} has no list; the lists are {', '.join(ranges)}")
    share = bal.tail_share(counts[ranges[reference]], t)
    result, thresholds = np.ones(len(counts)), {}
    for language, part in ranges.items():
        thresholds[language] = t if language == reference else bal.threshold_for_share(counts[part], share)
        result[part] = bal.keep_probabilities(counts[part], thresholds[language])
    return result, thresholds


def balance_pool(out: str | os.PathLike, t: float, seed: int = 0, per_language: bool = False,
                 reference: str = "en") -> dict:
    """Keep masks for threshold ``t`` (``DIR/balanced/t{t}-seed{seed}/``, ``...-lang`` per language) and a summary
    with counts before/after."""
    out = Path(out)
    t = bal.check_threshold(t)
    run = read_run(out)
    counts = np.load(out / "counts.npy") if (out / "counts.npy").is_file() else merge_counts(out)
    probabilities_, thresholds = probabilities(run, counts, t, per_language, reference)
    name = f"t{t:g}-seed{seed}" + ("-lang" if per_language else "")
    after = np.zeros_like(counts)
    summary = {"t": t, "seed": seed, "thresholds": thresholds, "samples": 0, "matched": 0, "kept": 0, "expected_kept": 0.0,
               "expected_sd": 0.0, "shards": {}}
    variance = 0.0
    with_tmp = out / "balanced" / f".{name}.partial"
    with_tmp.mkdir(parents=True, exist_ok=True)
    for shard, _, _ in run["shards"]:
        m = read_matches(out, shard, "offsets", "ids")
        keep = bal.keep_mask(m["offsets"], m["ids"], bal.sample_ids(shard, len(m["offsets"]) - 1), probabilities_,
                             seed)
        np.save(with_tmp / f"{shard}.npy", keep)
        lengths = np.diff(m["offsets"])
        kept_pairs = np.repeat(keep, lengths)
        after += np.bincount(m["ids"][kept_pairs], minlength=len(counts))
        mean, var = bal.expected_kept(m["offsets"], m["ids"], probabilities_)
        summary["samples"] += len(keep)
        summary["matched"] += int((lengths > 0).sum())
        summary["kept"] += int(keep.sum())
        summary["expected_kept"] += mean
        variance += var
        summary["shards"][shard] = int(keep.sum())
    summary["expected_sd"] = variance ** 0.5
    np.save(with_tmp / "counts_after.npy", after)
    write_text_atomic(with_tmp / "summary.json", json.dumps(summary, indent=1))
    final = out / "balanced" / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(with_tmp, final)
    return summary


def write_shards(out: str | os.PathLike, balanced: str, dest: str | os.PathLike) -> dict:
    """Curated WebDataset shards: every member of each kept sample copied, plus ``matched.json`` (its entries)."""
    out, dest = Path(out), Path(dest)
    run = read_run(out)
    entries = json.loads((out / "metadata.json").read_text())
    folder = out / "balanced" / balanced
    if not folder.is_dir():
        raise CurationError(f"no balanced set {balanced!r} in {out}/balanced: run `clipforge curate balance` first")
    for shard, url, kind in run["shards"]:  # every check before anything is written
        if kind != "tar":
            raise CurationError(f"{url}: only WebDataset shards can be written as shards (this pool is a table)")
        if not os.path.isfile(url):
            raise CurationError(f"shard {url} is gone since matching: restore it to write the curated shards")
    dest = check_output_folder(dest, force=False)
    sizes = {}
    with atomic_directory(dest) as tmp:  # the curated set appears whole or not at all
        for shard, url, _ in run["shards"]:
            sizes[shard] = _copy_kept(url, tmp / shard, np.load(folder / f"{shard}.npy"), read_matches(out, shard, "offsets", "ids"),
                                      entries)
        (tmp / "sizes.json").write_text(json.dumps(sizes, indent=1))
    return {"shards": len(sizes), "samples": sum(sizes.values())}


def _copy_kept(url: str, target: Path, keep: np.ndarray, m: dict, entries: list[str]) -> int:
    counts = {"shard_errors": 0}
    samples = list(tars.index_samples(url, counts))
    if len(samples) != len(keep):
        raise CurationError(f"{url} changed since matching ({len(samples)} samples, {len(keep)} matched): match again")
    written = 0
    with tarfile.open(target, "w") as tar:
        for i, sample in enumerate(samples):
            if not keep[i]:
                continue
            key = sample["__key__"]
            for field, location in sample.items():
                if field.startswith("__"):
                    continue
                _add(tar, f"{key}.{field}", tars.read_location(location))
            matched = [entries[j] for j in m["ids"][m["offsets"][i]:m["offsets"][i + 1]]]
            _add(tar, f"{key}.matched.json", json.dumps(matched, ensure_ascii=False).encode())
            written += 1
    return written


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def stats_table(out: str | os.PathLike, balanced: str, top: int = 10) -> str:
    """Head and tail entries before and after balancing, entries hit, samples kept, as text."""
    out = Path(out)
    entries = json.loads((out / "metadata.json").read_text())
    before = np.load(out / "counts.npy")
    folder = out / "balanced" / balanced
    after = np.load(folder / "counts_after.npy")
    summary = json.loads((folder / "summary.json").read_text())
    order = np.argsort(-before, kind="stable")
    lines = [f"samples {summary['samples']}, matched {summary['matched']}, kept {summary['kept']} "
             f"(expected {summary['expected_kept']:.0f} +- {summary['expected_sd']:.0f}); entries hit "
             f"{int((before > 0).sum())} of {len(entries)} before, {int((after > 0).sum())} after; t = {summary['t']:g}",
             f"{'entry':<32} {'before':>10} {'after':>10}"]
    for i in order[:top]:
        lines.append(f"{entries[i][:32]:<32} {before[i]:>10} {after[i]:>10}")
    hit = order[before[order] > 0]
    if len(hit) > top:
        lines.append("...")
        for i in hit[-top:]:
            lines.append(f"{entries[i][:32]:<32} {before[i]:>10} {after[i]:>10}")
    return "\n".join(lines)


def plot_counts(out: str | os.PathLike, balanced: str, path: str | os.PathLike) -> Path:
    """Sorted entry counts before and after balancing on log-log axes, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the plot needs matplotlib: pip install 'clipforge[plot]'") from None
    out = Path(out)
    before = np.sort(np.load(out / "counts.npy"))[::-1]
    after = np.sort(np.load(out / "balanced" / balanced / "counts_after.npy"))[::-1]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for values, label in ((before, "before"), (after, "after")):
        hit = values[values > 0]
        axes.loglog(np.arange(1, len(hit) + 1), hit, label=f"{label} ({len(hit)} entries hit)")
    summary = json.loads((out / "balanced" / balanced / "summary.json").read_text())
    axes.axhline(summary["t"], color="gray", linestyle="--", linewidth=0.8, label=f"t = {summary['t']:g}")
    axes.set_xlabel("entry rank")
    axes.set_ylabel("matches")
    axes.set_title("metadata entry counts")
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return path
