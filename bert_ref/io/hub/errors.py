"""The errors `bert_ref.io.hub` raises. Every message names the URL or path involved and a likely fix.

All of them are `OSError`s (they are failures to obtain files), so `except OSError` catches any
download, cache or offline failure; malformed preset strings raise `ValueError` instead.
"""

from __future__ import annotations


class HubError(OSError):
    """A preset could not be fetched, found in a cache, or unpacked."""


class DownloadError(HubError):
    """An HTTP request failed for good (after the retries it was entitled to).

    Attributes:
        url: the URL that failed.
        status: the HTTP status code, or None for connection errors and timeouts.
        attempts: how many requests were made.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts


class AuthenticationError(DownloadError):
    """HTTP 401/403: credentials are missing, wrong, or the model's terms were not accepted."""


class RemoteNotFoundError(DownloadError):
    """HTTP 404, or a file the preset's layout needs is absent from the remote repository."""


class IntegrityError(DownloadError):
    """A downloaded body does not match the checksum or size the server announced."""


class OfflineError(HubError):
    """Offline mode is on and the preset is not in any cache (the message lists where we looked)."""


class UnsafeArchiveError(HubError):
    """An archive member would escape the target directory or is a link or special file."""
