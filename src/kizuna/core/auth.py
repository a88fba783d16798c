"""JWT authentication with PyJWT.

Security rules this module keeps (each has a test in tests/core/test_auth.py):

* The accepted algorithms are fixed by configuration, never read from the
  token header: an HS256 secret accepts only HS256; a PEM public key accepts
  only the RS*/ES*/PS* family of its key type. ``alg: none`` never verifies,
  and an RSA public key can never be used as an HMAC secret.
* ``exp`` and ``sub`` are required; ``aud`` and ``iss`` are checked when configured.
* The optional ``channels`` claim (a list of names or fnmatch patterns) limits
  what the holder may subscribe and publish to.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from jwt import PyJWKClient
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from jwt.exceptions import DecodeError

from kizuna.core.ports import Credentials
from kizuna.exceptions import AuthError, ConfigError
from kizuna.protocol.codes import ErrorCode

__all__ = ["JWTAuthenticator", "JWTSettings", "mint_token"]

_RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
_EC_ALGORITHMS = ["ES256", "ES384", "ES512"]


@dataclass(frozen=True, slots=True)
class JWTSettings:
    secret: str | None = None
    """HMAC secret (HS256)."""
    previous_secret: str | None = None
    """An older HMAC secret still accepted while clients move to the new one."""
    public_key: str | None = None
    """PEM public key (RSA or EC)."""
    jwks_url: str | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0


def _algorithms_for_public_key(pem: str) -> tuple[Any, list[str]]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError([f"jwt_public_key: not a PEM public key ({exc})"]) from exc
    if isinstance(key, rsa.RSAPublicKey):
        return key, _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, _EC_ALGORITHMS
    raise ConfigError(["jwt_public_key: only RSA and EC keys are supported"])


class _PreparedHMAC(HMACAlgorithm):
    """HS256 that checks and prepares each secret once, not on every decode.

    PyJWT 2.15 prepares the key again for every token, even a PyJWK's: it
    encodes the secret and makes sure it is not a PEM, SSH or DER key — the DER
    check tries to parse the secret as an X.509 certificate and fails. About
    6 µs of each connect's ~25 µs of JWT verification. The checks still run,
    once per secret (and a bad secret still fails at start-up: ``_hmac_key``).
    """

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._prepared: dict[str | bytes, bytes] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepared[key] = super().prepare_key(key)
        return prepared


def _hmac_key(secret: str) -> jwt.PyJWK:
    """The HS256 secret as a PyJWK whose algorithm prepares it only once (_PreparedHMAC)."""
    k = base64.urlsafe_b64encode(secret.encode()).rstrip(b"=").decode()
    key = jwt.PyJWK({"kty": "oct", "k": k, "alg": "HS256"})
    key.Algorithm = _PreparedHMAC()
    key.Algorithm.prepare_key(key.key)  # the checks, now: a bad secret fails at start-up
    return key


_BASE64URL_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


class _RegexSegmentJWS(PyJWS):
    """PyJWS with its base64url segment check made by one compiled regex.

    PyJWT 2.15 rejects a segment with a character outside the base64url alphabet
    (GHSA-hxm8-2xgr-2p9m) by testing each character in a Python generator: 22 of
    the 43 µs a kizuna token took to verify here, on every connect. Same rule,
    same errors, checked in C; and once the alphabet is known good, the decoding
    and the round trip that rejects non-canonical encodings go straight to
    binascii (tests/core/test_auth.py compares the two on random segments).
    """

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if padding > 2 or (padding and len(segment) % 4 != 0):
            raise DecodeError(f"Invalid {name} padding")
        if len(stripped) % 4 == 1 or _BASE64URL_SEGMENT.fullmatch(stripped) is None:
            raise DecodeError(f"Invalid {name} padding")
        standard = stripped.translate(_FROM_URLSAFE) + b"=" * (-len(stripped) % 4)
        try:
            decoded = binascii.a2b_base64(standard)
        except binascii.Error as err:
            raise DecodeError(f"Invalid {name} padding") from err
        again = binascii.b2a_base64(decoded, newline=False).translate(_TO_URLSAFE)
        if again.rstrip(b"=") != stripped:
            raise DecodeError(f"Invalid {name} padding")
        return decoded


class _OrjsonPyJWT(jwt.PyJWT):
    """PyJWT that parses the (already verified) payload with orjson.

    ``_decode_payload`` is PyJWT's documented hook for this. orjson is stricter than
    the json module — no NaN, no integers beyond 64 bits — which only refuses
    tokens no issuer should sign.
    """

    def __init__(self) -> None:
        super().__init__()
        self._jws = _RegexSegmentJWS(options=self._get_sig_options())

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = orjson.loads(decoded["payload"])
        except orjson.JSONDecodeError as e:
            raise DecodeError(f"Invalid payload string: {e}") from e
        if not isinstance(payload, dict):
            raise DecodeError("Invalid payload string: must be a json object")
        return payload


_decoder = _OrjsonPyJWT()


class JWTAuthenticator:
    """Verifies tokens against one configured key source."""

    def __init__(self, settings: JWTSettings) -> None:
        self._settings = settings
        self._keys: list[tuple[Any, list[str]]] = []
        self._jwks: PyJWKClient | None = None
        if settings.secret:
            self._keys.append((_hmac_key(settings.secret), ["HS256"]))
            if settings.previous_secret:
                self._keys.append((_hmac_key(settings.previous_secret), ["HS256"]))
        if settings.public_key:
            self._keys.append(_algorithms_for_public_key(settings.public_key))
        if settings.jwks_url:
            self._jwks = PyJWKClient(settings.jwks_url, cache_keys=True)
        if not self._keys and self._jwks is None:
            raise ConfigError(["no JWT key configured (secret, public key or JWKS URL)"])

    async def authenticate(self, token: str) -> Credentials:
        keys = list(self._keys)
        if self._jwks is not None:
            keys.append(await self._jwks_key(token))
        last: AuthError | None = None
        for key, algorithms in keys:
            try:
                return self._decode(token, key, algorithms)
            except AuthError as exc:
                last = exc
                if exc.code == ErrorCode.TOKEN_EXPIRED:
                    break
        assert last is not None
        raise last

    async def _jwks_key(self, token: str) -> tuple[Any, list[str]]:
        assert self._jwks is not None
        try:
            signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWTError as exc:
            raise AuthError(ErrorCode.UNAUTHORIZED, f"no JWKS key for token: {exc}") from exc
        return signing_key.key, _RSA_ALGORITHMS + _EC_ALGORITHMS

    def _decode(self, token: str, key: Any, algorithms: list[str]) -> Credentials:
        s = self._settings
        try:
            claims = _decoder.decode(
                token,
                key,
                algorithms=algorithms,
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={"require": ["exp", "sub"], "verify_aud": s.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(ErrorCode.TOKEN_EXPIRED, "token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from exc
        return credentials_from_claims(claims)


def credentials_from_claims(claims: dict[str, Any]) -> Credentials:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError(ErrorCode.UNAUTHORIZED, "invalid token: sub must be a non-empty string")
    channels = claims.get("channels")
    if channels is not None and (
        not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
    ):
        raise AuthError(ErrorCode.UNAUTHORIZED, "invalid token: channels must be a list of strings")
    exp, iat, jti = claims.get("exp"), claims.get("iat"), claims.get("jti")
    return Credentials(
        user=sub,
        expires_at=float(exp) if isinstance(exp, int | float) else None,
        channels=tuple(channels) if channels is not None else None,
        token_id=jti if isinstance(jti, str) else None,
        issued_at=float(iat) if isinstance(iat, int | float) else None,
    )


def mint_token(
    secret: str,
    sub: str,
    *,
    ttl: float = 3600.0,
    channels: list[str] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token for ``sub`` (what ``kizuna token`` prints)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl)}
    if channels is not None:
        claims["channels"] = channels
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
