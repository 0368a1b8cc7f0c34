"""The model worker: lanes, priorities, shares of a batch, and failures confined to their caller."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from streaming.errors import ModelError
from streaming.recognizer import DecodeRequest, Hypothesis, ModelInfo, Recognizer, Word
from streaming.worker import ModelWorker

pytestmark = pytest.mark.asyncio


def request(name: str, *, final: bool = False) -> DecodeRequest:
    return DecodeRequest(audio=np.zeros(1600, np.float32), context=name, final=final)


class Recording(Recognizer):
    """Answers each request with its context as the text, after `hold_s`; records the calls.

    `together` (a barrier) makes every call wait until that many calls run at the same time:
    with fewer lanes than parties the barrier breaks and the call raises.
    """

    def __init__(self, lanes: int, hold_s: float = 0.0, together: int = 0):
        self.info = ModelInfo(name="recording", lanes=lanes)
        self.hold_s = hold_s
        self.barrier = threading.Barrier(together, timeout=2.0) if together else None
        self.calls: list[list[str]] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        with self._lock:
            self.calls.append([r.context for r in requests])
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.barrier is not None:
                self.barrier.wait()
            time.sleep(self.hold_s)
            if any(r.context == "poison" for r in requests):
                raise RuntimeError("a corrupt model state")
            return [Hypothesis(words=(Word(r.context, 0, 100),)) for r in requests]
        finally:
            with self._lock:
                self.running -= 1


async def queued_then_started(worker: ModelWorker, requests: list[DecodeRequest]):
    """Queues every request before the worker takes any, then starts it; returns the answers."""
    tasks = [asyncio.create_task(worker.decode(r)) for r in requests]
    await asyncio.sleep(0)  # each task has put its request
    worker.start()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_two_lanes_run_two_model_calls_at_the_same_time():
    recognizer = Recording(lanes=2, together=2)
    worker = ModelWorker(recognizer, max_batch=1)
    worker.start()
    try:
        answers = await asyncio.gather(worker.decode(request("a")), worker.decode(request("b")))
    finally:
        await worker.stop()
    assert [a.words[0].text for a in answers] == ["a", "b"]
    assert recognizer.most_at_once == 2


async def test_one_lane_never_runs_two_calls_at_once():
    recognizer = Recording(lanes=1, hold_s=0.05)
    worker = ModelWorker(recognizer, max_batch=1)
    worker.start()
    try:
        await asyncio.gather(*(worker.decode(request(str(i))) for i in range(4)))
    finally:
        await worker.stop()
    assert recognizer.most_at_once == 1
    assert len(recognizer.calls) == 4


async def test_a_free_lane_takes_its_share_of_the_waiting_partials_not_all_of_them():
    """Four waiting partials and two lanes: the first call takes half, not all four; each
    later one half of what still waits, so no call grows long."""
    recognizer = Recording(lanes=2, hold_s=0.05)
    worker = ModelWorker(recognizer, max_batch=8)
    try:
        answers = await queued_then_started(worker, [request(str(i)) for i in range(4)])
    finally:
        await worker.stop()
    assert [len(call) for call in recognizer.calls] == [2, 1, 1]
    assert [a.words[0].text for a in answers] == ["0", "1", "2", "3"]


async def test_finals_go_in_calls_of_their_own():
    """Partials never ride along with a final: the user waiting on it would wait for them."""
    recognizer = Recording(lanes=1)
    worker = ModelWorker(recognizer, max_batch=8)
    kinds = ["p1", "f1", "p2", "f2", "p3"]
    try:
        await queued_then_started(worker, [request(k, final=k[0] == "f") for k in kinds])
    finally:
        await worker.stop()
    assert recognizer.calls == [["f1", "f2"], ["p1", "p2", "p3"]]


async def test_with_two_lanes_two_waiting_finals_run_side_by_side_not_in_one_call():
    """A pair of finals in one call would both wait for the pair; on two lanes each takes one."""
    recognizer = Recording(lanes=2, together=2)  # each call waits until two run at once
    worker = ModelWorker(recognizer, max_batch=8)
    try:
        answers = await queued_then_started(
            worker, [request("f1", final=True), request("f2", final=True)]
        )
    finally:
        await worker.stop()
    assert [a.words[0].text for a in answers] == ["f1", "f2"]
    assert sorted(recognizer.calls) == [["f1"], ["f2"]]
    assert recognizer.most_at_once == 2


async def test_with_one_lane_the_waiting_requests_share_one_call_up_to_max_batch():
    recognizer = Recording(lanes=1)
    worker = ModelWorker(recognizer, max_batch=3)
    try:
        await queued_then_started(worker, [request(str(i)) for i in range(4)])
    finally:
        await worker.stop()
    assert [len(call) for call in recognizer.calls] == [3, 1]


async def test_finals_are_taken_before_partials_that_waited_longer():
    recognizer = Recording(lanes=1)
    worker = ModelWorker(recognizer, max_batch=1)
    try:
        await queued_then_started(worker, [request("p1"), request("p2"), request("f", final=True)])
    finally:
        await worker.stop()
    assert recognizer.calls == [["f"], ["p1"], ["p2"]]


async def test_a_waiting_partial_promoted_to_a_final_goes_before_the_other_partials_once():
    """A partial whose answer became its segment's final (`Session.final_in_flight`) is taken
    with the finals; its entry among the partials is then skipped, so it runs exactly once."""
    recognizer = Recording(lanes=1)
    worker = ModelWorker(recognizer, max_batch=1)
    partials = [request("p1"), request("p2"), request("p3")]
    tasks = [asyncio.create_task(worker.decode(r)) for r in partials]
    await asyncio.sleep(0)
    assert worker.promote(partials[2])
    assert not worker.promote(partials[2])  # once is enough
    assert not worker.promote(request("p1"))  # an equal request that was never queued
    worker.start()
    try:
        answers = await asyncio.gather(*tasks)
    finally:
        await worker.stop()
    assert recognizer.calls == [["p3"], ["p1"], ["p2"]]
    assert [a.words[0].text for a in answers] == ["p1", "p2", "p3"]


async def test_a_partial_already_on_a_lane_is_not_promoted():
    recognizer = Recording(lanes=1, hold_s=0.2)
    worker = ModelWorker(recognizer, max_batch=1)
    worker.start()
    running = request("p1")
    try:
        task = asyncio.create_task(worker.decode(running))
        await asyncio.sleep(0.1)  # the call is on the lane (held 0.2 s)
        assert recognizer.calls == [["p1"]]
        assert not worker.promote(running)
        await task
    finally:
        await worker.stop()
    assert recognizer.calls == [["p1"]]


async def test_a_failing_batch_fails_only_its_culprit():
    recognizer = Recording(lanes=2)
    worker = ModelWorker(recognizer, max_batch=8)
    try:
        answers = await queued_then_started(
            worker, [request("a"), request("poison"), request("b"), request("c")]
        )
    finally:
        await worker.stop()
    assert isinstance(answers[1], ModelError)
    assert [a.words[0].text for i, a in enumerate(answers) if i != 1] == ["a", "b", "c"]
    assert worker.stats.failures == 1


async def test_a_job_runs_on_one_lane_while_decodes_go_on_on_the_other():
    recognizer = Recording(lanes=2)
    worker = ModelWorker(recognizer, max_batch=1)
    worker.start()
    started = threading.Event()
    release = threading.Event()

    def job() -> str:
        started.set()
        assert release.wait(5.0)
        return "done"

    try:
        running = asyncio.create_task(worker.run(job))
        await asyncio.to_thread(started.wait, 5.0)
        answer = await asyncio.wait_for(worker.decode(request("live")), 5.0)
        assert answer.words[0].text == "live"  # not held up by the job
        release.set()
        assert await running == "done"
    finally:
        release.set()
        await worker.stop()


async def test_stop_lets_running_calls_answer_and_fails_the_queued_ones():
    recognizer = Recording(lanes=1, hold_s=0.2)
    worker = ModelWorker(recognizer, max_batch=1)
    worker.start()
    running = asyncio.create_task(worker.decode(request("running")))
    await asyncio.sleep(0.05)  # on the lane now
    queued = asyncio.create_task(worker.decode(request("queued")))
    await asyncio.sleep(0)
    await worker.stop()
    assert (await running).words[0].text == "running"
    with pytest.raises(ModelError, match="shutting down"):
        await queued


class HeldPartials(Recognizer):
    """The scripted recognizer, except that partial decodes wait until `release` is set."""

    def __init__(self) -> None:
        from tests.streaming.fakes import ScriptedRecognizer
        from tests.streaming.test_session import SCRIPT

        self.inner = ScriptedRecognizer(SCRIPT)
        self.info = ModelInfo(name="held", languages=frozenset({"en"}), lanes=2)
        self.release = threading.Event()
        self.partials_started = threading.Event()

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        if not any(r.final for r in requests):
            self.partials_started.set()
            assert self.release.wait(10.0)
        return self.inner.decode(requests)


async def test_a_final_goes_to_a_free_lane_while_its_segments_partial_still_runs():
    """The runner drops the superseded partial: the final is answered on the other lane
    while the partial's model call is still held on the first."""
    from streaming.runner import SessionRunner
    from streaming.session import Session
    from tests.streaming.fakes import frames, s16, silence, tone

    def send(samples: np.ndarray) -> None:
        for frame in frames(s16(samples), 640):
            runner.receive_audio(frame)

    recognizer = HeldPartials()
    worker = ModelWorker(recognizer)
    worker.start()
    events: list = []
    try:
        runner = SessionRunner(Session("s", recognizer.info), worker, events.append)
        send(np.concatenate([silence(0.5), tone(2.4)]))
        await asyncio.to_thread(recognizer.partials_started.wait, 5.0)
        send(silence(1.2))  # the endpoint, with the partial still held
        for _ in range(200):
            if any(e.type == "transcript.final" for e in events):
                break
            await asyncio.sleep(0.01)
        finals = [e for e in events if e.type == "transcript.final"]
        assert [f.text for f in finals] == ["Go forward ten meters."]
        assert not recognizer.release.is_set()  # the partial is still on its lane
    finally:
        recognizer.release.set()
        await worker.stop()


class HeldFirstCall(Recognizer):
    """Scripted answers (partials are finals, as Whisper's); the first call is held until
    `release`; records each call's requests by context ("session" for the session's own)."""

    def __init__(self) -> None:
        from tests.streaming.fakes import ScriptedRecognizer
        from tests.streaming.test_session import SCRIPT

        self.inner = ScriptedRecognizer(SCRIPT)
        self.info = ModelInfo(
            name="held", languages=frozenset({"en"}), word_timestamps=True, partial_is_final=True
        )
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls: list[list[str]] = []

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        self.calls.append([r.context or "session" for r in requests])
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(10.0)
        return self.inner.decode(requests)


async def test_a_waiting_partial_that_became_its_final_is_promoted_by_the_runner(monkeypatch):
    """Under load a session's partial waits in the queue; when its segment ends and it heard
    all of it, its answer is the final, and it runs before other streams' partials that
    queued earlier (without the promotion it would run after them)."""
    from streaming.runner import SessionRunner
    from streaming.session import Session
    from tests.streaming.fakes import frames, s16, silence, tone

    recognizer = HeldFirstCall()
    worker = ModelWorker(recognizer, max_batch=1)
    # the segment holds 3.12 s (the tone, 0.3 s of silence the endpointer gives it, a little
    # pre-roll): the session's partial, 3.2 s into it, heard all of it and comes before the
    # endpoint (0.6 s of silence); with a 2.7 s step it would not and a final decode would run
    monkeypatch.setattr(worker, "partial_step_ms", lambda step_ms, early_step_ms: 3200)
    worker.start()
    events: list = []
    try:
        blocker = asyncio.create_task(worker.decode(request("blocker")))
        await asyncio.to_thread(recognizer.started.wait, 5.0)
        others = [asyncio.create_task(worker.decode(request(f"o{i}"))) for i in (1, 2)]
        runner = SessionRunner(Session("s", recognizer.info), worker, events.append)
        for frame in frames(s16(np.concatenate([silence(0.5), tone(2.4), silence(1.2)])), 640):
            runner.receive_audio(frame)
            await asyncio.sleep(0)  # frames arrive one by one: queued requests get queued
        assert worker.pending == 4  # o1, o2, the session's partial and its promoted entry
        recognizer.release.set()
        await asyncio.gather(blocker, *others)
        for _ in range(200):
            if any(e.type == "transcript.final" for e in events):
                break
            await asyncio.sleep(0.01)
    finally:
        recognizer.release.set()
        await worker.stop()
    assert recognizer.calls == [["blocker"], ["session"], ["o1"], ["o2"]]
    assert worker.stats.promoted == 1
    finals = [e for e in events if e.type == "transcript.final"]
    assert [f.text for f in finals] == ["Go forward ten meters."]


async def test_the_partial_step_is_short_while_a_lane_is_spare_and_grows_with_the_queue():
    recognizer = Recording(lanes=2, hold_s=0.3)
    worker = ModelWorker(recognizer, max_batch=1)
    assert worker.partial_step_ms(1000, 500) == 500  # idle: partials come early
    tasks = [asyncio.create_task(worker.decode(request(str(i)))) for i in range(3)]
    await asyncio.sleep(0)
    assert worker.partial_step_ms(1000, 500) == 2500  # three wait for two lanes
    worker.start()
    try:
        await asyncio.sleep(0.1)  # two run, one waits
        assert worker.partial_step_ms(1000, 500) == 1500
        await asyncio.gather(*tasks)
        assert worker.partial_step_ms(1000, 500) == 500
    finally:
        await worker.stop()


async def test_a_lane_is_spare_only_while_another_would_stay_free():
    recognizer = Recording(lanes=2, hold_s=0.3)
    worker = ModelWorker(recognizer, max_batch=1)
    assert worker.has_spare_lane  # both lanes idle
    worker.start()
    try:
        running = asyncio.create_task(worker.decode(request("a")))
        await asyncio.sleep(0.1)
        assert worker.busy_lanes == 1 and not worker.has_spare_lane  # the last free lane stays
        await running
        assert worker.has_spare_lane
    finally:
        await worker.stop()
    assert not ModelWorker(Recording(lanes=1)).has_spare_lane  # one lane: never spare
