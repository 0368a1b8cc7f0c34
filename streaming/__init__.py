"""Streaming speech recognition service: sessions, buffering, VAD, stabilization, servers."""
