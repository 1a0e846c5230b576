"""The errors of the Isorun SDK: one hierarchy, the same names as the TypeScript SDK.

Every non-2xx answer raises an :class:`IsorunError` (a subclass by meaning) whose message starts
with the HTTP status and includes the first 200 bytes of the response body.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

__all__ = [
    "IsorunError",
    "InvalidArgumentError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "SandboxNotRunningError",
    "RateLimitError",
    "ExecTimeoutError",
    "ServiceUnavailableError",
    "ConnectionError",
    "ConfigurationError",
    "ApiKeyError",
    "first_bytes",
    "error_from_response",
]


def first_bytes(text: str, limit: int = 200) -> str:
    """The first ``limit`` bytes of ``text`` as UTF-8 (a character cut in half is dropped)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


class IsorunError(Exception):
    """Base of every error the SDK raises.

    ``status`` is the HTTP status (0 when there was no answer), ``code`` the gRPC code name,
    ``reason`` API.md's machine-readable word, ``body`` the parsed ``error`` object,
    ``raw_body`` the body as received and ``request_id`` the gateway's ``X-Request-Id``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "CLIENT",
        reason: str = "",
        body: Optional[Mapping[str, Any]] = None,
        raw_body: Optional[str] = None,
        request_id: Optional[str] = None,
        method: Optional[str] = None,
        url: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.reason = reason
        self.body = dict(body) if body is not None else None
        self.raw_body = raw_body
        self.request_id = request_id
        self.method = method
        self.url = url


class InvalidArgumentError(IsorunError):
    """400: the request was invalid; nothing changed."""


class AuthenticationError(IsorunError):
    """401: the key is missing, malformed, unknown, revoked or of another region."""


class PermissionDeniedError(IsorunError):
    """403: the key's role may not do this."""


class NotFoundError(IsorunError):
    """404: no such sandbox (or another tenant's), route or image."""


class SandboxNotRunningError(IsorunError):
    """409: the sandbox is not in a state for this (``SANDBOX_NOT_RUNNING``)."""


class ServiceUnavailableError(IsorunError):
    """503: a service behind the gateway is unavailable."""


class RateLimitError(IsorunError):
    """429: a limit was hit; ``retry_after_sec`` says when to try again."""

    def __init__(self, message: str, *, retry_after_sec: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        body = self.body or {}
        self.retry_after_sec = retry_after_sec
        self.limit: Optional[int] = body.get("limit")
        self.current: Optional[int] = body.get("current")


class ExecTimeoutError(IsorunError):
    """504 ``EXEC_TIMEOUT``: the command ran past its timeout and was killed."""


class ConnectionError(IsorunError):  # noqa: A001 - the SDKs share this name
    """No HTTP answer: the connection failed or broke; ``url`` is the URL tried."""


class ConfigurationError(IsorunError):
    """The client's configuration is unusable; nothing was sent."""


class ApiKeyError(ConfigurationError):
    """The API key is missing or malformed; raised before any request. Never shows the secret."""


_CODE_FOR_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _parse_error_body(text: str) -> Optional[dict]:
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), dict):
        return None
    error = parsed["error"]
    if not isinstance(error.get("reason"), str) or not isinstance(error.get("code"), str):
        return None
    return error


def error_from_response(
    status: int,
    text: str,
    method: str,
    url: str,
    request_id: Optional[str] = None,
    retry_after_header: Optional[str] = None,
) -> IsorunError:
    """The error for a non-2xx answer: ``"<status> <reason>: <message> (<METHOD> <path>; body: ...)"``."""
    body = _parse_error_body(text)
    reason = (body or {}).get("reason") or _CODE_FOR_STATUS.get(status, "UNKNOWN")
    code = (body or {}).get("code") or _CODE_FOR_STATUS.get(status, "UNKNOWN")
    detail = (body or {}).get("message") or "the server answered without an error body"
    hint = ""
    if reason == "EXEC_TIMEOUT":
        hint = " Give the command a longer timeout (exec(cmd, timeout_sec=...)) or use exec_stream, which has none."
    path = urlsplit(url).path or url
    message = f"{status} {reason}: {detail} ({method} {path}; body: {first_bytes(text)}){hint}"
    kwargs: dict = dict(
        status=status, code=code, reason=reason, body=body, raw_body=text,
        request_id=request_id, method=method, url=url,
    )
    if status == 400:
        return InvalidArgumentError(message, **kwargs)
    if status == 401:
        return AuthenticationError(message, **kwargs)
    if status == 403:
        return PermissionDeniedError(message, **kwargs)
    if status == 404:
        return NotFoundError(message, **kwargs)
    if status == 409:
        return SandboxNotRunningError(message, **kwargs)
    if status == 429:
        retry_after = (body or {}).get("retryAfterSec")
        if retry_after is None and retry_after_header is not None:
            try:
                retry_after = int(retry_after_header)
            except ValueError:
                retry_after = None
        return RateLimitError(message, retry_after_sec=retry_after, **kwargs)
    if status == 503:
        return ServiceUnavailableError(message, **kwargs)
    if status == 504 and reason == "EXEC_TIMEOUT":
        return ExecTimeoutError(message, **kwargs)
    return IsorunError(message, **kwargs)
