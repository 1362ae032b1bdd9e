"""The admin API over HTTP, as `couponctl` calls it: every failure becomes one ``ApiError``
with a line an operator can read (never a traceback)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ApiError(Exception):
    """The service could not be reached (``status`` None) or refused the call."""

    def __init__(self, line: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(line)
        self.status = status
        self.code = code


class AdminClient:
    def __init__(self, url: str, token: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url must be http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self._token = token

    def call(self, method: str, path: str, body: Any = None, *, timeout_s: float = 120.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - scheme checked
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                payload = response.read()
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
                code, message = str(err["code"]), str(err["message"])
            except (ValueError, KeyError, TypeError, OSError):
                raise ApiError(f"{method} {path} failed: HTTP {exc.code}", exc.code) from None
            raise ApiError(f"{method} {path} failed: {exc.code} {code}: {message}", exc.code, code) from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach the service at {self.url}: {exc.reason}") from None
        except TimeoutError:
            raise ApiError(f"the service at {self.url} did not answer within {timeout_s:g} s") from None
        except OSError as exc:  # reset or closed mid-answer
            raise ApiError(f"lost the connection to the service at {self.url}: {exc}") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise ApiError(f"{method} {path}: the answer is not JSON; is {self.url} the service?") from None
