"""clipforge serve under load on loopback: throughput and p50/p99 latency with dynamic batching, against batch-1
serving and against the model's own best batched throughput (the limit), all measured in the same run.

    python benchmarks/bench_serve.py                          # ViT-B-32 (random weights: speed does not need real ones)
    python benchmarks/bench_serve.py --model tiny-vit --requests 200 --seconds 10
    python benchmarks/bench_serve.py --runtime onnx --model BUNDLE_DIR

1. Model limit: ``encode_image`` / ``encode_text`` on already preprocessed / tokenized inputs at batch 1, 8 and
   ``--max-batch`` in this process with the server's thread count; the best inputs/s is the limit.
2. For dynamic batching (``--max-batch``, ``--max-wait-ms``) and for batch-1 serving (``--max-batch 1``), a server
   (``clipforge serve``, its own process) answers ``--requests`` requests (or ``--seconds``, whichever ends first)
   of one input each from 1, 16 and 64 concurrent clients, texts and small PNG images (base64), float responses.
   The client is a minimal asyncio HTTP/1.1 keep-alive client (requests serialised in advance), so that as little
   CPU as possible is taken from the server on a small machine.
3. Targets (issue 14): at concurrency 16 the dynamic-batching service reaches >= 85% of the model's limit for images
   and texts, and its p99 latency stays under max wait + 2 x the model's compute time of a full batch at that
   concurrency (16 inputs, from step 1). Each step also reports the batches the server formed (mean size and compute time, from its
   /metrics before and after the step).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

TEXTS = [f"a photo of a {c} {s} number {i}" for i, (c, s) in
         enumerate((c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "cross"))]


def model_limit(model: str, runtime: str, threads: int, max_batch: int, image_size=(64, 64)) -> dict:
    """Best inputs/s of the model alone, per kind, on preprocessed inputs."""
    from clipforge.serving import ServeConfig
    from clipforge.serving.encoders import load_model

    served = load_model(ServeConfig(model=model, runtime=runtime, device="cpu", threads=threads))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (*image_size, 3), dtype=np.uint8))
    pixels = served.preprocess(image)
    ids, _ = served.tokenize(TEXTS)
    out = {}
    for kind, one, encode in (("image", pixels[None], served.encode_images), ("text", ids[:1], served.encode_texts)):
        best = {}
        for batch in sorted({1, 8, 16, max_batch}):
            x = np.repeat(one, batch, axis=0)
            encode(x)  # warm-up
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 3 or n < 3 * batch:
                encode(x)
                n += batch
            best[batch] = n / (time.perf_counter() - start)
        out[kind] = {"per_batch": best, "limit": max(best.values())}  # inputs/s by batch size
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, runtime: str, threads: int, max_batch: int, max_wait_ms: float):
    port = _free_port()
    cmd = [sys.executable, "-m", "clipforge", "serve", model, "--runtime", runtime, "--device", "cpu", "--port",
           str(port), "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if _get(port, "/readyz").startswith("HTTP/1.1 200"):
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def _get(port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _request(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/embeddings HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(data)).encode() + b"\r\n\r\n" + data)


async def _client(port: int, requests: list[bytes], latencies: list, statuses: list, stop_at: float, counter):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            statuses.append(int(head.split(b" ", 2)[1]))
    finally:
        writer.close()


def load(port: int, requests: list[bytes], concurrency: int, count: int, seconds: float) -> dict:
    latencies, statuses = [], []

    async def main():
        counter = iter(range(count))
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*[_client(port, requests, latencies, statuses, stop_at, counter)
                               for _ in range(concurrency)])

    # warm-up: a few requests, not counted
    asyncio.run(_warm(port, requests))
    start = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - start
    ok = sum(s == 200 for s in statuses)
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(statuses), "ok": ok, "per_s": ok / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


async def _warm(port, requests):
    await _client(port, requests, [], [], time.perf_counter() + 30, iter(range(4)))


def _batch_totals(port: int, kind: str) -> tuple[float, float, float]:
    """(batches, inputs, seconds) the server has encoded so far for ``kind``, from /metrics."""
    values = {}
    for line in _get(port, "/metrics").splitlines():
        for name in ("clipforge_batch_seconds_count", "clipforge_batch_size_sum", "clipforge_batch_seconds_sum"):
            if line.startswith(f'{name}{{kind="{kind}"}}'):
                values[name] = float(line.split()[-1])
    return (values.get("clipforge_batch_seconds_count", 0.0), values.get("clipforge_batch_size_sum", 0.0),
            values.get("clipforge_batch_seconds_sum", 0.0))


def _png(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def serve_runs(args, max_batch: int, concurrencies) -> dict:
    proc, port = start_server(args.model, args.runtime, args.threads, max_batch, args.max_wait_ms)
    try:
        bodies = {"text": [_request({"input": t}) for t in TEXTS],
                  "image": [_request({"input": [_png(i)], "modality": "image"}) for i in range(8)]}
        out = {}
        for kind, requests in bodies.items():
            out[kind] = []
            for c in concurrencies:
                before = _batch_totals(port, kind)
                row = load(port, requests, c, args.requests, args.seconds)
                batches, inputs, seconds = (a - b for a, b in zip(_batch_totals(port, kind), before))
                row.update(mean_batch_size=inputs / max(batches, 1), mean_batch_ms=1000 * seconds / max(batches, 1))
                out[kind].append(row)
                print(f"  max_batch {max_batch:>2} {kind:5} c={c:>2}: {row['per_s']:7.1f}/s  p50 {row['p50_ms']:7.1f} "
                      f"ms  p99 {row['p99_ms']:7.1f} ms  ({row['ok']}/{row['requests']} ok; mean batch "
                      f"{row['mean_batch_size']:.1f} in {row['mean_batch_ms']:.0f} ms)", file=sys.stderr, flush=True)
        return out
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=400, help="requests per load step at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per load step at most")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    concurrencies = (1, 16, 64)
    print(f"[model alone, {args.threads} threads]", file=sys.stderr, flush=True)
    limit = model_limit(args.model, args.runtime, args.threads, args.max_batch)
    for kind, row in limit.items():
        print(f"  {kind}: " + ", ".join(f"batch {b}: {v:.1f}/s" for b, v in row["per_batch"].items()),
              file=sys.stderr, flush=True)
    print("[dynamic batching]", file=sys.stderr, flush=True)
    dynamic = serve_runs(args, args.max_batch, concurrencies)
    print("[batch-1 serving]", file=sys.stderr, flush=True)
    single = serve_runs(args, 1, concurrencies)
    summary = {}
    for kind in ("image", "text"):
        at16 = next(r for r in dynamic[kind] if r["concurrency"] == 16)
        # a request may arrive just after a full batch started: it waits for that batch, then its own
        full = min(16, args.max_batch)
        bound_ms = args.max_wait_ms + 2 * 1000 * full / limit[kind]["per_batch"][full]
        summary[kind] = {"model_limit_per_s": limit[kind]["limit"], "service_c16_per_s": at16["per_s"],
                         "share_of_limit": at16["per_s"] / limit[kind]["limit"],
                         "batch1_c16_per_s": next(r for r in single[kind] if r["concurrency"] == 16)["per_s"],
                         "p99_ms": at16["p99_ms"], "p99_bound_ms": bound_ms, "p99_within_bound": at16["p99_ms"] <= bound_ms}
    results = {"model": args.model, "runtime": args.runtime, "threads": args.threads, "max_batch": args.max_batch,
               "max_wait_ms": args.max_wait_ms, "limit": limit, "dynamic": dynamic, "batch1": single,
               "summary": summary}
    print(json.dumps(summary, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1))
    for kind, s in summary.items():
        print(f"{kind}: service at c=16 {s['service_c16_per_s']:.1f}/s = {100 * s['share_of_limit']:.0f}% of the "
              f"model's {s['model_limit_per_s']:.1f}/s (target >= 85%); batch-1 serving {s['batch1_c16_per_s']:.1f}/s; "
              f"p99 {s['p99_ms']:.0f} ms vs bound {s['p99_bound_ms']:.0f} ms")


if __name__ == "__main__":
    main()
