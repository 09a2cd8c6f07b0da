"""A secret the control plane issues: its kind's prefix, a new one, and the hash it is kept as.

Each kind carries its own prefix (API tokens, node tokens, the join token), so
one is never mistaken for another (a node token is refused by user endpoints
whatever its hash) and log redaction can recognise them. Only hashes are stored.
Both `tokens` and `nodes` issue secrets: this module is the word they share,
so neither imports the other for it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

USER_PREFIX = "dku_"
NODE_PREFIX = "dkn_"
JOIN_PREFIX = "dkj_"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)  # 256 bits


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(stored_hash: str, secret: str) -> bool:
    """Whether `secret` is the one `stored_hash` was made from (in constant time)."""
    return hmac.compare_digest(stored_hash, hash_secret(secret))
