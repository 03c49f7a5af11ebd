"""Deterministic fault decisions.

A fault is a pure function of (seed, request key, attempt number): the n-th time the same
method + path + body arrives it meets the same fate, whatever the timing or concurrency of
other requests. So a failing client test replays exactly.
"""

from __future__ import annotations

import hashlib
import threading

from .config import FaultConfig

__all__ = ["FaultInjector", "fault_for", "request_key", "stable_unit"]

# Canned error bodies a client can meet in the wild.
HTML_500 = (
    b"<!DOCTYPE html><html><head><meta charSet=\"utf-8\"/><title>500: Internal Server Error</title>"
    b"</head><body><div id=\"__next\"><h1>500</h1><h2>Internal Server Error.</h2></div></body></html>"
)
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
JSON_500 = b'{"error":"Internal Server Error","message":"An unexpected error occurred."}'


def request_key(method: str, path: str, body: bytes) -> bytes:
    """What identifies 'the same request' for fault replay."""
    return method.upper().encode() + b" " + path.encode() + b"\n" + body


def stable_unit(*parts: bytes | str | int) -> float:
    """A uniform number in [0, 1) from a blake2b hash: stable across runs and platforms."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(4, "little"))
        h.update(b)
    return int.from_bytes(h.digest(), "little") / 2.0**64


def fault_for(config: FaultConfig, key: bytes, attempt: int) -> str | None:
    """The fault (or None) for the `attempt`-th (0-based) arrival of `key`."""
    if config.rate <= 0.0 or not config.kinds:
        return None
    if stable_unit(b"fault", config.seed, key, attempt) >= config.rate:
        return None
    pick = stable_unit(b"kind", config.seed, key, attempt)
    return config.kinds[int(pick * len(config.kinds))]


class FaultInjector:
    """Counts attempts per key and applies `fault_for`; settings may change at run time."""

    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        self._attempts: dict[bytes, int] = {}
        self._lock = threading.Lock()

    @property
    def config(self) -> FaultConfig:
        return self._config

    @config.setter
    def config(self, value: FaultConfig) -> None:
        with self._lock:
            self._config = value

    def decide(self, method: str, path: str, body: bytes) -> str | None:
        key = request_key(method, path, body)
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            config = self._config
        return fault_for(config, key, attempt)

    def reset(self) -> None:
        with self._lock:
            self._attempts.clear()
