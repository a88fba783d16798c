"""Revoked tokens and users, shared by every node through the broker.

Two kinds of revocation, each with an end (after which the entry is dropped,
since the tokens it covers have expired by then anyway):

* by token id: the token whose ``jti`` claim is this id is refused;
* by user: every token of this user issued (``iat``) before a moment is refused,
  which is how "log this user out everywhere" works.

A revocation is published on the node's control channel, so every node applies
it — and disconnects the matching connections (4003) — whatever the broker.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from kizuna.core.ports import Credentials

__all__ = ["CONTROL_CHANNEL", "RevocationList", "revoke_token_message", "revoke_user_message"]

CONTROL_CHANNEL = "__kizuna:control"
"""Node-to-node messages. No namespace is called ``__kizuna``, so no client can reach it."""


def revoke_token_message(token_id: str, until: float) -> bytes:
    return orjson.dumps({"op": "revoke_token", "jti": token_id, "until": until})


def revoke_user_message(user: str, before: float, until: float) -> bytes:
    return orjson.dumps({"op": "revoke_user", "user": user, "before": before, "until": until})


class RevocationList:
    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}  # jti -> until
        self._users: dict[str, tuple[float, float]] = {}  # user -> (issued before, until)

    def apply(self, message: bytes) -> dict[str, Any] | None:
        """Record a control message; returns it decoded, or None if it is not a revocation."""
        try:
            op = orjson.loads(message)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(op, dict):
            return None
        self.prune()
        if op.get("op") == "revoke_token" and isinstance(op.get("jti"), str):
            self._tokens[op["jti"]] = float(op["until"])
            return op
        if op.get("op") == "revoke_user" and isinstance(op.get("user"), str):
            self._users[op["user"]] = (float(op["before"]), float(op["until"]))
            return op
        return None

    def revoked(self, credentials: Credentials) -> bool:
        now = time.time()
        jti = credentials.token_id
        if jti is not None:
            until = self._tokens.get(jti)
            if until is not None and until > now:
                return True
        entry = self._users.get(credentials.user)
        if entry is not None and entry[1] > now:
            issued = credentials.issued_at
            return issued is None or issued <= entry[0]
        return False

    def prune(self) -> None:
        now = time.time()
        self._tokens = {k: v for k, v in self._tokens.items() if v > now}
        self._users = {k: v for k, v in self._users.items() if v[1] > now}
