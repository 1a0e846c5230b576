"""A sandbox: its fields as typed attributes, and what can be done with it."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote, urlsplit

from . import errors
from .client import Isorun, StreamConnection, client_for
from .errors import ConfigurationError, IsorunError, error_from_response

DEFAULT_LOCAL_IMAGE = "busybox:1.36"


@dataclass(frozen=True)
class ExecResult:
    """What a command left; a non-zero exit code is a result, not an error."""

    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass(frozen=True)
class ExecChunk:
    """One piece of a streamed command's output: ``stream`` is "stdout" or "stderr"."""

    stream: str
    text: str


class ExecCancelledError(IsorunError):
    """The stream was closed before the command ended; closing it killed the command."""


def _time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _exec_body(cmd: str, timeout_sec: Optional[int], env: Optional[Mapping[str, str]],
               cwd: Optional[str], stdin: Optional[str]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"cmd": cmd}
    if timeout_sec is not None:
        body["timeoutSec"] = timeout_sec
    if env is not None:
        body["env"] = dict(env)
    if cwd is not None:
        body["cwd"] = cwd
    if stdin is not None:
        body["stdin"] = stdin
    return body


class ExecStream:
    """``exec_stream``: iterate it for :class:`ExecChunk` s, or ``wait()`` for the result (the
    callbacks fire either way, as output arrives). ``close()`` (from a callback or another
    thread) ends the stream, and the gateway kills the command. Also a context manager."""

    def __init__(self, sandbox: "Sandbox", body: Dict[str, Any],
                 on_stdout: Optional[Callable[[str], None]],
                 on_stderr: Optional[Callable[[str], None]]) -> None:
        self._sandbox = sandbox
        self._body = body
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._conn: Optional[StreamConnection] = None
        self._closed = False
        self._result: Optional[ExecResult] = None
        self._error: Optional[BaseException] = None
        self._chunks: Optional[Iterator[ExecChunk]] = None

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends the stream; a running command is killed."""
        self._closed = True
        if self._conn is not None:
            self._conn.close()

    def __iter__(self) -> Iterator[ExecChunk]:
        if self._chunks is None:
            self._chunks = self._run()
        return self._chunks

    def wait(self) -> ExecResult:
        """Runs the stream to its end and returns the result (raises what it failed with)."""
        for _ in self:
            pass
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _run(self) -> Iterator[ExecChunk]:
        started = time.monotonic()
        path = f"{self._sandbox._path}/exec:stream"
        client = self._sandbox.client
        try:
            self._conn = client.open_stream(path, self._body, "exec")
            if self._closed:
                self._conn.close()
            stdout: List[str] = []
            stderr: List[str] = []
            pending = b""
            while True:
                try:
                    data = self._conn.response.read1(65536)
                except (OSError, ValueError, AttributeError) as e:
                    data = b""
                    if not self._closed:
                        raise self._broken(f"reading failed: {e}") from e
                if not data:
                    if self._closed:
                        raise ExecCancelledError(
                            "exec:stream was closed before the command ended; the command was killed",
                            reason="CANCELLED", method="POST", url=self._conn.url)
                    raise self._broken("the stream ended before the command did")
                pending += data
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line:
                        continue
                    try:
                        value = json.loads(line)
                    except ValueError:
                        raise self._broken(f"an unreadable line: {line[:200]}") from None
                    if isinstance(value.get("stdout"), str):
                        stdout.append(value["stdout"])
                        if self._on_stdout is not None:
                            self._on_stdout(value["stdout"])
                        yield ExecChunk("stdout", value["stdout"])
                    elif isinstance(value.get("stderr"), str):
                        stderr.append(value["stderr"])
                        if self._on_stderr is not None:
                            self._on_stderr(value["stderr"])
                        yield ExecChunk("stderr", value["stderr"])
                    elif isinstance(value.get("exitCode"), int):
                        self._result = ExecResult(
                            exit_code=value["exitCode"], stdout="".join(stdout), stderr="".join(stderr),
                            duration_ms=int((time.monotonic() - started) * 1000))
                        return
                    elif isinstance(value.get("error"), dict):
                        status = value["error"].get("status")
                        raise error_from_response(
                            status if isinstance(status, int) else 500, line, "POST",
                            self._conn.url, request_id=self._conn.request_id)
                    else:
                        raise self._broken(f"an unexpected line: {line[:200]}")
        except BaseException as e:
            self._error = e
            raise
        finally:
            if self._conn is not None:
                self._conn.conn.close()

    def _broken(self, why: str) -> IsorunError:
        url = self._conn.url if self._conn is not None else ""
        return errors.ConnectionError(f"exec:stream from {url} broke: {why}",
                                      code="UNAVAILABLE", reason="STREAM_BROKEN", method="POST", url=url)


class Sandbox:
    """A sandbox of the API. Attributes mirror the API's sandbox object in snake_case."""

    id: str
    state: str
    image: str
    image_digest: str
    cpu_millis: int
    memory_mb: int
    disk_mb: Optional[int]
    timeout_sec: int
    created_at: Optional[datetime]
    expires_at: Optional[datetime]
    ended_at: Optional[datetime]
    end_reason: Optional[str]
    end_message: Optional[str]
    metadata: Dict[str, str]
    network: Dict[str, Any]
    public_id: str
    urls: Dict[str, str]

    def __init__(self, client: Isorun, data: Mapping[str, Any]) -> None:
        self.client = client
        self.id = data["id"]
        self._apply(data)

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, state={self.state!r}, image={self.image!r})"

    # ---- class methods

    @classmethod
    def create(
        cls,
        image: Optional[str] = None,
        *,
        timeout_sec: Optional[int] = None,
        cpu_millis: Optional[int] = None,
        memory_mb: Optional[int] = None,
        disk_mb: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        network: Optional[Mapping[str, Any]] = None,
        idempotency_key: Optional[str] = None,
        client: Optional[Isorun] = None,
        api_key: Optional[str] = None,
        api_url: Optional[str] = None,
    ) -> "Sandbox":
        """Creates a sandbox and returns it once it is RUNNING.

        ``image`` is required, except on a local cluster (key region ``local``), where it
        defaults to ``busybox:1.36``. Without ``idempotency_key`` the SDK makes one per call.
        """
        c = client_for(client, api_key, api_url)
        if image is None:
            if c.region != "local":
                raise ConfigurationError(
                    "Sandbox.create needs an image (e.g. image='python:3.12'); only a local cluster "
                    f"defaults to {DEFAULT_LOCAL_IMAGE}", reason="IMAGE_REQUIRED")
            image = DEFAULT_LOCAL_IMAGE
        body: Dict[str, Any] = {"image": image}
        for name, value in (("timeoutSec", timeout_sec), ("cpuMillis", cpu_millis), ("memoryMb", memory_mb),
                            ("diskMb", disk_mb), ("env", env), ("metadata", metadata), ("network", network)):
            if value is not None:
                body[name] = dict(value) if isinstance(value, Mapping) else value
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        answer = c.call("POST", "/v1/sandboxes", kind="idempotent", body=body,
                        headers={"Idempotency-Key": key})
        return cls(c, answer.json())

    @classmethod
    def get(cls, sandbox_id: str, *, client: Optional[Isorun] = None, api_key: Optional[str] = None,
            api_url: Optional[str] = None) -> "Sandbox":
        """Reads a sandbox (any state, ended ones included)."""
        c = client_for(client, api_key, api_url)
        return cls(c, c.call("GET", f"/v1/sandboxes/{quote(sandbox_id, safe='')}", kind="idempotent").json())

    @classmethod
    def connect(cls, sandbox_id: str, *, client: Optional[Isorun] = None, api_key: Optional[str] = None,
                api_url: Optional[str] = None) -> "Sandbox":
        """A sandbox ready to use: reads it, and resumes it when it is hibernated."""
        sandbox = cls.get(sandbox_id, client=client, api_key=api_key, api_url=api_url)
        if sandbox.state == "HIBERNATED":
            sandbox.resume()
        return sandbox

    @classmethod
    def list(cls, *, state: Union[str, Sequence[str], None] = None, metadata: Optional[Mapping[str, str]] = None,
             page_size: Optional[int] = None, client: Optional[Isorun] = None, api_key: Optional[str] = None,
             api_url: Optional[str] = None) -> Iterator["Sandbox"]:
        """Every sandbox that matches, page after page."""
        c = client_for(client, api_key, api_url)
        for page in cls.pages(state=state, metadata=metadata, page_size=page_size, client=c):
            yield from page

    @classmethod
    def pages(cls, *, state: Union[str, Sequence[str], None] = None, metadata: Optional[Mapping[str, str]] = None,
              page_size: Optional[int] = None, client: Optional[Isorun] = None) -> Iterator[List["Sandbox"]]:
        """The pages of a listing, one list of sandboxes each."""
        c = client_for(client, None, None)
        token = ""
        while True:
            query = []
            if state is not None:
                query.append(("state", state if isinstance(state, str) else ",".join(state)))
            for key, value in (metadata or {}).items():
                query.append((f"metadata.{key}", value))
            if page_size is not None:
                query.append(("pageSize", str(page_size)))
            if token:
                query.append(("pageToken", token))
            page = c.call("GET", "/v1/sandboxes", kind="idempotent", query=query).json()
            yield [cls(c, s) for s in page.get("sandboxes", [])]
            token = page.get("nextPageToken") or ""
            if not token:
                return

    # ---- instance methods

    def exec(self, cmd: str, timeout_sec: Optional[int] = None, *, env: Optional[Mapping[str, str]] = None,
             cwd: Optional[str] = None, stdin: Optional[str] = None) -> ExecResult:
        """Runs ``cmd`` with ``/bin/sh -c`` and returns what it left. ``timeout_sec`` defaults
        to 30; past it the command is killed: :class:`ExecTimeoutError`."""
        wait = (timeout_sec or 30) + 60
        data = self.client.call("POST", f"{self._path}/exec", kind="exec",
                                body=_exec_body(cmd, timeout_sec, env, cwd, stdin), timeout_sec=wait).json()
        return ExecResult(
            exit_code=data["exitCode"], stdout=data["stdout"], stderr=data["stderr"],
            duration_ms=data["durationMs"], stdout_truncated=bool(data.get("stdoutTruncated")),
            stderr_truncated=bool(data.get("stderrTruncated")))

    def exec_stream(self, cmd: str, *, on_stdout: Optional[Callable[[str], None]] = None,
                    on_stderr: Optional[Callable[[str], None]] = None, timeout_sec: Optional[int] = None,
                    env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                    stdin: Optional[str] = None) -> ExecStream:
        """Runs ``cmd`` and streams its output (no timeout unless given). Call ``wait()`` for
        the result or iterate for chunks; ``close()`` kills the command."""
        return ExecStream(self, _exec_body(cmd, timeout_sec, env, cwd, stdin), on_stdout, on_stderr)

    def set_timeout(self, seconds: int) -> "Sandbox":
        """Sets the idle timeout: the sandbox ends ``seconds`` from now unless something happens."""
        return self._post("/timeout", {"timeoutSec": seconds}, "idempotent")

    def hibernate(self) -> "Sandbox":
        """Freezes every process; the sandbox stops counting against the concurrent limit."""
        return self._post("/hibernate", None, "unsafe")

    def resume(self) -> "Sandbox":
        """Resumes a hibernated sandbox (admitted like a create: may raise RateLimitError)."""
        return self._post("/resume", None, "idempotent")

    def destroy(self) -> None:
        """Destroys the sandbox; its slot is free when this returns. Destroying twice is fine."""
        self.client.call("DELETE", self._path, kind="idempotent")
        self.state = "DESTROYED"

    def refresh(self) -> "Sandbox":
        """Reads the sandbox again and updates these attributes."""
        self._apply(self.client.call("GET", self._path, kind="idempotent").json())
        return self

    def url(self, port: int) -> str:
        """The public URL of ``port``: ``https://<port>-<public_id>.<public domain>/`` (locally
        ``http://<port>-<public_id>.localhost:8081/``)."""
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigurationError(f"port must be 1-65535, not {port!r}", reason="INVALID_PORT")
        known = self.urls.get(str(port))
        if known:
            # The API lists origins ("http://3000-<id>.localhost:8081"): the same URL either way.
            return known if known.endswith("/") else known + "/"
        base = urlsplit(self.client.public_url)
        host = base.hostname or "localhost"
        if re.fullmatch(r"[\d.]+|localhost", host) or ":" in host:
            host = "localhost"
        port_part = f":{base.port}" if base.port else ""
        return f"{base.scheme}://{port}-{self.public_id}.{host}{port_part}/"

    # ---- internals

    @property
    def _path(self) -> str:
        return f"/v1/sandboxes/{quote(self.id, safe='')}"

    def _post(self, suffix: str, body: Any, kind: str) -> "Sandbox":
        self._apply(self.client.call("POST", f"{self._path}{suffix}", kind=kind, body=body).json())  # type: ignore[arg-type]
        return self

    def _apply(self, data: Mapping[str, Any]) -> None:
        self.state = data["state"]
        self.image = data["image"]
        self.image_digest = data.get("imageDigest", "")
        self.cpu_millis = data.get("cpuMillis", 0)
        self.memory_mb = data.get("memoryMb", 0)
        self.disk_mb = data.get("diskMb")
        self.timeout_sec = data.get("timeoutSec", 0)
        self.created_at = _time(data.get("createdAt"))
        self.expires_at = _time(data.get("expiresAt"))
        self.ended_at = _time(data.get("endedAt"))
        self.end_reason = data.get("endReason")
        self.end_message = data.get("endMessage")
        self.metadata = dict(data.get("metadata") or {})
        self.network = dict(data.get("network") or {"egress": "open"})
        self.public_id = data.get("publicId", "")
        self.urls = dict(data.get("urls") or {})
