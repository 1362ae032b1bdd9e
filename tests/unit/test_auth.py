from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.auth import TokenVerifier, issuing_user
from service.config import ConfigError, Settings
from service.errors import InvalidToken, UserMismatch

SECRET = "s" * 40


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_by_hand(claims: dict[str, str], key: bytes) -> str:
    """A token PyJWT itself refuses to make: HS256 keyed with an RSA public key."""
    signing_input = (
        f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    )
    return f"{signing_input}.{_b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def test_hs256_subject_is_the_user() -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert verifier.user(_bearer(token)) == "alice"
    assert issuing_user(verifier, _bearer(token), None) == "alice"
    assert issuing_user(verifier, _bearer(token), "alice") == "alice"
    with pytest.raises(UserMismatch):
        issuing_user(verifier, _bearer(token), "bob")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Basic abc",
        _bearer("not.a.token"),
        _bearer(jwt.encode({"sub": "alice"}, "another-secret-of-32-characters-x", algorithm="HS256")),
        _bearer(jwt.encode({"sub": "alice", "exp": int(time.time()) - 10}, SECRET, algorithm="HS256")),
        _bearer(jwt.encode({"name": "no subject"}, SECRET, algorithm="HS256")),
        _bearer(jwt.encode({"sub": "has space"}, SECRET, algorithm="HS256")),
        _bearer(jwt.encode({"sub": "alice"}, None, algorithm="none")),
    ],
)
def test_anything_but_a_valid_token_is_401(header: str | None) -> None:
    with pytest.raises(InvalidToken):
        TokenVerifier(secret=SECRET).user(header)


def test_rs256_accepts_only_the_key_pair_and_not_hs256_with_the_public_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    verifier = TokenVerifier(public_key=public_pem)
    assert verifier.user(_bearer(jwt.encode({"sub": "42"}, key, algorithm="RS256"))) == "42"
    # The classic confusion attack: HS256 signed with the public key as the secret.
    forged = _hs256_by_hand({"sub": "mallory"}, public_pem.encode())
    with pytest.raises(InvalidToken):
        verifier.user(_bearer(forged))


def test_configuration_of_authentication() -> None:
    base = {"ADMIN_TOKEN": "x" * 16}
    assert Settings.from_env(base).auth_jwt_secret is None
    assert Settings.from_env({**base, "AUTH_JWT_SECRET": SECRET}).auth_jwt_secret == SECRET
    with pytest.raises(ConfigError, match="AUTH_JWT_SECRET"):
        Settings.from_env({**base, "AUTH_JWT_SECRET": "short"})
    with pytest.raises(ConfigError, match="AUTH_JWT_PUBLIC_KEY"):
        Settings.from_env({**base, "AUTH_JWT_PUBLIC_KEY": "/no/such/file.pem"})
    with pytest.raises(ConfigError, match="AUTH_JWT_PUBLIC_KEY"):
        Settings.from_env(
            {**base, "AUTH_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}
        )
