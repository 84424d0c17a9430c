"""How the JSON APIs report a body that fails its schema: fields and error types only.

Never the input itself (it may hold a patient identifier or a passphrase),
nor pydantic's documentation links.
"""

from __future__ import annotations

from pydantic import ValidationError


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    """``[{"field": "a.b", "type": "missing"}, …]`` for a ``bad_request`` answer's details."""
    return [
        {"field": ".".join(str(part) for part in e["loc"]), "type": e["type"]}
        for e in error.errors(include_url=False, include_input=False)
    ]
