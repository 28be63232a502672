"""Dynamic batching: requests from many connections are encoded together.

``Batcher.encode(kind, inputs)`` (awaited on the event loop) queues the inputs; one worker thread takes the oldest
waiting request, waits until ``max_batch`` inputs of the same kind are queued or the oldest has waited ``max_wait_s``,
encodes them in one call, and hands each request its rows. The wait is skipped when no other request is being
prepared (``with batcher.preparing():`` around decoding and tokenizing): a lone client pays no batching delay. The model never runs on the event loop. The queue is
bounded in inputs: when full, ``QueueFull`` (the service answers 503 with Retry-After). ``close()`` stops taking new
work and finishes what is queued (graceful shutdown).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import threading
import time
from typing import Callable

import numpy as np


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the server is busy (queue full); retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Closed(Exception):
    """The batcher is shutting down."""


@dataclasses.dataclass
class _Job:
    inputs: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    def __init__(self, encoders: dict[str, Callable[[np.ndarray], np.ndarray]], max_batch: int, max_wait_s: float,
                 max_queue: int, observe: Callable[[str, int, float], None] | None = None):
        self.encoders = encoders
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.observe = observe  # (kind, batch size, seconds) after each batch
        self._queues: dict[str, collections.deque[_Job]] = {kind: collections.deque() for kind in encoders}
        self._counts = dict.fromkeys(encoders, 0)  # queued inputs per kind
        self._cond = threading.Condition()
        self._closing = False
        self._preparing = 0  # requests decoding/tokenizing their inputs: about to be queued
        self._seconds_per_input = 0.01  # running estimate, for Retry-After
        self._thread = threading.Thread(target=self._work, name="clipforge-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Inputs waiting (not yet in a batch)."""
        return sum(self._counts.values())

    @contextlib.contextmanager
    def preparing(self):
        """Mark a request as about to queue inputs, so that the worker waits for it (up to ``max_wait_s``)."""
        with self._cond:
            self._preparing += 1
        try:
            yield
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify()

    async def encode(self, kind: str, inputs: np.ndarray) -> np.ndarray:
        return await self.submit(kind, inputs)

    def submit(self, kind: str, inputs: np.ndarray) -> asyncio.Future:
        """Queue ``inputs`` (on the event loop's thread); the future gets their rows."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down")
            if self.depth + len(inputs) > self.max_queue:
                wait = (self.depth + len(inputs)) * self._seconds_per_input
                raise QueueFull(max(1, math.ceil(wait)))
            self._queues[kind].append(_Job(inputs, future, loop, time.monotonic()))
            self._counts[kind] += len(inputs)
            self._cond.notify()
        return future

    def _next_batch(self) -> tuple[str, list[_Job]] | None:
        """Under the lock: wait for work, then for the batch to fill or its oldest input's deadline."""
        while not self._closing and not self.depth:
            self._cond.wait()
        if not self.depth:
            return None  # closing, nothing left
        kind = min((k for k, q in self._queues.items() if q), key=lambda k: self._queues[k][0].enqueued)
        queue = self._queues[kind]
        deadline = queue[0].enqueued + self.max_wait_s
        while not self._closing and self._counts[kind] < self.max_batch and self._preparing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        jobs, size = [], 0
        while queue and (not jobs or size + len(queue[0].inputs) <= self.max_batch):
            job = queue.popleft()
            self._counts[kind] -= len(job.inputs)
            if job.future.cancelled():  # its request failed or went away: not worth encoding
                continue
            jobs.append(job)
            size += len(job.inputs)
        return kind, jobs  # empty when every job taken was cancelled

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            if batch[1]:
                self._run(*batch)

    def _run(self, kind: str, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            inputs = np.concatenate([job.inputs for job in jobs]) if len(jobs) > 1 else jobs[0].inputs
            encode = self.encoders[kind]
            # one request larger than max_batch is encoded in max_batch pieces
            outputs = np.concatenate([encode(inputs[i:i + self.max_batch])
                                      for i in range(0, len(inputs), self.max_batch)])
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request, the worker keeps going
            for job in jobs:
                job.loop.call_soon_threadsafe(_settle, job.future, None, e)
            return
        seconds = time.perf_counter() - start
        self._seconds_per_input = 0.8 * self._seconds_per_input + 0.2 * seconds / max(1, len(inputs))
        offset = 0
        for job in jobs:
            rows = outputs[offset:offset + len(job.inputs)]
            offset += len(job.inputs)
            job.loop.call_soon_threadsafe(_settle, job.future, rows)
        if self.observe is not None:
            self.observe(kind, len(inputs), seconds)

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new work, finish the queued work, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
