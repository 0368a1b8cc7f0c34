"""A real server on a free port for the face tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from streaming.server.service import ServerConfig, StreamingServer


@contextlib.asynccontextmanager
async def serving(recognizer: Any, **options: Any) -> AsyncIterator[StreamingServer]:
    """A started `StreamingServer` on a free port (no page), shut down on exit."""
    server = StreamingServer(recognizer, ServerConfig(port=0, web_root=None, **options))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()
