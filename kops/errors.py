"""The root of every exception kops raises.

`KopsError` is what a caller catches to handle "kops said no" apart from bugs
(the CLI turns it into one `error: ...` line). `retriable` says whether the
same call may succeed later unchanged. `ApiError` is the branch that carries a
Kafka `ErrorCode`: the code a broker answers with, or one a client received.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

__all__ = ["ApiError", "KopsError", "Unsupported"]


class KopsError(Exception):
    """Base of kops's exceptions. Subclasses set `retriable` where retrying can help."""

    retriable: bool = False


class Unsupported(KopsError):
    """The cluster lacks what was asked of it (transactions, say): retrying cannot help,
    so a worker job raising it stops for good instead of restarting."""


class ApiError(KopsError):
    """An error with a Kafka error code; `retriable` follows the code unless given."""

    error_code: ErrorCode = ErrorCode.unknown_server_error

    def __init__(
        self,
        message: str = "",
        *,
        error_code: ErrorCode | None = None,
        retriable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if error_code is not None:
            self.error_code = error_code
        self.retriable = self.error_code.retriable if retriable is None else retriable
