"""`asr-stream mqtt`: run one MQTT transcription worker (docs/mqtt.md).

    asr-stream mqtt --broker mqtt://HOST:PORT [--worker-id ID] [--group asr] ...
    ASR_STREAM_MQTT_PASSWORD=... asr-stream mqtt --broker mqtts://HOST --username asr

The main parser imports this module at startup, so only argparse is imported at module level;
the bridge, the model and asyncio are imported when the command runs.
"""

from __future__ import annotations

import argparse

from streaming.models.options import add_model_arguments, load_from_arguments

PASSWORD_ENV = "ASR_STREAM_MQTT_PASSWORD"  # keeps the password out of process listings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `asr-stream mqtt` to its subparser."""
    broker = parser.add_argument_group("broker")
    broker.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS) (default mqtt://127.0.0.1:1883)",
    )
    broker.add_argument(
        "--tls", action="store_true", help="use TLS with an mqtt:// URL too (so do the next two)"
    )
    broker.add_argument("--cafile", help="CA certificate (PEM) of the broker's TLS certificate")
    broker.add_argument(
        "--insecure", action="store_true", help="TLS without certificate checks (tests only)"
    )
    broker.add_argument("--username", help="broker user name")
    broker.add_argument(
        "--password", help=f"broker password (prefer the {PASSWORD_ENV} environment variable)"
    )
    worker = parser.add_argument_group("worker")
    worker.add_argument(
        "--worker-id", help="unique, stable id of this worker (default: the host name)"
    )
    worker.add_argument("--group", default="asr", help="workers of a group share the calls")
    worker.add_argument("--prefix", default="asr", help="first topic level (default asr)")
    worker.add_argument(
        "--unshared",
        action="store_true",
        help="every worker receives every message instead of sharing subscriptions "
        "(loses nothing over a mosquitto < 2.0.12 restart; see docs/mqtt.md)",
    )
    worker.add_argument("--max-calls", type=int, default=16, help="calls this worker takes")
    worker.add_argument("--max-channels", type=int, default=4, help="channels per call")
    worker.add_argument(
        "--idle-timeout", type=float, default=30.0, help="seconds without messages that end a call"
    )
    worker.add_argument(
        "--session-expiry",
        type=int,
        default=3600,
        help="seconds the broker queues this worker's messages while it is away",
    )
    model = parser.add_argument_group("model")
    add_model_arguments(model)
    model.add_argument("--max-batch", type=int, default=8, help="decodes batched per model call")
    model.add_argument("--step-ms", type=int, default=1000, help="audio between partial decodes")
    model.add_argument(
        "--early-step-ms", type=int, default=500,
        help="... or this much while the model has a lane to spare (default 500, at most "
        "--step-ms)",
    )  # fmt: skip
    model.add_argument(
        "--vad-aggressiveness", type=int, default=2, choices=range(4), help="webrtcvad 0-3"
    )


def run(args: argparse.Namespace) -> int:
    """Runs the worker until SIGINT or SIGTERM, then finishes open calls; returns the exit code."""
    import asyncio
    import os
    import signal
    import socket
    import sys
    from pathlib import Path

    from streaming.models.loading import ModelNotFoundError
    from streaming.mqtt.bridge import BridgeConfig, MqttBridge
    from streaming.mqtt.calls import CallsConfig
    from streaming.mqtt.link import BrokerConfig
    from streaming.session import Limits
    from streaming.vad import VadConfig

    try:
        broker = BrokerConfig.from_url(
            args.broker,
            tls=args.tls or bool(args.cafile) or args.insecure,
            cafile=Path(args.cafile) if args.cafile else None,
            insecure=args.insecure,
            username=args.username,
            password=args.password or os.environ.get(PASSWORD_ENV),
        )
        config = BridgeConfig(
            broker=broker,
            worker_id=args.worker_id or socket.gethostname(),
            group=args.group,
            shared=not args.unshared,
            prefix=args.prefix,
            session_expiry_s=args.session_expiry,
            max_batch=args.max_batch,
            calls=CallsConfig(
                max_calls=args.max_calls,
                max_channels=args.max_channels,
                idle_timeout_s=args.idle_timeout,
                limits=Limits(
                    step_ms=args.step_ms, early_step_ms=min(args.early_step_ms, args.step_ms)
                ),
                vad=VadConfig(aggressiveness=args.vad_aggressiveness),
            ),
        )
        recognizer = load_from_arguments(args)
    except (ValueError, ModelNotFoundError) as exc:
        print(f"asr-stream mqtt: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        bridge = MqttBridge(recognizer, config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.stop)
        scheme = "mqtts" if broker.tls else "mqtt"
        print(
            f"asr-stream: MQTT worker {config.worker_id} ({recognizer.info.name}) on "
            f"{scheme}://{broker.host}:{broker.port}, group {config.group}; Ctrl-C stops",
            file=sys.stderr,
        )
        await bridge.run()

    asyncio.run(serve())
    return 0
