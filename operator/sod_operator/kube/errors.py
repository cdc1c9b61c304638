"""The one error of the Kubernetes I/O layer: an answer that was not 2xx, or no answer at all.

Callers ask what it means (`not_found`, `conflict`, `retryable`, …) instead of comparing status
codes, so every component reads the apiserver's Status the same way.
"""

from __future__ import annotations

import json
from typing import Any

NO_ANSWER = 0
"""`status` of a request that got no HTTP answer (connection refused, reset, timed out)."""

RETRYABLE_STATUSES = frozenset({NO_ANSWER, 429, 500, 502, 503, 504})


class ApiError(Exception):
    """A failed request: method, path, HTTP status, and the apiserver's Status reason/message."""

    def __init__(self, method: str, path: str, status: int, body: bytes | str | dict[str, Any]):
        self.method = method
        self.path = path
        self.status = status
        self.body = _parse(body)
        self.reason = str(self.body.get("reason") or "")
        self.message = str(self.body.get("message") or "")
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {self.message}")

    @classmethod
    def no_answer(cls, method: str, path: str, err: BaseException) -> ApiError:
        return cls(method, path, NO_ANSWER, {"reason": "NoAnswer", "message": str(err)})

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: the object changed since it was read, or (see `already_exists`) it exists."""
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        """410: the resourceVersion is too old to watch from; list again."""
        return self.status == 410

    @property
    def forbidden(self) -> bool:
        return self.status == 403

    @property
    def unprocessable(self) -> bool:
        """422 (or 400): the apiserver rejected the object as invalid."""
        return self.status in (400, 422)

    @property
    def too_many_requests(self) -> bool:
        return self.status == 429

    @property
    def retryable(self) -> bool:
        """Trying the same request later may succeed (no answer, throttled, server trouble)."""
        return self.status in RETRYABLE_STATUSES


def _parse(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"message": text}
    return parsed if isinstance(parsed, dict) else {"message": text}
