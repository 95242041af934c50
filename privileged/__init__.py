"""The privileged mrouter helper.

It owns the kernel's multicast routing sockets and performs MRT_*/MRT6_*
operations for the unprivileged controller, after validating each request
with smcroute.policy. Imports: standard library, msgpack, prctl,
smcroute.ipc and smcroute.policy only.
"""
