"""`asr-stream mqtt` as an operator runs it, and connecting with TLS and a password."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streaming.mqtt.bridge import MqttBridge
from streaming.mqtt.link import BrokerConfig
from tests.conftest import MS, load_corpus
from tests.mqtt.conftest import bridge_config, running
from tests.mqtt.taps import Broker, Listener, Tap, packets, telephony

ASR_STREAM = [sys.executable, "-m", "streaming.cli", "--log-level", "WARNING", "mqtt"]


def statuses(listener: Listener, worker: str) -> list[dict]:
    return [m.json() for m in listener.messages if m.topic == f"asr/_workers/{worker}/status"]


def start_worker(broker: Broker, worker: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*ASR_STREAM, "--broker", broker.url, "--worker-id", worker, "--idle-timeout", "5"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


async def wait_exit(process: subprocess.Popen[bytes]) -> int:
    return await asyncio.to_thread(process.wait, 30_000 * MS)


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.asyncio
async def test_the_cli_worker_transcribes_and_its_last_will_reports_a_crash(broker, tmp_path):
    """`asr-stream mqtt` goes online, transcribes a call; killed, the broker marks it offline."""
    utterance = next(u for u in load_corpus() if u.path.stem == "goforward")
    audio = np.concatenate([np.zeros(4_000), utterance.samples(), np.zeros(16_000)])
    log = tmp_path / "worker.log"
    async with Listener(broker.port, "asr/#", "listener") as listener, Tap(broker.port) as tap:
        worker = start_worker(broker, "cli1", log)
        try:
            await listener.wait_for(lambda: bool(statuses(listener, "cli1")), 60_000 * MS)
            assert statuses(listener, "cli1")[0]["state"] == "online"
            await tap.stream("call", {"agent": packets(telephony(audio, "pcm_mulaw"), "pcm_mulaw")})
            await tap.control("call", {"type": "input.end"})
            await listener.wait_for(
                lambda: any(e["type"] == "session.closed" for e in listener.events("call")),
                20_000 * MS,
            )
            worker.kill()
            assert await wait_exit(worker) == -signal.SIGKILL
            await listener.wait_for(
                lambda: statuses(listener, "cli1")[-1]["state"] == "offline", 5_000 * MS
            )
        finally:
            worker.kill()
            worker.wait()
    finals = [e["text"] for e in listener.events("call") if e["type"] == "transcript.final"]
    assert "forward" in " ".join(finals).lower(), (finals, log.read_text())
    assert statuses(listener, "cli1")[-1]["reason"] == "connection lost"


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.asyncio
async def test_sigterm_stops_the_cli_worker_gracefully(broker, tmp_path):
    """SIGTERM: the worker publishes its offline status and exits with 0."""
    async with Listener(broker.port, "asr/_workers/#", "listener") as listener:
        worker = start_worker(broker, "cli2", tmp_path / "worker.log")
        try:
            await listener.wait_for(lambda: bool(statuses(listener, "cli2")), 60_000 * MS)
            worker.send_signal(signal.SIGTERM)
            assert await wait_exit(worker) == 0
        finally:
            worker.kill()
            worker.wait()
        await listener.wait_for(
            lambda: statuses(listener, "cli2")[-1]["state"] == "offline", 5_000 * MS
        )
    assert statuses(listener, "cli2")[-1]["reason"] == "shutdown"


def test_a_bad_broker_url_is_a_usage_error():
    """An unknown URL scheme is refused at once with exit code 2 and a clear message."""
    result = subprocess.run(
        [*ASR_STREAM, "--broker", "http://example.org"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "mqtt://HOST:PORT" in result.stderr


def test_broker_urls_give_host_port_and_tls():
    """mqtt:// defaults to 1883, mqtts:// to TLS on 8883; a user name may come in the URL."""
    assert BrokerConfig.from_url("mqtt://broker.local") == BrokerConfig("broker.local", 1883)
    tls = BrokerConfig.from_url("mqtts://asr@10.0.0.5", password="secret")
    assert (tls.host, tls.port, tls.tls, tls.username, tls.password) == (
        "10.0.0.5", 8883, True, "asr", "secret",
    )  # fmt: skip
    assert BrokerConfig.from_url("mqtt://h:1999", tls=True).tls


def make_tls_broker(directory: Path) -> tuple[Broker, Path]:
    """A broker that only accepts TLS with user asr / password s3cret; returns it and its CA."""

    def run(*command: str) -> None:
        subprocess.run(command, cwd=directory, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test CA")  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    run("mosquitto_passwd", "-b", "-c", "passwords", "asr", "s3cret")
    os.chmod(directory / "passwords", 0o600)
    config = "\n".join(
        [
            f"cafile {directory / 'ca.crt'}",
            f"certfile {directory / 'server.crt'}",
            f"keyfile {directory / 'server.key'}",
            f"password_file {directory / 'passwords'}",
        ]
    )
    return Broker(directory, config, anonymous=False), directory / "ca.crt"


@pytest.mark.network
@pytest.mark.asyncio
async def test_the_worker_connects_with_tls_and_a_password_and_retries_a_wrong_one(
    tmp_path, scripted
):
    """mqtts with the broker's CA and the right password connects; a wrong one keeps retrying."""
    broker, ca = make_tls_broker(tmp_path)
    broker.start()
    try:
        config = bridge_config(broker)
        good = BrokerConfig(
            port=broker.port, tls=True, cafile=ca, username="asr", password="s3cret"
        )
        async with running(scripted, config, broker=good) as bridge:
            assert bridge.stats.inbound_connects == bridge.stats.outbound_connects == 1
        wrong = dataclasses.replace(good, password="wrong")
        bridge = MqttBridge(
            scripted, dataclasses.replace(config, broker=wrong, shutdown_timeout_s=0.5)
        )
        task = asyncio.create_task(bridge.run())
        await asyncio.sleep(1_000 * MS)
        assert not task.done()  # retrying with backoff, not crashed
        bridge.stop()
        await asyncio.wait_for(task, 10_000 * MS)
        assert bridge.stats.inbound_connects == bridge.stats.outbound_connects == 0
    finally:
        broker.stop()
