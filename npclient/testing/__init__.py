"""Test helpers shipped with the package: the Neuronpedia emulator and synthetic decoders.

Names are loaded on first use, so `from npclient.testing import make_decoder` does not
import starlette and uvicorn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .emulator import (
        EmulatorConfig,
        EmulatorServer,
        EmulatorState,
        ExportQuirks,
        FaultConfig,
        RateLimitConfig,
        S3Faults,
        S3Server,
        SourceSpec,
        create_app,
        create_s3_app,
        write_export,
    )
    from .synthetic import SyntheticDecoder, make_decoder, make_synthetic

_LOCATIONS = {
    "EmulatorConfig": ".emulator",
    "RateLimitConfig": ".emulator",
    "FaultConfig": ".emulator",
    "SourceSpec": ".emulator",
    "EmulatorState": ".emulator",
    "create_app": ".emulator",
    "EmulatorServer": ".emulator",
    "ExportQuirks": ".emulator",
    "write_export": ".emulator",
    "S3Faults": ".emulator",
    "S3Server": ".emulator",
    "create_s3_app": ".emulator",
    "make_decoder": ".synthetic",
    "make_synthetic": ".synthetic",
    "SyntheticDecoder": ".synthetic",
}

__all__ = list(_LOCATIONS)


def __getattr__(name: str) -> Any:
    if name not in _LOCATIONS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LOCATIONS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
