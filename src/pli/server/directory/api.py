"""Directory API: search and certificate discovery."""

from __future__ import annotations

from ninja import Router

router = Router(tags=["directory"])
