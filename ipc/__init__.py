"""Framing and message schemas for the helper channel and the control socket.

Imported by the privileged helper: standard library and msgpack only.
"""
