"""`ApiError`: the apiserver's Status read once, asked through predicates."""

from __future__ import annotations

import pytest
from sod_operator.kube import ApiError


def _err(status: int, reason: str = "") -> ApiError:
    return ApiError("PUT", "/apis/sod.dev/v1alpha1/x", status, {"reason": reason, "message": "m"})


@pytest.mark.parametrize(
    ("status", "reason", "true"),
    [
        (404, "NotFound", {"not_found"}),
        (409, "Conflict", {"conflict"}),
        (409, "AlreadyExists", {"conflict", "already_exists"}),
        (410, "Expired", {"gone"}),
        (403, "Forbidden", {"forbidden"}),
        (422, "Invalid", {"unprocessable"}),
        (429, "TooManyRequests", {"too_many_requests", "retryable"}),
        (503, "ServiceUnavailable", {"retryable"}),
        (500, "InternalError", {"retryable"}),
        (0, "NoAnswer", {"retryable"}),
    ],
)
def test_predicates(status: int, reason: str, true: set[str]) -> None:
    names = ("not_found", "conflict", "already_exists", "gone", "forbidden", "unprocessable",
             "too_many_requests", "retryable")  # fmt: skip
    err = _err(status, reason)
    assert {n for n in names if getattr(err, n)} == true


def test_the_status_body_is_parsed_from_bytes_and_a_plain_text_body_becomes_the_message() -> None:
    err = ApiError("GET", "/api/v1/nodes/n", 404, b'{"reason": "NotFound", "message": "gone"}')
    assert (err.method, err.path, err.status, err.reason, err.message) == (
        "GET", "/api/v1/nodes/n", 404, "NotFound", "gone",
    )  # fmt: skip
    assert str(err) == "GET /api/v1/nodes/n: HTTP 404 NotFound: gone"
    plain = ApiError("GET", "/x", 502, b"bad gateway")
    assert (plain.reason, plain.message) == ("", "bad gateway")


def test_no_answer_carries_the_cause() -> None:
    err = ApiError.no_answer("GET", "/x", ConnectionRefusedError("refused"))
    assert err.status == 0
    assert err.reason == "NoAnswer"
    assert "refused" in err.message
