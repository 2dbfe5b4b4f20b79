"""The error the fake's rules raise; the HTTP layer turns it into the API's error body."""

from __future__ import annotations

from typing import Any

from harness.fakecloud.catalog import ERROR_MESSAGES, ERROR_STATUS


class ApiError(Exception):
    """An API error response: `{"error": {"code", "message", "details"}}` with its HTTP status."""

    def __init__(self, code: str, message: str | None = None, details: dict[str, Any] | None = None) -> None:
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, code.replace("_", " "))
        self.details = details
        """None when the code has no details, as the real API sends `"details": null` then."""
        self.status = ERROR_STATUS.get(code, 422)
        super().__init__(f"{self.code}: {self.message}")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def not_found(kind: str, resource_id: int) -> ApiError:
    return ApiError("not_found", f"{kind} with ID {resource_id} not found")


def invalid_field(name: str, message: str) -> ApiError:
    """Return an `invalid_input` error whose details name the field, as the real API's do."""
    return ApiError(
        "invalid_input", f"invalid input in field '{name}'", {"fields": [{"name": name, "messages": [message]}]}
    )
