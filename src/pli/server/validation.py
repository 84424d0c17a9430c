"""How the JSON APIs report a body that fails its schema: fields and error types only.

Never the input itself (it may hold a patient identifier or a passphrase),
nor pydantic's documentation links.
"""

from __future__ import annotations

from typing import Any

from ninja import Schema
from pydantic import ConfigDict, ValidationError, model_validator


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    """``[{"field": "a.b", "type": "missing"}, …]`` for a ``bad_request`` answer's details."""
    return [
        {"field": ".".join(str(part) for part in e["loc"]), "type": e["type"]}
        for e in error.errors(include_url=False, include_input=False)
    ]


def whole_number(text: str, *, digits: int) -> int | None:
    """``text`` as a whole number of 1 to ``digits`` ASCII digits; None for anything else.

    ``str.isdigit`` also accepts superscripts and other scripts' digits, which
    ``int`` refuses, and ``int`` refuses more than 4,300 digits: checked with
    ``isdigit`` alone, such input was a server error instead of a refusal.
    """
    if 0 < len(text) <= digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def _refuse_nul(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key)
            _refuse_nul(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_nul(item)


class StrictSchema(Schema):
    """The JSON APIs' bodies: no unknown field, no coercion, and no NUL character anywhere.

    PostgreSQL's text cannot hold NUL (a username or an address with one was a
    server error, not a refusal), and nothing a person types has one.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        _refuse_nul(data)
        return data
