"""A blocking facade over `NeuronpediaClient`, for scripts and notebooks.

It runs the async client on a private event loop in a daemon thread, so it works where
`asyncio.run` cannot (inside Jupyter, whose loop is already running) and keeps one
pooled connection across calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, Literal, Optional, TypeVar

from .aio import new_event_loop
from .http.client import FeatureResult, NeuronpediaClient
from .ids import FeatureIdLike
from .models import Feature, ModelInfo, SearchResult, SourceSetInfo, VectorInfo

__all__ = ["BlockingClient"]

T = TypeVar("T")


class BlockingClient:
    """`BlockingClient(**kwargs)` takes the same arguments as `NeuronpediaClient`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="npclient-loop", daemon=True)
        self._thread.start()
        self._client: NeuronpediaClient = self._run(_make(args, kwargs))

    def __repr__(self) -> str:
        return f"BlockingClient({self._client!r})"

    @property
    def client(self) -> NeuronpediaClient:
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            raise RuntimeError("this client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get_feature(self, feature: FeatureIdLike) -> Feature:
        return self._run(self._client.get_feature(feature))

    def get_features(
        self,
        features: Iterable[FeatureIdLike],
        *,
        method: Literal["post", "get"] = "post",
        max_acts: Optional[int] = None,
    ) -> list[FeatureResult]:
        return self._run(self._client.get_features(list(features), method=method, max_acts=max_acts))

    def list_models(self) -> list[ModelInfo]:
        return self._run(self._client.list_models())

    def get_source_set(self, model_id: str, set_name: Optional[str] = None) -> Optional[SourceSetInfo]:
        return self._run(self._client.get_source_set(model_id, set_name))

    def search_explanations(
        self, model_id: str, layers: Sequence[str], query: str, *, max_results: Optional[int] = 100
    ) -> list[SearchResult]:
        return self._run(self._client.search_explanations(model_id, layers, query, max_results=max_results))

    def get_vector(self, model_id: str, source: str, index: int | str) -> VectorInfo:
        return self._run(self._client.get_vector(model_id, source, index))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make(args: tuple[Any, ...], kwargs: dict[str, Any]) -> NeuronpediaClient:
    return NeuronpediaClient(*args, **kwargs)
