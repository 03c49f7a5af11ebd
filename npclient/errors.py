"""One error tree for everything npclient raises, so callers catch `NPError` and nothing else.

    NPError
    ├── InvalidIdError            malformed feature/source id (raised before any request)
    │   └── UnknownSourceError    a well-formed source or set that the server does not have
    ├── InvalidOptionError        an argument that cannot be valid (k < 1, unknown device or dtype, options that exclude each other)
    │   ├── InvalidPathError      a file or folder argument that is missing or not the kind asked for
    │   ├── FeatureOutOfRange     a feature index beyond the rows there are (also an IndexError)
    │   └── WeightsRequestError   attach arguments that do not go together (also a WeightsError)
    ├── NPTransportError          connect/read errors, timeouts, truncated or malformed bodies  [retried]
    ├── APIStatusError            the server answered with an error status
    │   ├── BadRequest (400)      never retried
    │   ├── Unauthorized (401)    never retried
    │   ├── NotFound (404)        never retried
    │   ├── RateLimited (429)     handed to the Pacer as a cooldown, not a backoff
    │   └── ServerError (5xx)     [retried]
    │       └── RouteError        a route's own catch-all answer (500 "Unknown Error")
    ├── PayloadError              a well-formed body we cannot understand (schema drift)     [not retried]
    ├── StoreError                the local mirror could not be read or written
    │   ├── NotAMirrorError       a --db file that is not an np-mirror database
    │   ├── MirrorNotFound        no mirror file where a read needs one
    │   ├── MirrorBusyError       another process holds the database for too long
    │   └── QueryError            SQL that DuckDB rejected (syntax, unknown column, a write when read-only)
    ├── WeightsError              SAE weights missing, malformed or not matching the source
    │   ├── WeightsMismatch       weights that load but belong to another source or shape
    │   ├── CorruptWeights        a weights file that cannot be read
    │   └── HubUnreachable        not in the Hugging Face cache, and the hub cannot be reached (also an NPTransportError)
    └── ExportError               a bulk export (S3 dump) could not be listed or downloaded
        ├── CorruptDownload       a downloaded file whose size or MD5 does not match the listing
        └── UnsafeKey             an object key that would write outside the export cache

Input errors (InvalidIdError, InvalidOptionError and their subclasses) are also ValueError, so
`except ValueError` keeps working; the CLI answers them with exit 2, and any other exception
with exit 1 as a bug. Messages speak of arguments as the library names them (`k`, `n_clusters`,
`dtype`), never of command-line flags: the CLI maps `InvalidOptionError.option` to its flag.
Messages never contain the API key: errors carry the URL and a clipped body only.
"""

from __future__ import annotations

__all__ = [
    "NPError",
    "InvalidIdError",
    "UnknownSourceError",
    "NPTransportError",
    "APIStatusError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "RateLimited",
    "ServerError",
    "RouteError",
    "PayloadError",
    "StoreError",
    "MirrorNotFound",
    "NotAMirrorError",
    "MirrorBusyError",
    "QueryError",
    "WeightsError",
    "ExportError",
    "CorruptDownload",
    "UnsafeKey",
    "status_error",
    "WeightsMismatch",
    "CorruptWeights",
]

_BODY_CLIP = 300


class NPError(Exception):
    """Root of every error npclient raises."""


class InvalidIdError(NPError, ValueError):
    """A feature, source or source-set id that cannot be valid."""


class UnknownSourceError(InvalidIdError):
    """A source or source set that the server does not have."""


class NPTransportError(NPError):
    """The request did not produce a usable response; safe to retry."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message if url is None else f"{message} ({url})")
        self.url = url


class APIStatusError(NPError):
    """The server answered with an error status."""

    status_code: int = 0

    def __init__(self, status_code: int, url: str, body: str = "") -> None:
        self.status_code = status_code
        self.url = url
        self.body = body
        clipped = body if len(body) <= _BODY_CLIP else body[:_BODY_CLIP] + "…"
        clipped = clipped.replace("\n", " ").strip()
        super().__init__(f"HTTP {status_code} for {url}" + (f": {clipped}" if clipped else ""))


class BadRequest(APIStatusError):
    pass


class Unauthorized(APIStatusError):
    pass


class NotFound(APIStatusError):
    pass


class RateLimited(APIStatusError):
    """HTTP 429. `retry_after` is set only when the server sent a `Retry-After` header."""

    def __init__(self, status_code: int, url: str, body: str = "", retry_after: float | None = None):
        super().__init__(status_code, url, body)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    pass


class RouteError(ServerError):
    """500 `{"message": "Unknown Error"}`: the route caught its own failure and said so.

    Neuronpedia's features and search routes answer this for requests they cannot serve
    (an unknown model or source set in a search, say) as well as for internal faults. Search
    does not retry it: against the 200-an-hour search budget a retry costs dearly and rarely helps.
    """


class PayloadError(NPError):
    """Valid JSON that does not have the shape of the payload asked for."""


class StoreError(NPError):
    """The local mirror could not be opened, read or written."""


class NotAMirrorError(StoreError):
    pass


class MirrorNotFound(StoreError):
    pass


class MirrorBusyError(StoreError):
    pass


class QueryError(StoreError):
    pass


class WeightsError(NPError):
    pass


class ExportError(NPError):
    """A bulk export (Neuronpedia's public S3 dumps) could not be listed, fetched or stored."""


class CorruptDownload(ExportError):
    """A downloaded file whose size or MD5 does not match what the listing promised."""


class UnsafeKey(ExportError):
    """An object key with unsafe characters, `..` or an absolute part: it is never written."""


def _is_route_catch_all(body: str) -> bool:
    import json

    try:
        return json.loads(body) == {"message": "Unknown Error"}
    except ValueError:
        return False


def status_error(status_code: int, url: str, body: str = "", retry_after: float | None = None) -> APIStatusError:
    """Map a status code to its exception class (the one place this mapping lives)."""
    if status_code == 429:
        return RateLimited(status_code, url, body, retry_after)
    if status_code == 404:
        return NotFound(status_code, url, body)
    if status_code == 401 or status_code == 403:
        return Unauthorized(status_code, url, body)
    if status_code == 500 and _is_route_catch_all(body):
        return RouteError(status_code, url, body)
    if status_code >= 500:
        return ServerError(status_code, url, body)
    if status_code >= 400:
        return BadRequest(status_code, url, body)
    return APIStatusError(status_code, url, body)


class WeightsMismatch(WeightsError):
    """Weights that load but do not belong to the target (feature count, Neuronpedia id, shape)."""


class CorruptWeights(WeightsError):
    """A weights file that cannot be read: truncated, bad header, missing tensor, unknown dtype."""


class InvalidOptionError(NPError, ValueError):
    """An option that cannot be valid (a range, a set of parts, a concurrency, a base URL).

    `option` names it as the library spells it (`range`, `parts`, `max_acts`, `scores`,
    `concurrency`, `batch_size`, `base_url`, `exports_url`); the message says what the option
    means, never a command-line flag: the CLI maps `option` to its flag.
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


__all__ += ["InvalidOptionError"]


class InvalidPathError(InvalidOptionError):
    """A file or folder argument that cannot be used: missing, or not the kind of file asked for."""


class FeatureOutOfRange(InvalidOptionError, IndexError):
    """A feature index beyond the rows of a source or decoder (an IndexError too, as it was)."""


class WeightsRequestError(WeightsError, InvalidOptionError):
    """Attach arguments that do not go together or name nothing (a WeightsError too, as it was)."""


class HubUnreachable(WeightsError, NPTransportError):
    """The SAE's files are not cached here and the Hugging Face hub cannot be reached.

    A WeightsError (nothing was attached) and a transport error (the network, not the
    request, is what failed: the CLI answers exit 1)."""


__all__ += ["InvalidPathError", "FeatureOutOfRange", "WeightsRequestError", "HubUnreachable"]
