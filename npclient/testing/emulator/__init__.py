"""A moto-style Neuronpedia emulator: seeded state, Starlette routes, a threaded server.

Use it in-process through `httpx.ASGITransport(app=create_app(...))`, or over loopback
through `EmulatorServer` (uvicorn in a daemon thread on 127.0.0.1, ephemeral port).
"""

from .app import create_app
from .config import FAULT_KINDS, EmulatorConfig, FaultConfig, RateLimitConfig, SourceSpec
from .server import EmulatorServer
from .state import EmulatorState, RequestRecord

__all__ = [
    "EmulatorConfig",
    "RateLimitConfig",
    "FaultConfig",
    "SourceSpec",
    "FAULT_KINDS",
    "EmulatorState",
    "RequestRecord",
    "create_app",
    "EmulatorServer",
]
