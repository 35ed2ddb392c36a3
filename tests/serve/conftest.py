"""Fixtures of the server tests (defined in live_server.py, which the tests also import helpers from)."""

from live_server import live_server  # noqa: F401
