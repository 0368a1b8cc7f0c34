"""The live-captioning page in a real headless Chromium with a WAV file as its microphone."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from streaming.scoring import corpus_wer
from tests.client.conftest import (
    chromium,
    flaky_network,
    padded,
    running_server,
    self_signed_context,
    write_wav,
)
from tests.conftest import PW_MS

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.network]


async def finals_text(page) -> str:
    return " ".join(await page.locator("#finals li").evaluate_all(
        "items => items.map(li => li.childNodes[1].textContent)"
    ))  # fmt: skip


async def caption_run(page, url, seconds, screenshot):
    """Opens the page, starts captions, waits for the audio to play, stops, screenshots."""
    await page.goto(url)
    await page.click("#start")
    await page.wait_for_function("window.captionsApp.state === 'live'", timeout=20_000 * PW_MS)
    await asyncio.sleep(seconds)
    await page.click("#start")  # Stop: input.end, wait for the last finals
    await page.wait_for_function("window.captionsApp.state === 'idle'", timeout=30_000 * PW_MS)
    await page.screenshot(path=str(screenshot), full_page=True)
    return await finals_text(page)


async def test_captions_from_a_real_utterance_over_ws(whisper, corpus, tmp_path):
    """Speech played into the page's microphone comes back as the reference words."""
    utterance = corpus[8]  # "and mister john dashwood had then leisure to consider ..."
    wav = write_wav(tmp_path / "speech.wav", padded(utterance.samples()))
    async with running_server(whisper) as server, chromium(wav) as page:
        text = await caption_run(
            page, f"http://127.0.0.1:{server.port}/", utterance.seconds + 2.0,
            tmp_path / "captions-ws.png",
        )  # fmt: skip
        assert await page.locator("#model").text_content() == "whisper-tiny.en"
    assert corpus_wer([(utterance.reference, text)]).wer <= 0.15, text
    assert (tmp_path / "captions-ws.png").stat().st_size > 10_000


async def test_captions_over_wss_with_a_certificate(whisper, corpus, tmp_path):
    """With --certfile/--keyfile the page loads over https and streams over wss."""
    utterance = corpus[7]  # "go forward ten meters"
    wav = write_wav(tmp_path / "speech.wav", padded(utterance.samples()))
    _, cert, key = self_signed_context(tmp_path)
    async with running_server(whisper, certfile=cert, keyfile=key) as server, chromium(wav) as page:
        text = await caption_run(
            page, f"https://127.0.0.1:{server.port}/", utterance.seconds + 2.0,
            tmp_path / "captions-wss.png",
        )  # fmt: skip
        assert await page.evaluate("location.protocol") == "https:"
    assert corpus_wer([(utterance.reference, text)]).wer <= 0.25, text


async def test_partials_show_committed_and_tentative_styles(whisper, corpus, tmp_path):
    """While speech plays, the live line shows text, tentative words styled apart."""
    utterance = corpus[10]
    wav = write_wav(tmp_path / "speech.wav", padded(utterance.samples()))
    async with running_server(whisper) as server, chromium(wav) as page:
        await page.goto(f"http://127.0.0.1:{server.port}/")
        await page.click("#start")
        await page.wait_for_function(
            "document.querySelector('#live').textContent.trim().length > 0",
            timeout=20_000 * PW_MS,
        )
        styles = await page.evaluate(
            """() => ['.committed', '.tentative'].map(s => {
                   const c = getComputedStyle(document.querySelector('#live ' + s));
                   return [c.color, c.fontStyle]; })"""
        )
        assert styles[0] != styles[1]
        lag = await page.locator("#lag").text_content()
        assert lag.startswith("lag ") and lag != "lag –"


async def test_a_dropped_connection_reconnects_and_loses_no_words(whisper, corpus, tmp_path):
    """The network drops mid-sentence; the page reconnects and replays the audio."""
    utterance = corpus[11]  # 6 s: "had he married a more a amiable woman ..."
    wav = write_wav(tmp_path / "speech.wav", padded(utterance.samples()))
    async with (
        running_server(whisper) as server,
        flaky_network(server.port) as network,
        chromium(wav) as page,
    ):
        await page.goto(f"http://127.0.0.1:{network.port}/")
        await page.click("#start")
        await page.wait_for_function("window.captionsApp.state === 'live'", timeout=20_000 * PW_MS)
        await asyncio.sleep(3.0)
        network.cut()  # no close frame reaches either side
        await page.wait_for_function(
            "window.captionsApp.state === 'reconnecting'", timeout=10_000 * PW_MS
        )
        await page.wait_for_function("window.captionsApp.state === 'live'", timeout=20_000 * PW_MS)
        await asyncio.sleep(utterance.seconds)
        await page.click("#start")
        await page.wait_for_function("window.captionsApp.state === 'idle'", timeout=30_000 * PW_MS)
        await page.screenshot(path=str(tmp_path / "reconnected.png"))
        text = await finals_text(page)
    assert corpus_wer([(utterance.reference, text)]).wer <= 0.2, text


async def test_blocked_microphone_says_how_to_allow_it(whisper, tmp_path):
    """Without microphone permission the page explains what to do instead of hanging."""
    async with running_server(whisper) as server, chromium(None, grant_microphone=False) as page:
        await page.goto(f"http://127.0.0.1:{server.port}/")
        await page.click("#start")
        await page.wait_for_function("window.captionsApp.state === 'error'", timeout=10_000 * PW_MS)
        notice = await page.locator("#notice").text_content()
        assert "Microphone access was blocked" in notice
        await page.screenshot(path=str(tmp_path / "blocked.png"))


async def test_unreachable_server_is_reported_and_retried(whisper, corpus, tmp_path):
    """A server address that refuses connections is named in the notice, with a retry."""
    wav = write_wav(tmp_path / "speech.wav", padded(corpus[0].samples()))
    async with running_server(whisper) as server, chromium(wav) as page:
        await page.goto(f"http://127.0.0.1:{server.port}/?server=ws://127.0.0.1:9")
        await page.click("#start")
        await page.wait_for_function(
            "document.querySelector('#notice').textContent.includes('Cannot reach')",
            timeout=10_000 * PW_MS,
        )
        assert "ws://127.0.0.1:9" in await page.locator("#notice").text_content()
        assert await page.evaluate("window.captionsApp.state") == "reconnecting"


async def test_a_full_server_is_reported_and_the_page_gets_in_when_a_slot_frees(
    whisper, corpus, tmp_path
):
    """At max_sessions the page says the server is full, retries, and goes live later."""
    wav = write_wav(tmp_path / "speech.wav", padded(corpus[7].samples(), trail_s=8.0))
    async with running_server(whisper, max_sessions=1) as server:
        holder = await connect(f"ws://127.0.0.1:{server.port}/v1/stream")
        assert json.loads(await holder.recv())["type"] == "session.created"
        async with chromium(wav) as page:
            await page.goto(f"http://127.0.0.1:{server.port}/")
            await page.click("#start")
            await page.wait_for_function(
                "document.querySelector('#notice').textContent.includes('server is full')",
                timeout=10_000 * PW_MS,
            )
            await holder.close()
            await page.wait_for_function(
                "window.captionsApp.state === 'live'", timeout=20_000 * PW_MS
            )


async def test_a_language_the_model_lacks_is_explained(whisper, corpus, tmp_path):
    """Choosing German on the English-only model shows why, and captions go on in English."""
    wav = write_wav(tmp_path / "speech.wav", padded(corpus[7].samples()))
    async with running_server(whisper) as server, chromium(wav) as page:
        await page.goto(f"http://127.0.0.1:{server.port}/")
        await page.fill("#language", "de")
        await page.click("#start")
        await page.wait_for_function(
            "document.querySelector('#notice').textContent.includes('cannot transcribe')",
            timeout=20_000 * PW_MS,
        )
        assert await page.evaluate("window.captionsApp.state") == "live"
