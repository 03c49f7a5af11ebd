"""Frozen settings of the Neuronpedia emulator.

Everything the emulator serves is a pure function of an `EmulatorConfig`, so two emulators
built from equal configs answer byte-for-byte alike (the property the tests lean on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from ... import wire

__all__ = [
    "SourceSpec",
    "RateLimitConfig",
    "FaultConfig",
    "EmulatorConfig",
    "FAULT_KINDS",
    "DEFAULT_SOURCES",
    "set_name_of",
]

FaultKind = Literal["json500", "html500", "html502", "reset", "truncated", "malformed", "slow"]
FAULT_KINDS: tuple[str, ...] = ("json500", "html500", "html502", "reset", "truncated", "malformed", "slow")


def set_name_of(source_id: str) -> str:
    """Source set of a source id (lib/utils/source.ts): `0-res-jb` -> `res-jb`, `5` -> `neurons`."""
    if not source_id or ("-" not in source_id and not wire.is_neuron_layer(source_id)):
        raise ValueError(f"source id {source_id!r} names no source set (expected e.g. '0-res-jb' or '5')")
    return wire.set_name_of(source_id)


@dataclass(frozen=True)
class SourceSpec:
    """One source (SAE or steering-vector store) of one model.

    `kind="vector"` sources hold `n_vectors` user steering vectors at large pseudo-random
    indices, the way Neuronpedia stores vectors as rows with a random 8-9 digit index.
    """

    model_id: str
    source_id: str
    d_sae: int
    d_in: int = 64
    kind: Literal["sae", "vector"] = "sae"
    n_vectors: int = 0
    hook_name: str | None = None  # default: blocks.{layer}.hook_resid_pre
    #: how the Source row carries its sae_lens config: an object, null, or a JSON string
    saelens_config: Literal["object", "null", "string"] = "object"

    def __post_init__(self) -> None:
        set_name_of(self.source_id)  # validate
        if self.kind == "sae" and self.d_sae <= 0:
            raise ValueError("an SAE source needs d_sae > 0")
        if self.kind == "vector" and self.n_vectors <= 0:
            raise ValueError("a vector source needs n_vectors > 0")
        if self.saelens_config not in ("object", "null", "string"):
            raise ValueError(f"saelens_config must be object, null or string, got {self.saelens_config!r}")

    @property
    def set_name(self) -> str:
        return set_name_of(self.source_id)

    @property
    def layer_num(self) -> int:
        return wire.layer_number(self.source_id) or 0

    @property
    def hook(self) -> str:
        return self.hook_name or f"blocks.{self.layer_num}.hook_resid_pre"


DEFAULT_SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("gpt2-small", "0-res-jb", d_sae=1024),
    SourceSpec("gpt2-small", "1-res-jb", d_sae=1024),
    SourceSpec("gemma-2-2b", "12-gemmascope-res-16k", d_sae=512),
    SourceSpec("gpt2-small", "6-res-vectors", d_sae=0, kind="vector", n_vectors=4,
               hook_name="blocks.6.hook_resid_pre"),
)

# The per-endpoint buckets of apps/webapp/middleware.ts (NORMAL_RATE_LIMITS, after '/' and '/api').
DEFAULT_ENDPOINT_LIMITS: dict[str, int] = {ep: lim for ep, lim, _ in wire.NORMAL_RATE_LIMITS[2:]}
DEFAULT_EXACT_ENDPOINTS: frozenset[str] = frozenset(ep for ep, _, exact in wire.NORMAL_RATE_LIMITS if exact)


@dataclass(frozen=True)
class RateLimitConfig:
    """Sliding-window buckets keyed by client IP, as Neuronpedia's middleware does.

    Buckets are checked in order: '/' (only when `root_limit` is set; the real site has it
    at 25,000 and, since every API call also counts there, it is the one a 429 names),
    '/api', then each matching `endpoint_limits` prefix (`exact_endpoints` match only whole
    path components). `algorithm="upstash"` is the real approximation (fixed windows,
    previous one weighted by the time left); `"log"` is an exact sliding log.
    """

    api_limit: int = 25000
    window_s: float = 3600.0
    endpoint_limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_ENDPOINT_LIMITS))
    exact_endpoints: frozenset[str] = DEFAULT_EXACT_ENDPOINTS
    root_limit: int | None = None
    algorithm: Literal["upstash", "log"] = "upstash"
    unlimited_prefixes: tuple[str, ...] = wire.NO_LIMIT_PREFIXES

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError("window_s must be > 0")
        if self.algorithm not in ("upstash", "log"):
            raise ValueError(f"unknown algorithm {self.algorithm!r}")

    @property
    def window_label(self) -> str:
        """How the 429 body renders the window: '60 m' for an hour, '10 s' for 10 s."""
        w = self.window_s
        if w >= 60 and w % 60 == 0:
            return f"{int(w // 60)} m"
        return f"{w:g} s"

    def buckets(self) -> list[tuple[str, int, bool]]:
        """(endpoint, limit, exact) in the order the middleware checks them."""
        out: list[tuple[str, int, bool]] = []
        if self.root_limit is not None:
            out.append(("/", self.root_limit, False))
        out.append(("/api", self.api_limit, False))
        out.extend((ep, lim, ep in self.exact_endpoints) for ep, lim in self.endpoint_limits.items())
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "api_limit": self.api_limit,
            "window_s": self.window_s,
            "endpoint_limits": dict(self.endpoint_limits),
            "exact_endpoints": sorted(self.exact_endpoints),
            "root_limit": self.root_limit,
            "algorithm": self.algorithm,
            "unlimited_prefixes": list(self.unlimited_prefixes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RateLimitConfig:
        kw = dict(data)
        if "exact_endpoints" in kw:
            kw["exact_endpoints"] = frozenset(kw["exact_endpoints"])
        if "unlimited_prefixes" in kw:
            kw["unlimited_prefixes"] = tuple(kw["unlimited_prefixes"])
        _check_keys(cls, kw)
        return cls(**kw)


@dataclass(frozen=True)
class FaultConfig:
    """Which faults to inject on /api routes, and how often.

    A request gets a fault with probability `rate`, decided by a stable hash of
    (seed, method + path + body, attempt number for that key): replaying the same request
    sequence replays the same faults.
    """

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    slow_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be in [0, 1]")
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if self.rate > 0 and not self.kinds:
            raise ValueError("rate > 0 needs at least one kind")

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed, "kinds": list(self.kinds), "slow_s": self.slow_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultConfig:
        kw = dict(data)
        if "kinds" in kw:
            kw["kinds"] = tuple(kw["kinds"])
        _check_keys(cls, kw)
        return cls(**kw)


@dataclass(frozen=True)
class EmulatorConfig:
    """Catalog, seed and behaviour of one emulator.

    `hole_rate`: fraction of SAE indices (picked by hash) that 404 forever.
    `n_activations` / `tokens_per_activation`: inclusive ranges per feature / activation.
    `cache_size`: how many serialised feature payloads to keep (about 40 KB each).
    """

    sources: tuple[SourceSpec, ...] = DEFAULT_SOURCES
    seed: int = 0
    latency_s: float = 0.0
    top_k: int = 25
    hole_rate: float = 0.0
    rate_limit: RateLimitConfig | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    n_activations: tuple[int, int] = (20, 24)
    tokens_per_activation: tuple[int, int] = (64, 128)
    cache_size: int = 4096

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for s in self.sources:
            key = (s.model_id, s.source_id)
            if key in seen:
                raise ValueError(f"duplicate source {s.model_id}/{s.source_id}")
            seen.add(key)
        if not 0.0 <= self.hole_rate < 1.0:
            raise ValueError("hole_rate must be in [0, 1)")
        for name in ("n_activations", "tokens_per_activation"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range (lo <= hi), got {(lo, hi)}")
        if self.tokens_per_activation[0] < 1:
            raise ValueError("tokens_per_activation must be >= 1")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")

    def replace(self, **changes: Any) -> EmulatorConfig:
        return replace(self, **changes)


def _check_keys(cls: type, kw: Mapping[str, Any]) -> None:
    known = {f.name for f in fields(cls)}
    extra = set(kw) - known
    if extra:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(extra)}")
