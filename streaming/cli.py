"""The `asr-stream` command: serve the service, or stream a file or a microphone through it.

    asr-stream serve [--model tiny.en|base|DIR] [--port 8765] ...
    asr-stream transcribe FILE [--url ws://HOST:PORT] [--fast] [--output out.srt]
    asr-stream transcribe FILE --offline [--model DIR]   (whole file at once, no server)
    asr-stream mic [--url ws://HOST:PORT] [--device NAME] [--output out.vtt]
    asr-stream mqtt --broker mqtt://HOST:PORT [--worker-id ID] (see docs/mqtt.md)
    asr-stream align AUDIO TEXT --aligner DIR [--language L] [--output words.srt|.vtt|.jsonl]

Heavy modules are imported inside each subcommand so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from streaming.logs import configure_logging
from streaming.models.options import add_model_arguments, load_from_arguments
from streaming.mqtt import cli as mqtt_cli


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", type=Path, help="also save the finals: .txt, .jsonl, .srt or .vtt"
    )
    parser.add_argument(
        "--output-format",
        choices=("text", "jsonl", "srt", "vtt"),
        help="format of --output when its name does not tell",
    )


def _add_session_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--language", default="auto", help="ISO code or name; auto detects")
    parser.add_argument("--context", default="", help="names, jargon or topic to bias towards")
    parser.add_argument(
        "--hotword", action="append", default=[], help="a word to favour (repeatable)"
    )
    parser.add_argument(
        "--word-timestamps", action="store_true", help="ask for word timings in finals"
    )
    parser.add_argument("--token", default=None, help="access token of a protected server")
    parser.add_argument(
        "--insecure", action="store_true", help="accept a self-signed certificate (wss://)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr-stream", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="json: one JSON object per line, with the session id where there is one",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the service (native, OpenAI and Deepgram faces on one port)"
    )
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface (0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--max-sessions", type=int, default=8)
    serve.add_argument("--max-batch", type=int, default=8, help="decodes batched per model call")
    serve.add_argument("--idle-timeout", type=float, default=60.0, help="seconds without frames")
    serve.add_argument("--certfile", type=Path, help="TLS certificate (PEM) for wss://")
    serve.add_argument("--keyfile", type=Path, help="TLS private key (PEM)")
    serve.add_argument(
        "--token", default=None,
        help="require this token (or a grant from POST /v1/auth/grant) from clients",
    )  # fmt: skip
    serve.add_argument(
        "--allowed-origin", action="append", default=[], metavar="ORIGIN",
        help="a browser origin (https://host[:port]) allowed to connect (repeatable; default any)",
    )  # fmt: skip
    serve.add_argument(
        "--max-sessions-per-client", type=int, help="sessions one client address may hold"
    )
    serve.add_argument(
        "--connects-per-minute", type=float, help="new sessions one client address may open"
    )
    serve.add_argument("--step-ms", type=int, default=1000, help="audio between partial decodes")
    serve.add_argument(
        "--early-step-ms", type=int, default=500,
        help="... or this much while the model has a lane to spare (default 500, at most "
        "--step-ms)",
    )  # fmt: skip
    serve.add_argument(
        "--max-upload-mb", type=float, default=25.0,
        help="largest file of the HTTP transcription API (default 25, as OpenAI's)",
    )  # fmt: skip
    serve.add_argument(
        "--vad-aggressiveness", type=int, default=2, choices=range(4), help="webrtcvad 0-3"
    )

    transcribe = commands.add_parser("transcribe", help="stream an audio file and print text")
    transcribe.add_argument("file", type=Path, help="WAV, FLAC or OGG file")
    transcribe.add_argument(
        "--url", help="a running server (ws://HOST:PORT); without it, one runs in this process"
    )
    add_model_arguments(transcribe)
    _add_session_options(transcribe)
    pace = transcribe.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="send at real-time pace (default)")
    pace.add_argument("--fast", action="store_true", help="send as fast as the server keeps up")
    transcribe.add_argument("--frame-ms", type=int, default=100, help="audio per frame (ms)")
    transcribe.add_argument(
        "--offline",
        action="store_true",
        help="no streaming: decode the whole file at once with --model, print the text",
    )
    transcribe.add_argument(
        "--format", choices=("text", "json"), default="text", help="text: finals; json: events"
    )
    _add_output_options(transcribe)

    mic = commands.add_parser("mic", help="live captions from a microphone")
    mic.add_argument(
        "--url", default="ws://127.0.0.1:8765", help="the service (default ws://127.0.0.1:8765)"
    )
    mic.add_argument("--device", help="input device name or index (see --list-devices)")
    mic.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    mic.add_argument("--samplerate", type=int, help="capture rate (default: the device's own)")
    _add_session_options(mic)
    _add_output_options(mic)

    align = commands.add_parser(
        "align", help="time the words of a known transcript (Qwen3-ForcedAligner)"
    )
    align.add_argument("audio", type=Path, help="WAV, FLAC or OGG file (at most 180 s)")
    align.add_argument("text", help="the transcript, or the path of a UTF-8 text file holding it")
    align.add_argument(
        "--aligner", default="Qwen/Qwen3-ForcedAligner-0.6B",
        help="checkpoint folder (either layout) or its name in the local Hugging Face cache",
    )  # fmt: skip
    align.add_argument("--language", help="ISO code or name (en, zh, ja, ...); default: English")
    align.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    align.add_argument("--dtype", choices=("float32", "bfloat16", "int8"))
    _add_output_options(align)

    mqtt = commands.add_parser("mqtt", help="transcribe call-center audio taps over MQTT")
    mqtt_cli.add_arguments(mqtt)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command == "serve":
        return _serve(args)
    if args.command == "transcribe":
        return _transcribe(args)
    if args.command == "mic":
        return _mic(args)
    if args.command == "mqtt":
        return mqtt_cli.run(args)
    if args.command == "align":
        return _align(args)
    raise AssertionError(args.command)


def _load(args: argparse.Namespace) -> Any:
    from streaming.models.loading import ModelNotFoundError

    try:
        return load_from_arguments(args)
    except (ModelNotFoundError, ValueError) as exc:
        print(f"asr-stream: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _announce(args: argparse.Namespace, message: str) -> None:
    """A line for the operator: printed, or logged when stderr must hold only JSON lines."""
    if args.log_format == "json":
        logging.getLogger("streaming.cli").warning(message)
    else:
        print(f"asr-stream: {message}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from streaming.server.service import ServerConfig, StreamingServer
    from streaming.session import Limits
    from streaming.vad import VadConfig

    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        max_batch=args.max_batch,
        idle_timeout_s=args.idle_timeout,
        certfile=args.certfile,
        keyfile=args.keyfile,
        token=args.token,
        allowed_origins=tuple(args.allowed_origin),
        max_sessions_per_client=args.max_sessions_per_client,
        connects_per_minute=args.connects_per_minute,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        limits=Limits(step_ms=args.step_ms, early_step_ms=min(args.early_step_ms, args.step_ms)),
        vad=VadConfig(aggressiveness=args.vad_aggressiveness),
    )
    server = StreamingServer(_load(args), config)

    async def until_signal() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        scheme = "wss" if args.certfile else "ws"
        banner = (
            f"serving {server.model_name} on {scheme}://{args.host}:{server.port}"
            "/v1/stream (OpenAI API at /v1, Deepgram at /v1/listen, page at /, health at "
            "/health, metrics at /metrics); Ctrl-C stops"
        )
        _announce(args, banner)
        await stop.wait()
        _announce(args, "shutting down, finishing open sessions")

    asyncio.run(server.serve_forever(until_signal))
    return 0


def _settings(args: argparse.Namespace) -> Any:
    from client.connection import SessionSettings

    subtitles = bool(args.output) and (
        args.output_format in ("srt", "vtt") or args.output.suffix.lower() in (".srt", ".vtt")
    )
    return SessionSettings(
        language=args.language,
        context=args.context,
        hotwords=tuple(args.hotword),
        # subtitles are cut into readable cues at word boundaries when words are timed
        word_timestamps=args.word_timestamps or subtitles,
    )


def _writer(args: argparse.Namespace) -> Any:
    from client.transcript_files import TranscriptWriter

    if args.output is None:
        return None
    try:
        return TranscriptWriter.open(args.output, args.output_format)
    except (ValueError, OSError) as exc:
        print(f"asr-stream: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _transcribe(args: argparse.Namespace) -> int:
    if args.offline:
        return _transcribe_offline(args)
    from client.captions import TerminalCaptions
    from client.connection import ServiceError
    from client.file_streamer import PaceOptions, stream_file

    settings = _settings(args)
    writer = _writer(args)
    pace = PaceOptions(frame_ms=args.frame_ms, realtime=not args.fast)
    captions = None if args.format == "json" else TerminalCaptions(sys.stdout)

    def show(event: dict[str, Any]) -> None:
        if writer is not None and event.get("type") == "transcript.final":
            writer.write(event)
        if captions is None:
            print(json.dumps(event, ensure_ascii=False), flush=True)
        elif not (args.fast and event.get("code") == "lagging"):
            # --fast runs ahead of the server on purpose; its lag warnings are expected
            captions(event)

    async def run() -> None:
        if args.url:
            await stream_file(
                args.url, args.file, settings, pace, on_event=show,
                token=args.token, insecure=args.insecure,
            )  # fmt: skip
            return
        from streaming.server.service import ServerConfig, StreamingServer

        server = StreamingServer(_load(args), ServerConfig(port=0, web_root=None))
        await server.start()
        try:
            url = f"ws://127.0.0.1:{server.port}"
            await stream_file(url, args.file, settings, pace, on_event=show)
        finally:
            await server.shutdown()

    try:
        asyncio.run(run())
    except (ServiceError, ValueError) as exc:
        print(f"asr-stream: {exc}", file=sys.stderr)
        return 1
    finally:
        if captions is not None:
            captions.close()
        if writer is not None:
            writer.close()
    return 0


def _transcribe_offline(args: argparse.Namespace) -> int:
    """The whole file through the recognizer at once (streaming.offline), no server."""
    from streaming.events import wire_words
    from streaming.languages import normalize_language
    from streaming.offline import read_audio, transcribe_file
    from streaming.recognizer import OfflineOptions

    try:
        language = normalize_language(args.language)
        samples = read_audio(args.file)
    except ValueError as exc:
        print(f"asr-stream: {exc}", file=sys.stderr)
        return 1
    writer = _writer(args)
    recognizer = _load(args)
    options = OfflineOptions(
        language=language, context=args.context, hotwords=tuple(args.hotword),
        word_timestamps=_settings(args).word_timestamps and recognizer.info.word_timestamps,
    )  # fmt: skip
    try:
        for i, piece in enumerate(transcribe_file(recognizer, samples, options)):
            final: dict[str, Any] = {
                "type": "transcript.final",
                "segment_id": i,
                "text": piece.text,
                "language": piece.language,
                "start_ms": piece.start_ms,
                "end_ms": piece.end_ms,
            }
            if piece.words:
                final["words"] = wire_words(piece.words)
            line = json.dumps(final, ensure_ascii=False) if args.format == "json" else piece.text
            print(line, flush=True)
            if writer is not None:
                writer.write(final)
    finally:
        recognizer.close()
        if writer is not None:
            writer.close()
    return 0


def _align(args: argparse.Namespace) -> int:
    """Prints one line per word (start, end, word) and writes --output if given."""
    from decoder.alignment import AlignmentError
    from streaming.events import wire_words
    from streaming.models.loading import ModelNotFoundError, load_forced_aligner
    from streaming.offline import read_audio

    text_path = Path(args.text)
    try:
        text = text_path.read_text(encoding="utf-8") if text_path.is_file() else args.text
        samples = read_audio(args.audio)
        aligner = load_forced_aligner(args.aligner, device=args.device, dtype=args.dtype)
        alignment = aligner.align(samples, text, args.language or "en")
    except (ValueError, OSError, ModelNotFoundError) as exc:  # AlignmentError is a ValueError
        kind = "alignment" if isinstance(exc, AlignmentError) else "input"
        print(f"asr-stream: {kind} error: {exc}", file=sys.stderr)
        return 1
    if not alignment.words:
        print("asr-stream: the transcript has no word to align", file=sys.stderr)
        return 1
    words = wire_words(alignment.words)
    for word in words:
        print(f"{word['start_ms'] / 1000:8.3f} {word['end_ms'] / 1000:8.3f}  {word['word']}")
    writer = _writer(args)
    if writer is not None:
        writer.write(
            {
                "type": "transcript.final", "segment_id": 0, "text": " ".join(text.split()),
                "start_ms": words[0]["start_ms"], "end_ms": words[-1]["end_ms"], "words": words,
            }
        )  # fmt: skip
        writer.close()
    return 0


def _mic(args: argparse.Namespace) -> int:
    from client.captions import TerminalCaptions
    from client.connection import ServiceError
    from client.mic import MicrophoneError, SoundDeviceSource, list_input_devices, run_microphone

    try:
        if args.list_devices:
            devices = list_input_devices()
            print("\n".join(devices) if devices else "No input devices found.")
            return 0
        device = int(args.device) if args.device and args.device.isdigit() else args.device
        source = SoundDeviceSource(device, args.samplerate)
    except MicrophoneError as exc:
        print(f"asr-stream: {exc}", file=sys.stderr)
        return 1
    writer = _writer(args)
    captions = TerminalCaptions(sys.stdout)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print(
            f"asr-stream: captioning {source.name} at {source.sample_rate} Hz via {args.url}; "
            "Ctrl-C stops",
            file=sys.stderr,
        )
        result = await run_microphone(
            args.url, source, _settings(args), stop, on_event=captions, writer=writer,
            token=args.token, insecure=args.insecure,
        )  # fmt: skip
        if result.dropped_ms:
            print(f"asr-stream: {result.dropped_ms} ms of audio were dropped", file=sys.stderr)

    try:
        asyncio.run(run())
    except (ServiceError, MicrophoneError, TimeoutError) as exc:
        print(f"asr-stream: {exc or 'timed out waiting for the last finals'}", file=sys.stderr)
        return 1
    finally:
        captions.close()
        if writer is not None:
            writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
