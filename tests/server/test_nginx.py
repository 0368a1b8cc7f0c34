"""Scale-out: two `asr-stream serve` workers behind a real nginx running deploy/nginx.conf.

Sessions spread over both workers (least connections). Worker A is then drained the way nginx
without Plus allows: marked `down` and nginx reloaded (new sessions go to B), then stopped with
SIGTERM while its sessions are mid-utterance: they get their finals and `session.closed`
(server_shutdown) through the proxy. With A gone but listed again, nginx's passive check sends
new sessions on to B. Every session, on either worker, ends with all its finals: none is lost.
The workers log JSON lines, and each session is found by its id in the log of the worker that
served it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streaming.invariants import check_events
from tests.conftest import DATA_DIR, read_wav
from tests.streaming.fakes import s16
from tests.streaming.test_cli import _free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.fail("nginx is missing: run scripts/system-deps.sh")
    return found


class Worker:
    def __init__(self, tmp: Path, name: str):
        self.port = _free_port()
        self.log_path = tmp / f"{name}.log"
        self._log = self.log_path.open("w")
        command = [sys.executable, "-m", "streaming.cli", "--log-format", "json", "serve",
                   "--port", str(self.port)]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=self._log, cwd=ROOT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
            return json.loads(r.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.health()["status"] == "ok":
                    return
            except OSError:
                pass
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "worker did not come up"
            time.sleep(0.2)

    def sessions_logged(self) -> set[str]:
        lines = [json.loads(line) for line in self.log_path.read_text().splitlines() if line]
        return {line["session"] for line in lines if "session" in line}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


class Nginx:
    def __init__(self, tmp: Path, workers: list[Worker]):
        self.binary = nginx_binary()
        self.dir = tmp
        self.port = _free_port()
        site = SHIPPED.read_text()
        assert "listen 8080;" in site
        (tmp / "asr-stream.conf").write_text(
            site.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = " ".join(
            f"{kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                           "uwsgi", "scgi")
        )  # fmt: skip
        (tmp / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{ access_log {tmp}/access.log; {temp} include {tmp}/asr-stream.conf; }}\n"
        )
        self.list_workers(workers, down=set())
        self.process = subprocess.Popen(self._command("-g", "daemon off;"))
        deadline = time.monotonic() + 20
        while not self._listening():
            assert self.process.poll() is None, (tmp / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.1)

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                "-e", str(self.dir / "error.log"), *extra]  # fmt: skip

    def _listening(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1).close()
            return True
        except OSError:
            return False

    def list_workers(self, workers: list[Worker], down: set[int]) -> None:
        lines = [f"server 127.0.0.1:{w.port} max_fails=1 fail_timeout=5s"
                 f"{' down' if w.port in down else ''};" for w in workers]  # fmt: skip
        (self.dir / "asr-stream-workers.conf").write_text("\n".join(lines) + "\n")

    def reload(self) -> None:
        subprocess.run(self._command("-s", "reload"), check=True)
        time.sleep(1.0)  # the new nginx worker takes over new connections

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Streamer:
    """One session through the proxy: streams an utterance in real time, reads every event."""

    def __init__(self, url: str, audio: bytes):
        self.url, self.audio = url, audio
        self.events: list[dict] = []
        self.close_code: int | None = None
        self.created = asyncio.Event()

    async def run(self, pause_after_s: float = 0.0, resume: asyncio.Event | None = None) -> None:
        async with connect(self.url) as ws:
            reader = asyncio.create_task(self._read(ws))
            step = 3200  # 100 ms of s16 at 16 kHz
            try:
                for i, start in enumerate(range(0, len(self.audio), step)):
                    if resume is not None and i == int(pause_after_s * 10):
                        await resume.wait()
                    await ws.send(self.audio[start : start + step])
                    await asyncio.sleep(0.1)
                await ws.send(json.dumps({"type": "input.end"}))
            except ConnectionClosed:
                pass  # the worker drained this session: its input ended there
            await reader
            self.close_code = ws.close_code

    async def _read(self, ws) -> None:
        try:
            async for message in ws:
                self.events.append(json.loads(message))
                if self.events[-1]["type"] == "session.created":
                    self.created.set()
        except ConnectionClosed:
            pass

    @property
    def session_id(self) -> str:
        return self.events[0]["session_id"]

    @property
    def text(self) -> str:
        return " ".join(e["text"] for e in self.events if e["type"] == "transcript.final")


async def test_sessions_spread_over_workers_and_survive_a_worker_draining(tmp_path):
    samples, _ = read_wav(DATA_DIR / "goforward.wav")
    audio = s16(samples)
    workers = [Worker(tmp_path, "a"), Worker(tmp_path, "b")]
    nginx = None
    try:
        for worker in workers:
            await asyncio.to_thread(worker.wait_ready)
        a, b = workers
        nginx = Nginx(tmp_path, workers)
        url = f"ws://127.0.0.1:{nginx.port}/v1/stream?language=en"

        # four sessions at once, paused after 1 s of speech so that all are open together
        resume = asyncio.Event()
        first = [Streamer(url, audio) for _ in range(4)]
        tasks = [asyncio.create_task(s.run(pause_after_s=1.0, resume=resume)) for s in first]
        for streamer in first:
            await asyncio.wait_for(streamer.created.wait(), 20)
        await asyncio.sleep(0.5)
        held = [(await asyncio.to_thread(w.health))["sessions"] for w in workers]
        assert held == [2, 2], held  # least connections

        # drain A: out of the rotation, then SIGTERM while its two sessions are mid-utterance
        nginx.list_workers(workers, down={a.port})
        await asyncio.to_thread(nginx.reload)
        resume.set()
        await asyncio.sleep(0.5)
        a.process.send_signal(signal.SIGTERM)
        during = [Streamer(url, audio) for _ in range(2)]
        await asyncio.gather(*tasks, *(s.run() for s in during))
        assert await asyncio.to_thread(a.process.wait, 30) == 0

        # A is gone but listed again: nginx finds it refusing and sends sessions on to B
        nginx.list_workers(workers, down=set())
        await asyncio.to_thread(nginx.reload)
        after = [Streamer(url, audio) for _ in range(2)]
        await asyncio.gather(*(s.run() for s in after))

        on_a, on_b = a.sessions_logged(), b.sessions_logged()
        drained = [s for s in first if s.session_id in on_a]
        assert len(drained) == 2 and all(s.session_id in on_b for s in first if s not in drained)
        for streamer in drained:
            assert streamer.events[-1]["reason"] == "server_shutdown", streamer.events
            assert streamer.close_code == 1001
        for streamer in [s for s in first if s not in drained] + during + after:
            assert streamer.session_id in on_b  # nothing new reached the drained worker
            assert streamer.close_code == 1000 and "forward" in streamer.text.lower()
        for streamer in first + during + after:  # every session got all its finals
            assert check_events(streamer.events, input_ended=True) == [], streamer.events
            assert streamer.text.strip(), streamer.events
    finally:
        if nginx is not None:
            nginx.stop()
        for worker in workers:
            worker.stop()
