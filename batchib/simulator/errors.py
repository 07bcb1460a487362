"""Answers in OpenAI's error shape, and the JSON responses that carry them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class ApiError:
    """An answer in OpenAI's error shape: HTTP status plus the ``error`` object."""

    status: int
    message: str
    code: str | None
    param: str | None = None
    error_type: str = "invalid_request_error"
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


def json_response(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_response(error: ApiError) -> web.Response:
    """The HTTP response for ``error``."""
    return json_response(error.body(), status=error.status, headers=error.headers)
