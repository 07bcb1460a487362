"""Bearer keys: checking them, and naming them without revealing them."""

from __future__ import annotations

import hashlib
import hmac

from batchib.simulator.errors import ApiError

MISSING_KEY = ApiError(
    401,
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    "invalid_api_key",
)
# Never echo the key in the message: it would end up in the client's logs.
INCORRECT_KEY = ApiError(401, "Incorrect API key provided.", "invalid_api_key")


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, or None if there is none."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


def key_hash(key: str) -> str:
    """A short stable name for ``key`` (16 hex digits of its SHA-256), safe to log."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def check_key(key: str | None, required_key: str | None) -> ApiError | None:
    """The 401 error for a bearer key (None when absent), or None if it is accepted."""
    if key is None:
        return MISSING_KEY
    if required_key is not None and not hmac.compare_digest(
        key.encode("utf-8", "surrogatepass"), required_key.encode("utf-8", "surrogatepass")
    ):
        return INCORRECT_KEY
    return None
