"""Can the Hugging Face hub serve a registry SAE? Decided before sae_lens is imported.

`SAE.from_pretrained` offline, with nothing cached, spends ~6 s importing sae_lens and then
retries the hub for ~45 s before it fails. So `attach` asks first, in well under a second:
are the SAE's files already in the local Hugging Face cache (then no network is needed)? If
not, is the hub reachable: not with `HF_HUB_OFFLINE` set, else one TCP connection to the
endpoint (`HF_ENDPOINT`, default https://huggingface.co) with a 1 s timeout. When it is not,
`HubUnreachable` says so in one line, at once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from ..errors import HubUnreachable

__all__ = ["HubUnreachable", "hub_cache_dir", "cached_snapshot", "hub_offline", "check_hub", "require_hub_or_cache"]

#: Seconds the connection check waits for the hub.
CONNECT_TIMEOUT_S = 1.0
_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` set (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub uses (its constants, which read HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants  # light: huggingface_hub loads its parts lazily

    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def cached_snapshot(repo_id: str, folder: str) -> Optional[Path]:
    """A snapshot of `repo_id` in the cache that holds `folder` (a folder or a file), else None."""
    snapshots = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    for snap in sorted(snapshots.iterdir()):
        target = snap / folder if folder else snap
        if target.exists() and (target.is_file() or any(target.iterdir())):
            return snap
    return None


def check_hub(timeout_s: float = CONNECT_TIMEOUT_S) -> Optional[str]:
    """Why the hub cannot be reached (one phrase), or None when it can."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    url = endpoint()
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = parts.hostname or "huggingface.co"
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        return f"HF_ENDPOINT {url!r} is not a URL"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        return f"{host}:{port} did not answer within {timeout_s:g} s ({reason})"


def require_hub_or_cache(release: str, sae_id: str) -> None:
    """Return when the SAE's files are cached or the hub is reachable; else raise HubUnreachable."""
    from .registry import repo_and_folder

    repo_id, folder = repo_and_folder(release, sae_id)
    if cached_snapshot(repo_id, folder) is not None:
        return
    why = check_hub()
    if why is None:
        return
    raise HubUnreachable(
        f"{release}/{sae_id} is not in the Hugging Face cache ({hub_cache_dir()}) and the hub cannot be "
        f"reached ({why}); download it once online, or attach it from a local path"
    )
