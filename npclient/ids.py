"""Feature and source identifiers: `model/source/index`, validated before any request.

An id ends up in a URL path and in a file path under the export cache, so parsing is
strict: safe characters only, no empty part, no `.`/`..`, and a non-negative integer
index (Neuronpedia sends it as a string; we normalise it to `int`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from . import wire
from .errors import InvalidIdError

__all__ = ["FeatureId", "SourceId", "SourceSetId", "parse_target", "is_source_name"]

# Neuronpedia model ids and source ids use letters, digits, '.', '_', '-' (e.g.
# `llama3.1-8b`, `8-res_fs768-jb`, `5-gemmascope-res-16k__l0-143`).
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_INDEX = re.compile(r"^[0-9]+$")
_MAX_PART = 128


def _check_part(value: object, what: str, text: str) -> str:
    if not isinstance(value, str) or value == "":
        raise InvalidIdError(f"{what} is empty in {text!r}")
    if len(value) > _MAX_PART:
        raise InvalidIdError(f"{what} is longer than {_MAX_PART} characters in {text!r}")
    if value in (".", "..") or ".." in value:
        raise InvalidIdError(f"{what} {value!r} may not contain '..' (in {text!r})")
    if not _PART.match(value):
        raise InvalidIdError(
            f"{what} {value!r} has characters outside [A-Za-z0-9._-] or starts with one (in {text!r})"
        )
    return value


def _check_index(value: object, text: str) -> int:
    if isinstance(value, bool):
        raise InvalidIdError(f"index must be a non-negative integer, got {value!r} (in {text!r})")
    if isinstance(value, int):
        if value < 0:
            raise InvalidIdError(f"index must be a non-negative integer, got {value} (in {text!r})")
        return value
    if isinstance(value, str) and _INDEX.match(value) and len(value) <= 18:
        return int(value)
    raise InvalidIdError(f"index must be a non-negative integer, got {value!r} (in {text!r})")


@dataclass(frozen=True, order=True)
class SourceId:
    """One SAE (Neuronpedia calls it a `layer`), e.g. `gpt2-small/0-res-jb`."""

    model_id: str
    source: str

    def __post_init__(self) -> None:
        text = f"{self.model_id}/{self.source}"
        _check_part(self.model_id, "model id", text)
        _check_part(self.source, "source", text)

    @classmethod
    def parse(cls, text: str) -> "SourceId":
        parts = _split(text, 2, "model/source (e.g. gpt2-small/0-res-jb)")
        return cls(parts[0], parts[1])

    @property
    def set_name(self) -> str:
        """The source set, as Neuronpedia derives it (`wire.set_name_of`): `0-res-jb` -> `res-jb`,
        `e-res-sm` -> `res-sm`, a bare layer `5` -> `neurons`."""
        return wire.set_name_of(self.source)

    @property
    def layer(self) -> str:
        return self.source.split("-", 1)[0]

    @property
    def set_id(self) -> "SourceSetId":
        return SourceSetId(self.model_id, self.set_name)

    def feature(self, index: int | str) -> "FeatureId":
        return FeatureId(self.model_id, self.source, index)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.model_id}/{self.source}"


@dataclass(frozen=True, order=True)
class SourceSetId:
    """A family of sources across layers, e.g. `gpt2-small/res-jb`."""

    model_id: str
    set_name: str

    def __post_init__(self) -> None:
        text = f"{self.model_id}/{self.set_name}"
        _check_part(self.model_id, "model id", text)
        _check_part(self.set_name, "source set", text)

    @classmethod
    def parse(cls, text: str) -> "SourceSetId":
        parts = _split(text, 2, "model/set (e.g. gpt2-small/res-jb)")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.model_id}/{self.set_name}"


@dataclass(frozen=True, order=True)
class FeatureId:
    """One feature, e.g. `gpt2-small/0-res-jb/123`; `index` is always an int."""

    model_id: str
    source: str
    index: int

    def __post_init__(self) -> None:
        text = f"{self.model_id}/{self.source}/{self.index}"
        SourceId(self.model_id, self.source)  # validates both parts
        object.__setattr__(self, "index", _check_index(self.index, text))

    @classmethod
    def parse(cls, text: str) -> "FeatureId":
        parts = _split(text, 3, "model/source/index (e.g. gpt2-small/0-res-jb/123)")
        return cls(parts[0], parts[1], parts[2])  # type: ignore[arg-type]

    @classmethod
    def coerce(cls, value: "FeatureIdLike") -> "FeatureId":
        if isinstance(value, FeatureId):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return cls(*value)
        raise InvalidIdError(f"not a feature id: {value!r}")

    @property
    def source_id(self) -> SourceId:
        return SourceId(self.model_id, self.source)

    def __str__(self) -> str:
        return f"{self.model_id}/{self.source}/{self.index}"


FeatureIdLike = Union[FeatureId, str, "tuple[str, str, int | str]"]


def _split(text: object, n: int, shape: str) -> list[str]:
    if not isinstance(text, str):
        raise InvalidIdError(f"expected a string {shape}, got {type(text).__name__}")
    parts = text.strip().split("/")
    if len(parts) != n:
        raise InvalidIdError(f"{text!r} is not {shape}")
    return parts


def is_source_name(name: str) -> bool:
    """Sources start with their layer: `0-res-jb`, `12-gemmascope-res-16k`, the embedding
    `e-res-sm`, or are a bare layer of neurons (`5`); a set never does (`res-jb`, `neurons`)."""
    return bool(re.match(r"^([0-9]+|e)-", name)) or wire.is_neuron_layer(name)


def parse_target(text: str) -> SourceId | SourceSetId:
    """A CLI target: `model/source` (see `is_source_name`), else `model/set`."""
    parts = _split(text, 2, "model/source or model/set (e.g. gpt2-small/0-res-jb)")
    if is_source_name(parts[1]):
        return SourceId(parts[0], parts[1])
    return SourceSetId(parts[0], parts[1])
