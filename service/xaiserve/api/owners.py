"""Who owns an operation: the caller's bearer token, hashed (ownership of operations).

With auth on, every operation records its owner — the SHA-256 of the token that started it
(tokens themselves are never stored) — and Get/List/Watch/Cancel by another token answer
NOT_FOUND, as if the operation did not exist. Tokens in ``admin_tokens_file`` see and cancel
every operation. With auth off there are no owners: everyone sees everything.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import grpc


def read_tokens(path: str) -> list[bytes]:
    """One token per line; blank lines and ``#`` comments skipped."""
    if not path:
        return []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip().encode() for ln in lines if ln.strip() and not ln.startswith("#")]


def owner_of(token: bytes) -> str:
    return hashlib.sha256(b"xaiserve-owner:" + token).hexdigest()[:32]


class Owners:
    def __init__(self, auth: bool, admin_tokens: list[bytes]) -> None:
        self.auth = auth
        self._admins = admin_tokens

    def _token(self, context: grpc.ServicerContext) -> bytes:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else value
                if raw[:7].lower() == b"bearer ":
                    return raw[7:].strip()
        return b""

    def creator(self, context: grpc.ServicerContext) -> str:
        """The owner recorded on a new operation ("" with auth off)."""
        return owner_of(self._token(context)) if self.auth else ""

    def scope(self, context: grpc.ServicerContext) -> str | None:
        """Whose operations this caller may see: its own, or ``None`` (all: auth off or an
        admin token, compared in constant time)."""
        if not self.auth:
            return None
        token = self._token(context)
        admin = False
        for candidate in self._admins:
            admin |= hmac.compare_digest(token, candidate)
        return None if admin else owner_of(token)
