"""The client: configuration (key, endpoint, retries) and the one place that sends requests."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlencode, urlsplit

from . import errors
from .config import (
    DEFAULT_DOMAIN,
    api_url_for_region,
    normalize_base_url,
    parse_api_key,
    public_url_for_region,
)
from .errors import (
    ConfigurationError,
    IsorunError,
    RateLimitError,
    ServiceUnavailableError,
    error_from_response,
)

SDK_VERSION = "0.1.0"

# How a call may be repeated: "idempotent" (GET, DELETE, create with its idempotency key, resume,
# set_timeout), "unsafe" (hibernate: only refusals are retried), "exec" (never, unless retry_exec).
CallKind = Literal["idempotent", "unsafe", "exec"]


@dataclass(frozen=True)
class RetryInfo:
    """Told before each retry: the attempt (1 for the first retry), the wait and what failed."""

    attempt: int
    delay_sec: float
    error: IsorunError
    method: str
    path: str


@dataclass(frozen=True)
class UsageLimits:
    max_concurrent: int
    creates_per_sec: Optional[float]
    requests_per_sec: Optional[float]
    max_hibernated: Optional[int] = None
    max_concurrent_execs: Optional[int] = None
    hibernation_retention_sec: Optional[int] = None


@dataclass(frozen=True)
class Usage:
    active_sandboxes: int
    hibernated_sandboxes: int
    limits: UsageLimits


@dataclass
class Answer:
    """A 2xx answer, its body read."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class Isorun:
    """A client of one Isorun region.

    The key comes from ``api_key`` or ``ISORUN_API_KEY`` and is checked before any request; the
    endpoint is derived from its region unless ``api_url`` or ``ISORUN_API_URL`` says otherwise.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        api_url: Optional[str] = None,
        *,
        public_url: Optional[str] = None,
        max_retries: int = 3,
        retry_deadline_sec: float = 60.0,
        retry_base_delay_sec: float = 0.5,
        retry_max_delay_sec: float = 8.0,
        retry_concurrent_limit: bool = False,
        retry_exec: bool = False,
        on_retry: Optional[Callable[[RetryInfo], None]] = None,
        request_timeout_sec: float = 900.0,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("ISORUN_API_KEY")
        parsed = parse_api_key(key)
        assert key is not None
        self._api_key = key.strip()
        self.region = parsed.region
        self.key_id = parsed.key_id
        domain = os.environ.get("ISORUN_DOMAIN") or DEFAULT_DOMAIN
        explicit = api_url if api_url is not None else (os.environ.get("ISORUN_API_URL") or None)
        if explicit is not None:
            self.api_url = normalize_base_url(explicit, "api_url" if api_url is not None else "ISORUN_API_URL")
        else:
            self.api_url = api_url_for_region(parsed.region, domain)
        explicit_public = public_url if public_url is not None else (os.environ.get("ISORUN_PUBLIC_URL") or None)
        self.public_url = (
            normalize_base_url(explicit_public, "public_url")
            if explicit_public is not None
            else public_url_for_region(parsed.region, domain)
        )
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be a whole number >= 0, not {max_retries!r}", reason="INVALID_OPTION")
        self.max_retries = max_retries
        self.retry_deadline_sec = retry_deadline_sec
        self._base_delay = retry_base_delay_sec
        self._max_delay = retry_max_delay_sec
        self._retry_concurrent_limit = retry_concurrent_limit
        self._retry_exec = retry_exec
        self._on_retry = on_retry
        self._timeout = request_timeout_sec

    def __repr__(self) -> str:  # never the key
        return f"Isorun(api_url={self.api_url!r}, region={self.region!r}, key_id={self.key_id!r})"

    def usage(self) -> Usage:
        """The tenant's active and hibernated sandboxes and its limits."""
        data = self.call("GET", "/v1/usage", kind="idempotent").json()
        limits = data.get("limits", {})
        return Usage(
            active_sandboxes=data["activeSandboxes"],
            hibernated_sandboxes=data["hibernatedSandboxes"],
            limits=UsageLimits(
                max_concurrent=limits.get("maxConcurrent", 0),
                creates_per_sec=limits.get("createsPerSec"),
                requests_per_sec=limits.get("requestsPerSec"),
                max_hibernated=limits.get("maxHibernated"),
                max_concurrent_execs=limits.get("maxConcurrentExecs"),
                hibernation_retention_sec=limits.get("hibernationRetentionSec"),
            ),
        )

    # ---- transport

    def _headers(self, extra: Optional[Mapping[str, str]], has_body: bool) -> dict:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": f"isorun-sdk-python/{SDK_VERSION}",
        }
        if has_body:
            headers["Content-Type"] = "application/json"
        if extra:
            headers.update(extra)
        return headers

    def _url(self, path: str, query: Optional[Sequence[Tuple[str, str]]]) -> str:
        return f"{self.api_url}{path}" + (f"?{urlencode(list(query))}" if query else "")

    def call(
        self,
        method: str,
        path: str,
        *,
        kind: CallKind,
        body: Any = None,
        query: Optional[Sequence[Tuple[str, str]]] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout_sec: Optional[float] = None,
    ) -> Answer:
        """Sends one call, retrying what is safe to retry; returns a 2xx answer or raises."""
        url = self._url(path, query)
        data = json.dumps(body).encode("utf-8") if body is not None else None
        all_headers = self._headers(headers, data is not None)

        def attempt() -> Answer:
            request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout_sec or self._timeout) as response:
                    return Answer(response.status, dict(response.headers.items()), response.read())
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", errors="replace")
                raise error_from_response(
                    e.code, text, method, url,
                    request_id=e.headers.get("X-Request-Id"),
                    retry_after_header=e.headers.get("Retry-After"),
                ) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                raise errors.ConnectionError(
                    f"could not reach {url}: {reason} ({method} {path})",
                    code="UNAVAILABLE", reason="CONNECTION_FAILED", method=method, url=url,
                ) from e

        return self._with_retries(attempt, method, path, kind)

    def _with_retries(self, attempt: Callable[[], Any], method: str, path: str, kind: CallKind) -> Any:
        started = time.monotonic()
        tries = 0
        while True:
            try:
                return attempt()
            except IsorunError as error:
                if tries >= self.max_retries or not self._retryable(error, kind):
                    raise
                delay = self._backoff(tries, error)
                if time.monotonic() + delay - started > self.retry_deadline_sec:
                    raise
                tries += 1
                if self._on_retry is not None:
                    self._on_retry(RetryInfo(tries, delay, error, method, path))
                time.sleep(delay)

    def _retryable(self, error: IsorunError, kind: CallKind) -> bool:
        if kind == "exec" and not self._retry_exec:
            return False
        safe = kind != "unsafe"
        if isinstance(error, RateLimitError):
            # A 429 refused the call before it did anything; which limits clear by waiting differs.
            if error.reason == "RATE_LIMIT":
                return True
            if error.reason == "CAPACITY":
                return safe
            if error.reason == "CONCURRENT_SANDBOX_LIMIT":
                return safe and self._retry_concurrent_limit
            return False
        if isinstance(error, (ServiceUnavailableError, errors.ConnectionError)):
            return safe
        return False

    def _backoff(self, tries: int, error: IsorunError) -> float:
        """Exponential backoff with full jitter; never shorter than the server's Retry-After."""
        step = min(self._max_delay, self._base_delay * (2 ** tries))
        retry_after = getattr(error, "retry_after_sec", None)
        if retry_after is not None:
            return float(retry_after) + random.uniform(0, min(step, 1.0))
        return random.uniform(0, step)

    def open_stream(self, path: str, body: Any, kind: CallKind) -> "StreamConnection":
        """POSTs ``body`` and returns the open connection of a 2xx streamed answer (exec:stream)."""
        url = self._url(path, None)
        data = json.dumps(body).encode("utf-8")
        headers = self._headers({"Accept": "application/x-ndjson"}, True)
        parts = urlsplit(url)

        def attempt() -> StreamConnection:
            conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = conn_class(parts.hostname or "", parts.port, timeout=self._timeout)
            try:
                conn.request("POST", parts.path, body=data, headers=headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise errors.ConnectionError(
                    f"could not reach {url}: {e} (POST {path})",
                    code="UNAVAILABLE", reason="CONNECTION_FAILED", method="POST", url=url,
                ) from e
            if response.status // 100 != 2:
                text = response.read().decode("utf-8", errors="replace")
                conn.close()
                raise error_from_response(
                    response.status, text, "POST", url,
                    request_id=response.getheader("X-Request-Id"),
                    retry_after_header=response.getheader("Retry-After"),
                )
            return StreamConnection(conn, response, url)

        return self._with_retries(attempt, "POST", path, kind)


class StreamConnection:
    """An open streamed answer; ``close()`` ends it (from any thread)."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str) -> None:
        self.conn = conn
        self.response = response
        self.url = url
        self.request_id = response.getheader("X-Request-Id")
        self.closed = False

    def close(self) -> None:
        self.closed = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conn.close()


_default: Optional[Isorun] = None


def default_client() -> Isorun:
    """The client ``Sandbox`` uses when a call names none: made from the environment on first use."""
    global _default
    if _default is None:
        _default = Isorun()
    return _default


def client_for(client: Optional[Isorun], api_key: Optional[str], api_url: Optional[str]) -> Isorun:
    if client is not None:
        return client
    if api_key is not None or api_url is not None:
        return Isorun(api_key=api_key, api_url=api_url)
    return default_client()
