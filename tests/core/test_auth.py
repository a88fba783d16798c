"""JWT verification: the attacks that must fail, and the claims that must be there."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.api_jws import PyJWS

from kizuna.core.auth import JWTAuthenticator, JWTSettings, _RegexSegmentJWS, mint_token
from kizuna.exceptions import AuthError, ConfigError
from kizuna.protocol.codes import ErrorCode

SECRET = "unit-test-secret-0123456789abcdef0123"
OTHER = "another-secret-0123456789abcdef012345"


def hs(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def soon() -> int:
    return int(time.time()) + 60


async def refused(auth: JWTAuthenticator, token: str) -> int:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(token)
    return int(info.value.code)


async def test_valid_hs256_token() -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    creds = await auth.authenticate(hs({"sub": "alice", "exp": soon(), "channels": ["chat:*"]}))
    assert creds.user == "alice"
    assert creds.channels == ("chat:*",)
    assert creds.expires_at is not None and creds.expires_at > time.time()


async def test_minted_token_verifies() -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    creds = await auth.authenticate(mint_token(SECRET, "bob", ttl=30, channels=["a:b"]))
    assert (creds.user, creds.channels) == ("bob", ("a:b",))


async def test_expired_token_is_109() -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    code = await refused(auth, hs({"sub": "a", "exp": int(time.time()) - 5}))
    assert code == ErrorCode.TOKEN_EXPIRED


@pytest.mark.parametrize(
    "claims", [{"sub": "a"}, {"exp": 0}, {"sub": "", "exp": 0}, {"sub": 5, "exp": 0}]
)
async def test_missing_or_bad_required_claims(claims: dict[str, object]) -> None:
    # exp 0 stands for "valid": set here, not at collection, so a long run cannot expire it.
    claims = {k: soon() if k == "exp" else v for k, v in claims.items()}
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    assert await refused(auth, hs(claims)) == ErrorCode.UNAUTHORIZED


async def test_channels_claim_must_be_a_list_of_strings() -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    token = hs({"sub": "a", "exp": soon(), "channels": "chat:*"})
    assert await refused(auth, token) == ErrorCode.UNAUTHORIZED


async def test_wrong_signature() -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    assert await refused(auth, hs({"sub": "a", "exp": soon()}, OTHER)) == ErrorCode.UNAUTHORIZED


def _b64(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def test_alg_none_is_refused() -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    token = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"sub": "a", "exp": soon()}) + "."
    assert await refused(auth, token) == ErrorCode.UNAUTHORIZED


async def test_only_hs256_is_accepted_with_a_secret() -> None:
    secret = SECRET * 2  # long enough for HS512 (RFC 7518 §3.2)
    auth = JWTAuthenticator(JWTSettings(secret=secret))
    claims = {"sub": "a", "exp": soon()}
    assert (await auth.authenticate(jwt.encode(claims, secret, algorithm="HS256"))).user == "a"
    for algorithm in ("HS384", "HS512"):  # the same secret, another algorithm
        token = jwt.encode(claims, secret, algorithm=algorithm)
        assert await refused(auth, token) == ErrorCode.UNAUTHORIZED


async def test_rs256_public_key_used_as_hs256_secret_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = JWTAuthenticator(JWTSettings(public_key=pem))
    good = jwt.encode({"sub": "a", "exp": soon()}, key, algorithm="RS256")
    assert (await auth.authenticate(good)).user == "a"
    # The classic key-confusion attack: sign HS256 with the public key's PEM bytes.
    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64({"sub": "attacker", "exp": soon()})
    import hashlib
    import hmac

    sig = hmac.new(pem.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    assert await refused(auth, forged) == ErrorCode.UNAUTHORIZED


async def test_es256_public_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = JWTAuthenticator(JWTSettings(public_key=pem))
    assert (
        await auth.authenticate(jwt.encode({"sub": "e", "exp": soon()}, key, "ES256"))
    ).user == "e"
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong_family = jwt.encode({"sub": "e", "exp": soon()}, rs, "RS256")
    assert await refused(auth, wrong_family) == ErrorCode.UNAUTHORIZED


async def test_audience_and_issuer_checked_when_configured() -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET, audience="kizuna", issuer="idp"))
    good = hs({"sub": "a", "exp": soon(), "aud": "kizuna", "iss": "idp"})
    assert (await auth.authenticate(good)).user == "a"
    assert await refused(auth, hs({"sub": "a", "exp": soon(), "aud": "other", "iss": "idp"})) == 101
    assert await refused(auth, hs({"sub": "a", "exp": soon(), "aud": "kizuna", "iss": "x"})) == 101
    assert await refused(auth, hs({"sub": "a", "exp": soon()})) == 101


async def test_previous_secret_accepted_during_rotation() -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET, previous_secret=OTHER))
    assert (await auth.authenticate(hs({"sub": "old", "exp": soon()}, OTHER))).user == "old"
    assert (await auth.authenticate(hs({"sub": "new", "exp": soon()}))).user == "new"


def test_no_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        JWTAuthenticator(JWTSettings())
    with pytest.raises(ConfigError):
        JWTAuthenticator(JWTSettings(public_key="not a pem"))


async def test_the_hmac_secret_is_prepared_once_not_per_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PyJWT re-checks a key on every decode (a DER parse attempt included); kizuna once."""
    prepared: list[object] = []
    original = jwt.algorithms.HMACAlgorithm.prepare_key

    def counting(self: jwt.algorithms.HMACAlgorithm, key: str | bytes) -> bytes:
        prepared.append(key)
        return original(self, key)

    tokens = [hs({"sub": user, "exp": soon()}) for user in ("alice", "bob", "carol")]
    tokens.append(hs({"sub": "dave", "exp": soon()}, OTHER))
    forged = hs({"sub": "eve", "exp": soon()}, "x" * 40)
    monkeypatch.setattr(jwt.algorithms.HMACAlgorithm, "prepare_key", counting)
    auth = JWTAuthenticator(JWTSettings(secret=SECRET, previous_secret=OTHER))
    assert len(prepared) == 2  # each secret, checked at start-up
    users = [(await auth.authenticate(token)).user for token in tokens]
    assert users == ["alice", "bob", "carol", "dave"]
    assert await refused(auth, forged) == 101
    assert len(prepared) == 2


_SEGMENT_BYTES = st.sampled_from(
    list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/!. \x00\xff")
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(_SEGMENT_BYTES, max_size=24).map(bytes))
def test_segment_check_rejects_and_decodes_exactly_as_pyjwt_does(segment: bytes) -> None:
    """kizuna's regex check of a token segment (auth._RegexSegmentJWS) is PyJWT's rule.

    Drawn mostly from the base64url alphabet plus padding and the characters the
    advisory's attacks use, so that both valid and near-valid segments come up.
    """

    def outcome(check: Callable[[bytes, str], bytes]) -> bytes | str:
        try:
            return check(segment, "Header")
        except jwt.DecodeError as exc:
            return f"DecodeError: {exc}"

    assert outcome(_RegexSegmentJWS._decode_base64url_segment) == outcome(
        PyJWS._decode_base64url_segment
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(".", "!.", 1),  # junk in the header segment
        lambda t: t + "!",  # in the signature
        lambda t: t.replace(".", "===.", 1),  # too much padding
        lambda t: t[: t.index(".")] + "A." + t[t.index(".") + 1 :],  # a length of 4n+1
    ],
)
async def test_tokens_with_bad_segments_are_refused(mangle: Callable[[str], str]) -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    token = hs({"sub": "alice", "exp": soon()})
    assert (await auth.authenticate(token)).user == "alice"
    assert await refused(auth, mangle(token)) == ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize(
    "payload",
    [b"[1, 2]", b'"alice"', b"{not json", b'{"sub": "alice", "exp": NaN}'],
)
async def test_a_signed_payload_that_is_not_a_json_object_is_refused(payload: bytes) -> None:
    auth = JWTAuthenticator(JWTSettings(secret=SECRET))
    token = PyJWS().encode(payload, SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as info:
        await auth.authenticate(token)
    assert info.value.code == ErrorCode.UNAUTHORIZED
    assert "Invalid payload string" in info.value.message
