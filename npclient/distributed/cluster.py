"""Reaching a Ray cluster: the one place that imports Ray and starts or joins a cluster."""

from __future__ import annotations

import os
from typing import Any, Optional

from ..errors import InvalidOptionError
from ..faults import ENV as FAULT_ENV

__all__ = ["actor_shape", "connect", "fault_spec", "resources"]


def connect(address: Optional[str] = None) -> Any:
    """The `ray` module, initialised: the cluster this process already joined, else the one at
    `address` ("auto": the one running on this machine; "host:port": a cluster's head node;
    "ray://host:port" needs Ray Client, `ray[client]`), else a
    fresh local cluster (Ray's default, which also honours RAY_ADDRESS). Missing Ray or an
    unreachable cluster is bad input (InvalidOptionError), named by `engine` or `address`."""
    try:
        import ray
    except ImportError:
        raise InvalidOptionError("the ray engine needs Ray, which is not installed: pip install 'np-mirror[ray]'",
                                 option="engine") from None
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level="warning")
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
        raise InvalidOptionError(f"cannot reach the Ray cluster at {where}: {e}", option="address") from None
    return ray


def resources(ray: Any) -> tuple[int, float]:
    """(CPUs, GPUs) the cluster has, as Ray counts them (logical GPUs included)."""
    res = ray.cluster_resources()
    return int(res.get("CPU", 0)), float(res.get("GPU", 0))


def fault_spec() -> Optional[str]:
    """The driver's NP_MIRROR_FAULT, handed to the workers with each task (kill tests)."""
    return os.environ.get(FAULT_ENV) or None


def actor_shape(ray: Any, gpus: Optional[float] = None) -> tuple[float, int]:
    """(GPUs per actor, actors): one actor per `gpus` GPUs (default 1 where the cluster has
    GPUs), else one CPU actor per CPU. More GPUs per actor than the cluster has is bad input."""
    n_cpus, n_gpus = resources(ray)
    per = (1.0 if n_gpus >= 1 else 0.0) if gpus is None else float(gpus)
    if per > 0 and n_gpus < per:
        raise InvalidOptionError(f"actors of {per:g} GPU each, but the cluster has {n_gpus:g} GPUs",
                                 option="num_gpus_per_actor")
    return per, (int(n_gpus // per) if per > 0 else max(1, n_cpus))
