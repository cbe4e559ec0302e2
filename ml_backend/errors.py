"""The one error type the backend answers with: an HTTP status and a message that names the problem."""

from __future__ import annotations

from castlab.errors import CastlabError


class BackendError(CastlabError):
    """A request the backend cannot serve; becomes ``{"error": message}`` with HTTP `status`."""

    def __init__(self, status: int, message: str) -> None:
        self.status = int(status)
        self.message = message
        super().__init__(message)
