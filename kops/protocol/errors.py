"""Errors raised by kops's Kafka-protocol clients (blocking and asyncio).

Every error is a `RequestError` (a `kops.errors.KopsError`); `retriable` says
whether sending the same request again (after a reconnect) may succeed.
"""

from __future__ import annotations

from kops.errors import KopsError

__all__ = [
    "BrokerConnectionError",
    "ClientClosedError",
    "ConnectionLostError",
    "ProtocolError",
    "RequestError",
    "RequestTimeoutError",
]


class RequestError(KopsError):
    """The broker could not be reached or answered something unreadable."""


class BrokerConnectionError(RequestError, ConnectionError):
    """No connection to the broker: it refused, the connect timed out, or the link dropped.

    Retriable: the request may succeed once the broker is back.
    """

    retriable = True


class ConnectionLostError(BrokerConnectionError):
    """The connection dropped after the request was written.

    The broker may or may not have processed it: retry only idempotent requests.
    """


class RequestTimeoutError(RequestError, TimeoutError):
    """No response within the request's timeout (the connection is kept)."""

    retriable = True


class ProtocolError(RequestError):
    """The broker answered bytes that are not a valid response to the request."""


class ClientClosedError(RequestError):
    """The client was closed before or while the request was in flight."""
