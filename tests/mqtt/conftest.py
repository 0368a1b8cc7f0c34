"""Fixtures of the MQTT tests: a real mosquitto broker per test, the model, running bridges."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from streaming.mqtt.bridge import BridgeConfig, MqttBridge
from streaming.mqtt.calls import CallsConfig
from streaming.mqtt.link import BrokerConfig
from streaming.recognizer import Recognizer
from streaming.worker import ModelWorker
from tests.conftest import MS
from tests.mqtt.taps import Broker
from tests.streaming.fakes import ScriptedRecognizer


@pytest.fixture
def scripted() -> ScriptedRecognizer:
    """A recognizer that hears "one two three" in every segment: fast, for protocol tests."""
    return ScriptedRecognizer([(" one", 300), (" two", 600), (" three", 900)])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto broker on a free port of 127.0.0.1, persisting to tmp_path."""
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = Broker(directory)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def bridge_config(broker: Broker, worker_id: str = "w1", **calls: Any) -> BridgeConfig:
    """A worker configuration for tests: short timeouts, everything else the defaults."""
    options = {"idle_timeout_s": 30.0, **calls}
    return BridgeConfig(
        broker=BrokerConfig(port=broker.port),
        worker_id=worker_id,
        reconnect_min_s=0.05,
        reconnect_max_s=1.0,
        calls=CallsConfig(**options),
    )


@contextlib.asynccontextmanager
async def running(
    recognizer: Recognizer,
    config: BridgeConfig,
    worker: ModelWorker | None = None,
    **overrides: Any,
) -> AsyncIterator[MqttBridge]:
    """A bridge serving in this event loop; stopped (gracefully) on exit."""
    bridge = MqttBridge(recognizer, dataclasses.replace(config, **overrides), worker=worker)
    task = asyncio.create_task(bridge.run(), name=f"bridge:{config.worker_id}")
    try:
        async with asyncio.timeout(10_000 * MS):
            ready = asyncio.create_task(bridge.ready())
            await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                ready.cancel()
                task.result()  # raises what made the bridge fail
        yield bridge
    finally:
        bridge.stop()
        async with asyncio.timeout(30_000 * MS):
            await task
