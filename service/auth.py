"""Optional user authentication: the issuing user comes from a verified bearer token's `sub`.

Off unless AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY (RS256) is set. Only the one
algorithm configured is accepted (never "none", never the other family), and `exp` is
checked when present.
"""

from __future__ import annotations

import jwt

from .errors import InvalidRequest, InvalidToken, UserMismatch
from .validation import user_id as valid_user_id


class TokenVerifier:
    def __init__(self, *, secret: str | None = None, public_key: str | None = None) -> None:
        if secret is not None and public_key is None:
            self._key, self._algorithms = secret, ["HS256"]
        elif public_key is not None and secret is None:
            self._key, self._algorithms = public_key, ["RS256"]
        else:
            raise ValueError("exactly one of secret and public_key is needed")

    def user(self, authorization: str | None) -> str:
        """The user id a request's `Authorization: Bearer …` header proves, or 401."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken()
        try:
            claims = jwt.decode(
                token.strip(), self._key, algorithms=self._algorithms, options={"require": ["sub"]}
            )
        except jwt.PyJWTError:
            raise InvalidToken() from None
        try:
            return valid_user_id(claims["sub"])
        except InvalidRequest:  # a subject that is no valid user id makes the token invalid
            raise InvalidToken() from None


def issuing_user(verifier: TokenVerifier, authorization: str | None, body_user: str | None) -> str:
    """The token's subject; a body user_id, if given, must be the same user."""
    user = verifier.user(authorization)
    if body_user is not None and body_user != user:
        raise UserMismatch()
    return user
