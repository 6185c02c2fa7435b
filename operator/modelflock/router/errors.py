"""OpenAI-shaped error responses: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from collections.abc import Mapping

from modelflock.router.http_server import Reply, error_body

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


class RequestError(Exception):
    """A request the router refuses; becomes an OpenAI-shaped error response."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    body = error_body(status, message, _TYPES.get(status, "api_error"), code, param)
    return Reply(status, body, {**(headers or {}), "Content-Type": "application/json"})


def from_request_error(err: RequestError, headers: Mapping[str, str] | None = None) -> Reply:
    return error_response(err.status, err.message, err.param, err.code, headers)
