"""Unit tests: pure functions only, no root, no sockets to the kernel."""
