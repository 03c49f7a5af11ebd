"""A moto-style Neuronpedia emulator: seeded state, Starlette routes, a threaded server.

Use it in-process through `httpx.ASGITransport(app=create_app(...))`, or over loopback
through `EmulatorServer` (uvicorn in a daemon thread on 127.0.0.1, ephemeral port).
`write_export` writes the same catalog as a bulk-export tree, and `S3Server` /
`create_s3_app` serve such a tree as the public read-only S3 bucket.
"""

from .app import create_app
from .config import FAULT_KINDS, EmulatorConfig, FaultConfig, RateLimitConfig, SourceSpec
from .exports import ExportQuirks, write_export
from .s3 import S3Faults, S3Server, create_s3_app
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
    "ExportQuirks",
    "write_export",
    "S3Faults",
    "S3Server",
    "create_s3_app",
]
