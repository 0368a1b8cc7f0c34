"""One recognizer shared by all sessions: batching, priorities, and threads off the event loop.

Sessions hand their decode requests to `ModelWorker.decode` and await the answer. A single
consumer task takes the waiting requests (finals first, then partials, oldest first) and runs
them as batches on the model's *lanes*: threads that each run one model call at a time. The
event loop never runs model code, so a slow decode delays answers, not the reading of audio.

Lanes: a recognizer that can run several calls at once says so (`ModelInfo.lanes`: the Whisper
recognizer keeps one single-threaded CTranslate2 replica per core). Measured on the 2-core
reference machine, tiny.en: one decode of a 12 s window costs 812 ms on one replica with two
threads and 430 ms on a single thread (a decoder step of a small model is too short to share
between cores), and two single-thread replicas side by side finish a request every 224 ms
(BENCHMARKS.md, "Model lanes"). A lane that frees up takes the waiting finals, never with a
partial; or else the partials, as its share of those waiting (`1/lanes` of them, up to
`max_batch`). So calls stay short, and a final waits for at most one running call, never for
partials batched with it. With several lanes each final takes a call of its own: two finals in
one call both wait for the pair (tiny.en, four 26 s segments' finals on one thread: 355-492 ms
alone, 684-794 ms as a pair, 0.87-0.95 of the two alone), while the second lane, busy with a
partial, frees up in about half a partial call. With one lane (Qwen3-ASR, whose streams share
lockstep batches) a batch takes every waiting request of a kind up to `max_batch`.

Besides decode requests the worker runs *jobs*: any other model work (one window of a whole-file
transcription for the HTTP face) as a callable, alone on one lane, after every waiting final and
partial. A long file is split into jobs by its caller, so live sessions wait at most one job
between two of their batches (with one lane; with more they go on beside it).

A partial whose answer turns out to be its segment's final (the segment ended and the partial
heard all of it: `Session.final_in_flight`) is *promoted* while it still waits (`promote`): it
is queued once more with a final's priority, and whichever of its two entries a lane takes
first runs; the other is skipped. A final so never waits behind other streams' partials
because its request was queued as a partial.

Queue policy: the queue is bounded by `max_pending`. Each session has at most one request in
flight, so with `max_pending` >= the server's session limit a put never waits; if it ever would,
the session waits (backpressure) rather than the request being dropped. A promotion that finds
the queue full is not made (the request keeps its place as a partial).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from streaming.errors import ModelError
from streaming.recognizer import DecodeRequest, Hypothesis, Recognizer

log = logging.getLogger(__name__)

FINAL, PARTIAL, JOB = 0, 1, 2  # queue priorities: a final holds up a user waiting on it
T = TypeVar("T")
# what the worker tells an observer after each model call: (kind, requests, seconds);
# kind is "final" (the batch held a final), "partial" or "job"
Observer = Callable[[str, int, float], None]


@dataclass
class WorkerStats:
    """Counters for /health and benchmarks (`busy_s` adds up the time of every lane)."""

    batches: int = 0
    requests: int = 0
    finals: int = 0
    busy_s: float = 0.0
    largest_batch: int = 0
    failures: int = 0
    promoted: int = 0  # partials given a final's priority while waiting (`promote`)


class ModelWorker:
    """Serialises model calls from many sessions into batches on one thread."""

    def __init__(
        self,
        recognizer: Recognizer,
        *,
        max_batch: int = 8,
        max_pending: int = 256,
        observer: Observer | None = None,
    ):
        self.recognizer = recognizer
        self.max_batch = max_batch
        self.lanes = max(1, recognizer.info.lanes)
        self.stats = WorkerStats()
        self.observer = observer
        # (priority, order, a DecodeRequest or a job callable, future)
        self._queue: asyncio.PriorityQueue[tuple[int, int, Any, asyncio.Future[Any]]] = (
            asyncio.PriorityQueue(max_pending)
        )
        self._order = itertools.count()
        self._executor = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="recognizer")
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()  # model calls running, one per busy lane
        # futures of the partial requests queued and not yet answered, by the request's identity
        # (`decode` holds the request meanwhile, so its id is not reused): `promote`
        self._waiting_partials: dict[int, asyncio.Future[Any]] = {}
        self._taken: set[asyncio.Future[Any]] = set()  # futures of requests on a lane

    def start(self) -> None:
        """Starts the consumer task on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="model-worker")

    async def stop(self) -> None:
        """Stops taking work; requests still queued fail with ModelError."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._calls:  # calls already on a lane finish and answer their callers
            await asyncio.gather(*self._calls, return_exceptions=True)
        while not self._queue.empty():
            *_, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(ModelError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def decode(self, request: DecodeRequest) -> Hypothesis:
        """Queues one request and waits for its hypothesis.

        Raises:
            ModelError: the recognizer failed on this request.
        """
        future: asyncio.Future[Hypothesis] = asyncio.get_running_loop().create_future()
        priority = FINAL if request.final else PARTIAL
        await self._queue.put((priority, next(self._order), request, future))
        if priority == PARTIAL:
            self._waiting_partials[id(request)] = future
        try:
            return await future
        finally:
            self._waiting_partials.pop(id(request), None)

    def promote(self, request: DecodeRequest) -> bool:
        """Gives a partial request still waiting a final's priority (its answer will be its
        segment's final); whether it was promoted (not if it already runs or is answered)."""
        future = self._waiting_partials.pop(id(request), None)
        if future is None or future.done() or future in self._taken:
            return False
        try:
            self._queue.put_nowait((FINAL, next(self._order), request, future))
        except asyncio.QueueFull:
            return False
        self.stats.promoted += 1
        return True

    async def run(self, job: Callable[[], T]) -> T:
        """Runs `job` on the model thread, alone, once no final or partial is waiting.

        Raises:
            ModelError: the job raised (its exception is chained).
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((JOB, next(self._order), job, future))
        return await future

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def busy_lanes(self) -> int:
        """Lanes running a model call now."""
        return len(self._calls)

    @property
    def has_spare_lane(self) -> bool:
        """Whether one more model call could start now and still leave a lane free."""
        return self.lanes - len(self._calls) - self._queue.qsize() >= 2

    def partial_step_ms(self, step_ms: int, early_step_ms: int) -> int:
        """How much new audio a session's next partial decode should wait for, under this load.

        - `early_step_ms` while a lane is spare: the decode costs no other stream anything, and
          the lane kept free takes a final at once (with one lane, none is ever spare);
        - `step_ms` while nothing waits for a lane;
        - one more `step_ms` per lane's worth of requests already waiting: partials are shed
          before they queue up, so finals find a lane sooner and every stream keeps its share.
          Measured (BENCHMARKS.md, "Model lanes"): the WER does not depend on the step, and
          with four continuous streams ... .
        """
        if self.has_spare_lane:
            return early_step_ms
        return int(step_ms * (1 + self._queue.qsize() / self.lanes))

    async def _run(self) -> None:
        free_lanes = asyncio.Semaphore(self.lanes)
        while True:
            await free_lanes.acquire()
            first = await self._queue.get()
            if first[0] == JOB:
                call = self._run_job(first[2], first[3])
            else:
                batch = [first]
                # Finals go without partials: a partial riding along would hold up a
                # user waiting on the final (measured: a final in a batch of four partials took
                # 2.2 s instead of 0.6). Partials go as one lane's share of those waiting, so
                # that the calls stay short and a final never waits long for a free lane.
                limit = self.max_batch
                if first[0] == PARTIAL:
                    limit = min(limit, math.ceil((1 + self._queue.qsize()) / self.lanes))
                elif self.lanes > 1:
                    limit = 1  # the next final takes the next free lane (module docstring)
                while len(batch) < limit and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item[0] != first[0]:  # another kind: back to wait for its own call
                        self._queue.put_nowait(item)
                        break
                    batch.append(item)
                # skipped: cancelled (the session is gone or superseded the request), or the
                # other entry of a promoted request, taken already
                live = [item for item in batch if not item[3].done() and item[3] not in self._taken]
                self._taken.update(item[3] for item in live)
                if not live:
                    free_lanes.release()
                    continue
                call = self._run_batch(live)
            task = asyncio.create_task(call, name="model-call")
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
            task.add_done_callback(lambda _: free_lanes.release())

    async def _run_batch(self, live: list[tuple[int, int, Any, asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        requests = [item[2] for item in live]
        started = time.perf_counter()
        answers: list[Hypothesis | Exception]
        try:
            answers = list(await loop.run_in_executor(self._executor, self._decode, requests))
        except Exception:  # the batch failed: retry one by one so only the culprit fails
            log.exception("batch of %d failed; retrying requests one by one", len(requests))
            answers = []
            for request in requests:
                try:
                    answers.extend(
                        await loop.run_in_executor(self._executor, self._decode, [request])
                    )
                except Exception as exc:
                    log.exception("decode failed")
                    self.stats.failures += 1
                    answers.append(ModelError(f"the recognizer failed: {exc}"))
        elapsed = time.perf_counter() - started
        self._count(requests, elapsed)
        if self.observer is not None:
            kind = "final" if any(r.final for r in requests) else "partial"
            self.observer(kind, len(requests), elapsed)
        for (_, _, _, future), answer in zip(live, answers, strict=True):
            self._taken.discard(future)
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _run_job(self, job: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        if future.done():  # the caller is gone
            return
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, job)
        except Exception as exc:
            log.exception("model job failed")
            self.stats.failures += 1
            if not future.done():
                error = ModelError(f"the recognizer failed: {exc}")
                error.__cause__ = exc
                future.set_exception(error)
            return
        finally:
            if self.observer is not None:
                self.observer("job", 1, time.perf_counter() - started)
        if not future.done():
            future.set_result(result)

    def _decode(self, requests: list[DecodeRequest]) -> list[Hypothesis]:
        answers = self.recognizer.decode(requests)
        if len(answers) != len(requests):
            raise RuntimeError(f"recognizer answered {len(answers)} of {len(requests)} requests")
        return answers

    def _count(self, requests: list[DecodeRequest], seconds: float) -> None:
        self.stats.batches += 1
        self.stats.requests += len(requests)
        self.stats.finals += sum(r.final for r in requests)
        self.stats.busy_s += seconds
        self.stats.largest_batch = max(self.stats.largest_batch, len(requests))
