"""Certificate discovery: the currently valid certificates of a mailbox (being written)."""

from __future__ import annotations

from ninja import Router

router = Router(tags=["directory"])
