"""Isorun sandboxes from Python (standard library only).

    from isorun import Sandbox
    sandbox = Sandbox.create(image="python:3.12")
    print(sandbox.exec("python -c 'print(6*7)'").stdout)
"""

from .client import SDK_VERSION, Isorun, RetryInfo, Usage, UsageLimits, default_client
from .config import KEY_FORMAT, ParsedApiKey, api_url_for_region, parse_api_key, public_url_for_region
from .errors import (
    ApiKeyError,
    AuthenticationError,
    ConfigurationError,
    ConnectionError,
    ExecTimeoutError,
    InvalidArgumentError,
    IsorunError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SandboxNotRunningError,
    ServiceUnavailableError,
)
from .sandbox import DEFAULT_LOCAL_IMAGE, ExecCancelledError, ExecChunk, ExecResult, ExecStream, Sandbox

__all__ = [
    "SDK_VERSION", "Isorun", "RetryInfo", "Usage", "UsageLimits", "default_client",
    "KEY_FORMAT", "ParsedApiKey", "api_url_for_region", "parse_api_key", "public_url_for_region",
    "ApiKeyError", "AuthenticationError", "ConfigurationError", "ConnectionError", "ExecTimeoutError",
    "InvalidArgumentError", "IsorunError", "NotFoundError", "PermissionDeniedError", "RateLimitError",
    "SandboxNotRunningError", "ServiceUnavailableError",
    "DEFAULT_LOCAL_IMAGE", "ExecCancelledError", "ExecChunk", "ExecResult", "ExecStream", "Sandbox",
]
