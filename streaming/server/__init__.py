"""The network faces of the service: HTTP and WebSocket endpoints that drive the session engine."""
