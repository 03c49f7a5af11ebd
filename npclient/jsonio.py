"""JSON bytes in and out without losing what a payload carries.

orjson is the fast path both ways, but it refuses integers beyond 64 bits when writing and
turns them into floats when reading. Neuronpedia never sends such integers today; the mirror
still must not corrupt one if it ever does.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pydantic_core

__all__ = ["dumps", "loads"]


def dumps(value: Any) -> bytes:
    """Compact JSON. orjson writes NaN as `null`; the rare wide-integer fallback writes `NaN`,
    which `loads` reads back."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an integer wider than 64 bits: the standard library writes it exactly
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    """Parse JSON exactly (pydantic's parser keeps wide integers); as fast as orjson here."""
    return pydantic_core.from_json(data)
