"""API keys and endpoints (the same rules as the TypeScript SDK).

A key is ``isr_<region>_<keyId>_<secret>``; its shape is checked before any request. The endpoint
comes from the region: ``local`` is ``http://127.0.0.1:8080``, any other region
``https://api.<region>.<ISORUN_DOMAIN>`` (default domain ``isorun.dev``). ``api_url`` or
``ISORUN_API_URL`` overrides it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from .errors import ApiKeyError, ConfigurationError

KEY_FORMAT = "isr_<region>_<keyId>_<secret>"
MIN_SECRET_LENGTH = 43
DEFAULT_DOMAIN = "isorun.dev"
LOCAL_API_URL = "http://127.0.0.1:8080"
LOCAL_PUBLIC_URL = "http://127.0.0.1:8081"

_REGION = re.compile(r"[a-z0-9-]{1,63}")
_BASE62 = re.compile(r"[A-Za-z0-9]{1,128}")


@dataclass(frozen=True)
class ParsedApiKey:
    region: str
    key_id: str


def _key_error(reason: str, what: str) -> ApiKeyError:
    return ApiKeyError(f"Isorun API key {what}; keys look like {KEY_FORMAT}", reason=reason)


def parse_api_key(key: Optional[str]) -> ParsedApiKey:
    """Checks a key's shape; raises :class:`ApiKeyError` naming what is wrong, never the secret."""
    if key is None or key.strip() == "":
        raise _key_error("KEY_MISSING", "missing: pass api_key or set ISORUN_API_KEY")
    text = key.strip()
    if not text.startswith("isr_"):
        raise _key_error("KEY_MALFORMED", 'is malformed: it does not start with "isr_"')
    parts = text[4:].split("_")
    if len(parts) != 3:
        hint = " (a truncated or edited key?)" if len(parts) < 3 else ""
        raise _key_error(
            "KEY_MALFORMED", f'is malformed: it has {len(parts) + 1} parts separated by "_", not 4{hint}'
        )
    region, key_id, secret = parts
    if not _REGION.fullmatch(region):
        raise _key_error("KEY_MALFORMED", 'is malformed: its region part must be 1-63 lowercase letters, digits or "-"')
    if not _BASE62.fullmatch(key_id):
        raise _key_error("KEY_MALFORMED", "is malformed: its keyId part must be letters and digits")
    if not _BASE62.fullmatch(secret):
        if secret == "":
            raise _key_error("KEY_MALFORMED", "is malformed: its secret part is empty (a truncated key?)")
        raise _key_error("KEY_MALFORMED", "is malformed: its secret part must be letters and digits")
    if len(secret) < MIN_SECRET_LENGTH:
        raise _key_error(
            "KEY_MALFORMED",
            f"is malformed: its secret is {len(secret)} characters, at least {MIN_SECRET_LENGTH} "
            "expected (a truncated key?)",
        )
    return ParsedApiKey(region=region, key_id=key_id)


def api_url_for_region(region: str, domain: str = DEFAULT_DOMAIN) -> str:
    if region == "local":
        return LOCAL_API_URL
    return f"https://api.{region}.{domain}"


def public_url_for_region(region: str, domain: str = DEFAULT_DOMAIN) -> str:
    if region == "local":
        return LOCAL_PUBLIC_URL
    return f"https://{region}.{domain}"


def normalize_base_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{what} must be an http or https URL: {url!r}", reason="INVALID_URL")
    return url.rstrip("/")
