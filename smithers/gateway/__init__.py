"""The Smithers gateway: HTTP and WebSocket access to workflows."""
