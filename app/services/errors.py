"""Errors the service layer raises; the API turns each into one JSON 4xx naming the field."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Invalid(ServiceError):
    status_code = 422


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class TooLarge(ServiceError):
    status_code = 413


class Unauthorized(ServiceError):
    status_code = 401
