"""Errors of the compliance app: a stable code and a translated message for the user."""

from __future__ import annotations


class ComplianceError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
