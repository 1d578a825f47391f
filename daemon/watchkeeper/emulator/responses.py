"""Zoho's answer bodies, with the codes and messages recorded in the seeds, so that the watch API,
the OAuth endpoint and injected faults all answer in the same shapes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = "application/json;charset=utf-8"

MESSAGES: dict[str, str] = {
    # recorded (seeds 000/001)
    "AUTHENTICATION_FAILURE": "Authentication failed",
    "OAUTH_SCOPE_MISMATCH": "invalid oauth scope to access this URL",
    "INVALID_URL_PATTERN": "Please check if the URL trying to access is a correct one",
    "INVALID_REQUEST_METHOD": "The http request method type is not a valid one",
    "INVALID_DATA": "invalid data",
    "MANDATORY_NOT_FOUND": "required field not found",
    # documented codes whose exact message was never recorded
    "INVALID_TOKEN": "invalid oauth token",
    "NOT_SUBSCRIBED": "the channel is not subscribed",
    "REQUIRED_PARAM_MISSING": "One of the expected parameter is missing",
    "LIMIT_REACHED": "the number of items in the request exceeds the limit",
    "TOO_MANY_REQUESTS": "You have made too many requests. Please try again later",
    "INTERNAL_ERROR": "Internal Server Error",
    "NO_PERMISSION": "permission denied",
    "BAD_REQUEST": "The request could not be processed",
    # the records APIs (zoho-api.md section 9)
    "INVALID_MODULE": "the module name given seems to be invalid",
    "DISCRETE_PAGINATION_LIMIT_EXCEEDED": "use page_token to fetch records beyond 2000",
    "PAGINATION_LIMIT_EXCEEDED": "the number of records to fetch exceeds the limit",
    "EXPIRED_VALUE": "the page token has expired",
    "TOKEN_BOUND_DATA_MISMATCH": "the page token does not belong to this query",
}

SUBSCRIBED = "Successfully subscribed for actions-watch of the given module"
UPDATED = "Successfully updated the subscribe details"
REMOVED = "Successfully removed the subscribe details"
UNSUBSCRIBED = "Successfully un-subscribed from actions-watch"

TOKEN_RATE_LIMITED: dict[str, str] = {
    "error": "Access Denied",
    "error_description": (
        "You have made too many requests continuously. Please try again after some time."
    ),
}


def error(code: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A top-level or per-item error, keys in the recorded order."""
    return {"code": code, "details": dict(details or {}), "message": MESSAGES[code], "status": "error"}


def success(message: str, details: Mapping[str, Any]) -> dict[str, Any]:
    return {"code": "SUCCESS", "details": dict(details), "message": message, "status": "success"}


def code_for_status(status: int) -> str:
    """The code an injected fault answers with when the test did not name one."""
    if status == 401:
        return "AUTHENTICATION_FAILURE"
    if status == 404:
        return "INVALID_URL_PATTERN"
    if status == 429:
        return "TOO_MANY_REQUESTS"
    if status >= 500:
        return "INTERNAL_ERROR"
    return "BAD_REQUEST"


@dataclass(slots=True)
class Request:
    """One HTTP request as the server read it (header names lower-cased, last query value wins)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds the server waits (real time, outside the lock) before answering."""


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload).encode(), JSON_TYPE, dict(headers or {}))


def no_content() -> Response:
    return Response(204, b"", None)
