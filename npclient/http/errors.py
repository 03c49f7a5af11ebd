"""The one mapping of httpx failures and HTTP statuses onto the `NPError` tree.

Both clients (Neuronpedia's API, `client.py`; the export bucket, `s3.py`) send through httpx
and raise nothing but `NPError`s. This is where httpx's exceptions and a response's status
become those errors, so the two clients cannot drift apart:

- httpx's transport errors (connect, read, write, protocol, proxy) and its timeouts ->
  `NPTransportError` (retried), naming the exception and the URL, never the API key;
- a status >= 400 -> `errors.status_error`: 429 `RateLimited` (with the `Retry-After` the
  server sent, as seconds), 404 `NotFound`, 401/403 `Unauthorized`, a 500 with Neuronpedia's
  catch-all body `{"message": "Unknown Error"}` `RouteError`, other 5xx `ServerError`, other
  4xx `BadRequest`. The message carries the body, clipped.

What a 2xx body means (JSON, a feature, a listing) is each client's own business.
"""

from __future__ import annotations

from typing import Optional

import httpx

from ..errors import APIStatusError, NPTransportError, status_error

__all__ = [
    "TRANSPORT_ERRORS",
    "ERROR_BODY_BYTES",
    "transport_error",
    "retry_after",
    "response_error",
    "raise_for_status",
    "raise_for_stream_status",
]

#: What httpx raises when a request produced no usable response (`TimeoutException` is a
#: `TransportError`; named for clarity).
TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.TransportError)
#: How much of a streamed error body is read for the message.
ERROR_BODY_BYTES = 4096


def transport_error(exc: BaseException, url: str) -> NPTransportError:
    """The `NPTransportError` for an httpx transport failure (or timeout) of a request to `url`."""
    if isinstance(exc, httpx.TimeoutException):
        return NPTransportError(f"timed out ({type(exc).__name__})", url=url)
    return NPTransportError(f"{type(exc).__name__}: {exc}", url=url)


def retry_after(value: Optional[str]) -> Optional[float]:
    """A `Retry-After` header in seconds (never negative); None when absent or not a number."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def response_error(response: httpx.Response, url: str, body: Optional[str] = None) -> APIStatusError:
    """The error for a response with status >= 400; `body` defaults to the response's text."""
    text = response.text if body is None else body
    return status_error(response.status_code, url, text, retry_after(response.headers.get("retry-after")))


def raise_for_status(response: httpx.Response, url: str) -> None:
    """Raise `response_error` for a status >= 400 (the body must have been read)."""
    if response.status_code >= 400:
        raise response_error(response, url)


async def raise_for_stream_status(response: httpx.Response, url: str) -> None:
    """`raise_for_status` for a streamed response: the message takes the first
    `ERROR_BODY_BYTES` of its body as sent, or none when reading it fails too."""
    if response.status_code < 400:
        return
    try:
        body = (await response.aread())[:ERROR_BODY_BYTES].decode("utf-8", "replace")
    except TRANSPORT_ERRORS:
        body = ""
    raise response_error(response, url, body)
