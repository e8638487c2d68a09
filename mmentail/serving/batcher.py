"""Merging concurrent requests into one model call, and splitting the answer back.

A model call costs much the same for one pair as for a few dozen, so requests
that arrive together are answered by one call: the first request waits at most
`timeout` seconds for others, up to `max_batch` pairs in all. Items are checked
before they get here (:func:`mmentail.serving.rest.parse_predict`); should the
model still refuse a merged batch, each request in it is run again alone, so
one bad item fails only its own request.

Example:
    batcher = Batcher(export.predict, max_batch=64, timeout=0.005)
    outputs = batcher.submit({"text_1": [...], "image_1": [...], ...})  # from any thread
    batcher.close()
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Callable

import numpy as np
import tensorflow as tf

Columns = dict[str, list[bytes]]
Outputs = dict[str, np.ndarray]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Job:
    columns: Columns
    size: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: Outputs | None = None
    error: BaseException | None = None


@dataclasses.dataclass
class BatchStats:
    """What the batcher has done: model calls, pairs, requests, the largest call."""

    model_calls: int = 0
    pairs: int = 0
    requests: int = 0
    largest_batch: int = 0


class Batcher:
    """Runs `predict` on one thread, over requests merged from many.

    Args:
        predict: maps a batch of columns (input name -> list of bytes) to
            outputs (name -> array with the batch first).
        max_batch: most pairs in one model call; a larger request runs alone,
            in calls of `max_batch`.
        timeout: seconds the first request of a batch waits for more.
    """

    def __init__(self, predict: Callable[[Columns], Outputs], max_batch: int = 64,
                 timeout: float = 0.005):
        self._predict, self.max_batch, self.timeout = predict, max_batch, timeout
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: list[_Job | None] = []
        self._thread = threading.Thread(target=self._loop, name="mmentail-batcher",
                                        daemon=True)
        self._thread.start()

    def submit(self, columns: Columns) -> Outputs:
        """Answers one request's columns (called from any thread; blocks until done).

        Raises:
            tf.errors.InvalidArgumentError: the model refused an item of this request.
            RuntimeError: the batcher is closed.
        """
        job = _Job(columns, len(next(iter(columns.values()))))
        self._queue.put(job)
        while not job.done.wait(1.0):
            if not self._thread.is_alive():  # closed before this job was taken
                raise RuntimeError("the batcher is closed")
        if job.error is not None:
            raise job.error
        return job.outputs

    def close(self) -> None:
        """Answers what is queued, then stops the thread."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            jobs = self._next_batch()
            if not jobs:
                return
            self._run(jobs)

    def _next_batch(self) -> list[_Job]:
        """The next requests to run together; [] once closed."""
        first = self._pending.pop() if self._pending else self._queue.get()
        if first is None:
            return []
        jobs, size = [first], first.size
        deadline = time.monotonic() + self.timeout
        while size < self.max_batch:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is None or size + job.size > self.max_batch:
                self._pending.append(job)  # the next batch's first (or the close)
                break
            jobs.append(job)
            size += job.size
        return jobs

    def _run(self, jobs: list[_Job]) -> None:
        """One model call for `jobs`; if the model refuses it, one call per job."""
        try:
            outputs = self._call({name: [item for job in jobs for item in job.columns[name]]
                                  for name in jobs[0].columns})
        except tf.errors.InvalidArgumentError as error:
            if len(jobs) == 1:
                return self._finish(jobs[0], error=error)
            log.info("a merged batch of %d requests was refused; running them one by one",
                     len(jobs))
            for job in jobs:
                self._run([job])
            return
        except Exception as error:  # answered as a server error
            for job in jobs:
                self._finish(job, error=error)
            return
        self.stats.requests += len(jobs)
        start = 0
        for job in jobs:
            self._finish(job, {name: values[start:start + job.size]
                               for name, values in outputs.items()})
            start += job.size

    def _call(self, columns: Columns) -> Outputs:
        """`predict` in calls of at most `max_batch` pairs."""
        size = len(next(iter(columns.values())))
        parts = []
        for start in range(0, max(size, 1), self.max_batch):
            parts.append(self._predict({name: values[start:start + self.max_batch]
                                        for name, values in columns.items()}))
            self.stats.model_calls += 1
            self.stats.largest_batch = max(self.stats.largest_batch,
                                           min(self.max_batch, size - start))
        self.stats.pairs += size
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    @staticmethod
    def _finish(job: _Job, outputs: Outputs | None = None,
                error: BaseException | None = None) -> None:
        job.outputs, job.error = outputs, error
        job.done.set()

