"""The HTTP guard of the local endpoint: who may talk to it and what a request may look like.

* Every request carries a bearer token. The endpoint draws a random refresh token at start
  (``secrets.token_urlsafe``) and hands it to clients through the servicex.yaml it writes (mode
  0600, the ``token`` of the endpoint entry) and its ``endpoint.json`` (mode 0600). As with a real
  ServiceX, the client trades it at ``POST /token/refresh`` for a short-lived access token (an
  HMAC-signed JWT with ``exp``); either token is accepted as ``Authorization: Bearer``. S3 requests
  are signed by the client with the access key the endpoint hands out (random per start).
* The ``Host`` header must name the endpoint itself on loopback (against DNS rebinding), an
  ``Origin`` header (a browser) must be the endpoint's own origin, a POST body must be JSON and
  under a size limit, and bucket and object names must not leave their folders.

Each check raises :class:`RefusedError` with the HTTP status and a one-line reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
ACCESS_TOKEN_TTL_S = 3600
_REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class RefusedError(Exception):
    """A request the endpoint does not serve: HTTP ``code`` and a one-line ``reason``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Credentials:
    """The secrets of one endpoint run (never stored in the request database)."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    s3_access_key: str = field(default_factory=lambda: "agc-" + secrets.token_hex(10))
    s3_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def access_token(self, now: float | None = None) -> str:
        """A JWT the servicex client can read the expiry of; signed with this run's key."""
        issued = int(time.time() if now is None else now)
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = _b64(json.dumps({"sub": "agc-local", "iat": issued, "exp": issued + ACCESS_TOKEN_TTL_S}).encode())
        return f"{header}.{claims}.{self._sign(f'{header}.{claims}')}"

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def _valid_access_token(self, token: str) -> bool:
        parts = token.split(".")
        if len(parts) != 3 or not hmac.compare_digest(self._sign(f"{parts[0]}.{parts[1]}"), parts[2]):
            return False
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            return False
        return isinstance(claims, dict) and isinstance(claims.get("exp"), int) and claims["exp"] > time.time()

    def check_bearer(self, authorization: str | None, refresh_only: bool = False) -> None:
        """Raise 401 unless ``authorization`` is ``Bearer <refresh token or valid access token>``."""
        if not authorization:
            raise RefusedError(401, "missing 'Authorization: Bearer <token>' (the token is in the servicex.yaml)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise RefusedError(401, "the Authorization header must be 'Bearer <token>'")
        if hmac.compare_digest(token.encode(), self.token.encode()):
            return
        if not refresh_only and self._valid_access_token(token):
            return
        raise RefusedError(401, "invalid or expired token")

    def check_s3(self, authorization: str | None, query: Mapping[str, list[str]]) -> None:
        """Raise 401 unless an S3 request is signed with this run's access key (header or presigned URL)."""
        credential = None
        if authorization and authorization.startswith("AWS4-HMAC-SHA256 "):
            m = re.search(r"Credential=([^/,\s]+)/", authorization)
            credential = m.group(1) if m else None
        elif query.get("X-Amz-Credential"):
            credential = query["X-Amz-Credential"][0].split("/", 1)[0]
        elif authorization and authorization.lower().startswith("bearer "):
            self.check_bearer(authorization)
            return
        if credential is None:
            raise RefusedError(401, "S3 request is not signed (use the access key of the transformation's status)")
        if not hmac.compare_digest(credential.encode(), self.s3_access_key.encode()):
            raise RefusedError(401, "S3 request is signed with an unknown access key")


def allowed_hosts(port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """``Host`` values naming the endpoint: loopback names with its port (and a forced bind host)."""
    return frozenset(f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", *extra))


def check_host(host: str | None, allowed: frozenset[str]) -> None:
    if not host:
        raise RefusedError(400, "missing Host header")
    if host.strip().lower() not in allowed:
        raise RefusedError(421, f"Host {host[:100]!r} is not this endpoint (use one of {sorted(allowed)})")


def check_origin(origin: str | None, allowed: frozenset[str]) -> None:
    """A browser's cross-site request carries a foreign Origin: refuse all but our own."""
    if origin is None:
        return
    if origin.strip().lower() not in {f"http://{h}" for h in allowed}:
        raise RefusedError(403, f"cross-origin request from {origin[:100]!r} refused")


def check_body_size(headers: Any, limit: int) -> int:
    """The length of the body to read; refuse oversized and unsized bodies."""
    if headers.get("Transfer-Encoding"):
        raise RefusedError(411, "chunked bodies are not accepted; send Content-Length")
    text = headers.get("Content-Length") or "0"
    if not text.isdigit():
        raise RefusedError(400, f"Content-Length {text[:40]!r} is not a number")
    length = int(text)
    if length > limit:
        raise RefusedError(413, f"request body of {length} bytes is over the limit of {limit} bytes")
    return length


def check_content_type(method: str, headers: Any, length: int) -> None:
    """A POST body must be JSON (a browser cannot send that cross-site without a preflight)."""
    if length and method == "POST":
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise RefusedError(
                415, f"Content-Type {content_type or 'none'!r} refused; POST bodies must be application/json"
            )


def check_request_id(text: str) -> str:
    if not _REQUEST_ID.fullmatch(text):
        raise RefusedError(400, f"{text[:80]!r} is not a request id")
    return text


def check_object_name(key: str) -> str:
    """An S3 object name that stays inside its bucket."""
    parts = key.split("/")
    if "\x00" in key or "\\" in key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RefusedError(400, f"object name {key[:100]!r} is not allowed (no '..', '.', empty parts, '\\' or NUL)")
    return key


def check_input_path(path: str) -> str:
    """A file-list entry: an absolute local path without '..' parts, or a URL."""
    if "\x00" in path or "\n" in path:
        raise RefusedError(400, f"input path {path[:100]!r} contains control characters")
    if "://" in path:
        return path
    if not path.startswith("/") or ".." in path.split("/"):
        raise RefusedError(400, f"input path {path[:100]!r} must be absolute, without '..' parts")
    return path
