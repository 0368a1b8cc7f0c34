"""Clients of the streaming service: file streamer, microphone CLI, browser page."""
